from __future__ import annotations

import numpy as np
import pytest

from tuner.calibration.trainval import (
    PROMPT_SCALE,
    TRAINVAL_CSV,
    WORKLOADS,
    load_runs,
    policy_for,
    regenerate,
    run_metrics,
    tail_metrics,
)


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_regeneration_reproduces_counts_and_lengths(name):
    d = WORKLOADS[name]
    w = regenerate(name, seed=3)
    assert w.n == sum(int(round(r * t)) for r, t in d.stages)
    assert np.all(np.diff(w.arrival_s) >= 0)
    t0 = 0.0
    for rate, dur in d.stages:  # exact count per stage, inside the stage
        n_stage = ((w.arrival_s >= t0) & (w.arrival_s < t0 + dur)).sum()
        assert n_stage == int(round(rate * dur))
        t0 += dur
    assert w.prompt_len.mean() == pytest.approx((d.system_len + d.question_len) * PROMPT_SCALE, abs=1.0)
    assert w.output_len.mean() == d.max_output
    # the group's system prompt blocks are shared: one distinct prefix per group
    first = {tuple(w.prefix_ids[w.prefix_offsets[i]:w.prefix_offsets[i + 1]]) for i in range(w.n)}
    assert len(first) == d.groups


def test_prompt_sharing_names_one_prefix_per_group_and_user():
    d = WORKLOADS["codegen"]
    w = regenerate("codegen", share="prompt")
    ids = {tuple(w.prefix_ids[w.prefix_offsets[i]:w.prefix_offsets[i + 1]]) for i in range(200)}
    assert len(ids) == d.groups * d.users
    assert w.prefix_block_tokens == 16


def test_duration_scale_keeps_the_rate():
    w = regenerate("general-lite", duration_scale=0.1)
    assert w.n == round(2.5 * 60) + round(6 * 60)


@pytest.mark.skipif(not TRAINVAL_CSV.is_file(), reason="shared trainval runs not present")
def test_runs_load_with_settings():
    runs = load_runs()
    assert len(runs) == 13
    assert {r.tp for r in runs} == {1, 2, 4}
    scout = [r for r in runs if r.model.startswith("llama-4-scout")]
    assert scout and all(r.weight_dtype == "fp8" for r in scout)
    # --kv-offloading-size=8.0 (GiB, whole instance) becomes the policy's CPU KV tier
    off = [r for r in runs if r.cpu_offload_gb]
    assert {r.run_id for r in off} == {"48", "66", "67"} and {r.cpu_offload_gb for r in off} == {8.0}
    assert policy_for(off[0]).cpu_offload_gb == 8.0 and policy_for(runs[0]).cpu_offload_gb == 0.0
    # TPOT is recomputed from the generated tokens (ignore_eos)
    r = runs[0]
    assert r.tpot_ms == pytest.approx((r.e2e_ms - r.ttft_ms) / (WORKLOADS[r.workload].max_output - 1))


def test_unknown_workload_is_a_user_error():
    with pytest.raises(ValueError, match="workload 'chat'"):
        regenerate("chat")


def test_run_metrics_from_records():
    import pandas as pd

    rec = pd.DataFrame({"arrival_s": [0.0, 1.0], "first_token_s": [0.1, 1.3], "finish_s": [1.1, 2.3],
                        "rejected": [False, False], "failed": [False, False]})
    ttft, e2e, tpot = run_metrics(rec, 11)
    assert (ttft, e2e, tpot) == pytest.approx((200.0, 1200.0, 100.0))
    n = 101  # TTFT 0..100 ms, E2E 1000..1100 ms: p90 = 90 / 1090, p99 = 99 / 1099
    many = pd.DataFrame({"arrival_s": np.zeros(n), "first_token_s": np.arange(n) / 1e3,
                         "finish_s": 1.0 + np.arange(n) / 1e3, "rejected": [False] * n, "failed": [False] * n})
    assert tail_metrics(many) == pytest.approx((90.0, 99.0, 1090.0, 1099.0))


@pytest.mark.skipif(not TRAINVAL_CSV.is_file(), reason="shared trainval runs not present")
def test_runs_carry_their_measured_tails():
    """Each run's TTFT / E2E p90 and p99 come from its row (ms), ordered p90 <= p99, means below."""
    for r in load_runs():
        t90, t99, e90, e99 = r.tails_ms
        assert r.ttft_ms < t90 <= t99 and r.e2e_ms < e99 and e90 <= e99
    assert load_runs()[0].tails_ms == pytest.approx((74.0931, 106.922, 5836.32, 6001.26))


def _row(**kw) -> dict:
    row = {"exp_id": 90, "model_hf": "codellama/CodeLlama-34b-Instruct-hf", "tp": 2, "dp": 1.0, "precision": "FP16",
           "gpu_type": "A100", "gpu_sku": "NVIDIA-A100-SXM4-80GB", "max_model_len": 4096, "max_num_seqs": 128,
           "max_num_batched_tokens": 2048, "gpu_memory_utilization": 0.9, "cpu_offload": False,
           "kv_offload_args": None, "workload": "general", "ttft_mean_ms": 50.0, "e2e_mean_ms": 4000.0,
           "tpot_mean_study_ms": 16.0}
    row.update(kw)
    return row


def test_runs_of_other_models_gpus_and_data_parallel_load(tmp_path):
    """A row of the study's other runs (CodeLlama-34B on A100 SXM4, two data-parallel replicas)
    loads into the catalog's names and simulates as replicas behind a least-loaded router."""
    import pandas as pd

    from tuner.calibration.engine_fit import EngineCalibration, simulate_run
    from tuner.calibration.trainval import deployment_for

    p = tmp_path / "runs.csv"
    pd.DataFrame([_row(), _row(exp_id=91, dp=2.0)]).to_csv(p, index=False)
    one, two = load_runs(p)
    assert (one.model, one.gpu, one.dp, two.dp) == ("codellama-34b", "a100-80gb", 1, 2)
    pol = policy_for(two)
    assert (pol.replicas, pol.routing, deployment_for(two).n_gpus) == (2, "least_loaded", 4)
    assert policy_for(one).replicas == 0 and deployment_for(one).n_gpus == 2
    cal = EngineCalibration(lag_steps=1.0)
    a, b = simulate_run(one, cal, duration_scale=0.05), simulate_run(two, cal, duration_scale=0.05)
    # "general" at 8-20 req/s: two replicas halve each one's batch, so steps and queues shrink
    assert b.tpot_ms < 0.9 * a.tpot_ms and b.ttft_ms < a.ttft_ms


def test_stage_metrics_split_requests_by_arrival_stage():
    import pandas as pd

    from tuner.calibration.trainval import WorkloadDef, stage_metrics

    wdef = WorkloadDef(((1.0, 10.0), (2.0, 10.0)), 1, 1, 10, 10, 5)
    rec = pd.DataFrame({"arrival_s": [1.0, 9.0, 11.0, 19.0], "first_token_s": [1.1, 9.1, 11.3, 19.3],
                        "finish_s": [2.0, 10.0, 12.0, 21.0], "rejected": [False] * 4, "failed": [False] * 4})
    (t0, e0), (t1, e1) = stage_metrics(rec, wdef)
    assert (t0, e0, t1, e1) == pytest.approx((100.0, 1000.0, 300.0, 1500.0))
    # stages shortened by duration_scale: the bounds shrink with them (stage 1 = [5, 10) s)
    (t0, _), (t1, e1) = stage_metrics(rec, wdef, duration_scale=0.5)
    assert (t0, t1, e1) == pytest.approx((100.0, 100.0, 1000.0))


@pytest.mark.skipif(not TRAINVAL_CSV.is_file(), reason="shared trainval runs not present")
def test_runs_carry_their_measured_stage_means():
    runs = load_runs()
    two = [r for r in runs if len(r.workload_def.stages) == 2]
    assert len(two) == 8 and all(len(r.stage_ms) == 2 for r in two)
    r = next(r for r in runs if r.run_id == "17")
    assert [x for st in r.stage_ms for x in st] == pytest.approx([57.8, 4460.33, 64.7982, 5607.49], rel=1e-3)


def test_fit_residuals_by_stage_weigh_each_run_the_same():
    import dataclasses
    import math

    from tuner.calibration.engine_fit import RunError, _log_residuals
    from tuner.calibration.trainval import TrainvalRun, WorkloadDef

    wdef = WorkloadDef(((1.0, 10.0), (2.0, 10.0)), 1, 1, 10, 10, 11)
    run = TrainvalRun("x", "llama-2-7b", 1, "bf16", 2048, 0.9, 128, 4096, False, "custom", 100.0, 1100.0, 100.0,
                      wdef=wdef, stage_ms=((100.0, 1100.0), (100.0, 2100.0)))
    pred = RunError(run, 110.0, 1210.0, 110.0, stage_ms=((110.0, 1210.0), (100.0, 2100.0)))
    overall = _log_residuals(run, pred, 0.5, by_stage=False)
    assert overall == pytest.approx([0.5 * math.log(1.1), math.log(1.1), math.log(1.1)])
    staged = _log_residuals(run, pred, 0.5, by_stage=True)
    w = 1 / math.sqrt(2)
    assert staged == pytest.approx([w * 0.5 * math.log(1.1), w * math.log(1.1), w * math.log(1.1), 0.0, 0.0, 0.0])
    # a run without stage means (or one stage) falls back to its overall means
    assert _log_residuals(dataclasses.replace(run, stage_ms=()), pred, 0.5, by_stage=True) == overall
