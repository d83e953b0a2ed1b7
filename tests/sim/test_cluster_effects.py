"""Expected effects of the multi-instance primitives (disaggregation, migration, autoscaling,
spot instances), each against its baseline on the same GPUs and workload."""

from __future__ import annotations

import numpy as np
import pytest
from simkit import poisson_workload

from backends.base import Deployment
from backends.sim import simulate
from backends.sim.cluster import simulate_cluster
from tuner.policy import Policy
from tuner.scorecard import score
from workloads.workload import SLOClass, build_workload

DEP4 = Deployment("llama-3.1-8b", "h100", n_gpus=4)
DISAGG = dict(disaggregated=True, prefill_instances=2, decode_instances=2, routing="least_loaded")


def _score(policy: Policy, w, seed: int = 0):
    return score(simulate_cluster(policy, w, DEP4, seed=seed), w)


def test_disaggregation_gains_goodput_on_long_prompts_and_outputs():
    """Tight TPOT: chunked prefills (2048-token iterations) slow co-located decodes; a decode pool
    without prefills keeps TPOT low (DistServe), with P:D = 1:3 on the same 4 GPUs."""
    w = poisson_workload(300, 8, (3000, 6000), (300, 600), slo_classes=(SLOClass("tight", 2000, 11),))
    colo = _score(Policy(replicas=4, routing="least_loaded"), w)
    pd13 = dict(DISAGG, prefill_instances=1, decode_instances=3)
    dis = _score(Policy(**pd13), w)
    assert dis.tpot_p99_ms < colo.tpot_p99_ms
    assert dis.ttft_p50_ms > colo.ttft_p50_ms  # one prefill instance queues prompts a little
    assert dis.goodput_frac > colo.goodput_frac + 0.2  # same 4 GPUs: goodput per GPU up
    # a slow inter-node link puts the KV transfer into every request's TPOT: disaggregation loses
    slow = _score(Policy(**pd13, kv_link="network", network_gbps=2), w)
    assert slow.goodput_frac < colo.goodput_frac


def test_disaggregation_loses_on_short_prompts():
    """Short prompts leave the prefill pool idle while half the GPUs decode everything."""
    w = poisson_workload(300, 60, (50, 200), (300, 600), slo_classes=(SLOClass("tight", 2000, 11),))
    colo = _score(Policy(replicas=4, routing="least_loaded"), w)
    dis = _score(Policy(**DISAGG), w)
    assert dis.goodput_frac < colo.goodput_frac
    assert dis.tpot_p50_ms > colo.tpot_p50_ms


def test_disaggregation_threshold_keeps_short_prompts_colocated():
    w = poisson_workload(100, 10, (50, 4000), (20, 50))
    res = simulate_cluster(Policy(**DISAGG, disagg_min_prompt=2000), w, DEP4)
    n_long = int((w.prompt_len >= 2000).sum())
    assert f"disaggregated: {n_long} of 100 requests" in res.notes[-1]
    rec = res.records
    assert set(rec["replica"]) <= {2, 3}  # every request finishes on the decode pool
    assert np.isfinite(rec["finish_s"]).all() and (rec["output_len"].to_numpy() == w.output_len).all()


def _hot_prefix_workload():
    rng = np.random.default_rng(3)
    n = 1000
    arr = np.cumsum(rng.exponential(1 / 60, n))
    hot = rng.random(n) < 0.7
    blocks = [[1] if h else [100 + i] for i, h in enumerate(hot)]
    return build_workload("hot", arr, rng.integers(600, 1500, n), rng.integers(100, 300, n), prefix_blocks=blocks)


def test_migration_cuts_tail_latency_of_a_prefix_hot_spot():
    w = _hot_prefix_workload()
    hot = _score(Policy(replicas=4, routing="prefix_affinity"), w)
    mig = _score(Policy(replicas=4, routing="prefix_affinity", migration=True), w)
    assert mig.ttft_p99_ms < 0.5 * hot.ttft_p99_ms
    assert mig.e2e_p99_ms < 0.5 * hot.e2e_p99_ms


def _burst_workload():
    rng = np.random.default_rng(5)
    arr, t = [], 0.0
    for dur, rate in [(120, 2), (40, 60), (120, 2)]:
        a = t + np.cumsum(rng.exponential(1 / rate, int(dur * rate * 1.2)))
        arr.append(a[a < t + dur])
        t += dur
    a = np.concatenate(arr)
    return build_workload("burst", a, rng.integers(500, 1500, len(a)), rng.integers(100, 300, len(a)))


def test_autoscaling_absorbs_a_burst_cheaper_than_max_replicas():
    w = _burst_workload()
    one = score(simulate(Policy(), w, Deployment("llama-3.1-8b", "h100")), w)
    four = _score(Policy(replicas=4), w)
    auto_res = simulate_cluster(Policy(autoscale=True, cold_start_s=10, autoscale_queue_per_replica=8), w, DEP4)
    auto = score(auto_res, w)
    assert auto.ttft_p99_ms < 0.6 * one.ttft_p99_ms and auto.ttft_p50_ms < 0.2 * one.ttft_p50_ms
    assert auto.usd_per_1m_tokens < 0.6 * four.usd_per_1m_tokens
    c = auto_res.telemetry.counters
    assert c["instances_started"] >= 2 and c["gpu_seconds"] < 4 * auto_res.telemetry.makespan_s


@pytest.fixture(scope="module")
def spot_runs():
    w = poisson_workload(1500, 6, (1000, 3000), (300, 1000))
    base = dict(replicas=4, cold_start_s=30)
    out = {"w": w}
    for name, kw in {"ondemand": {}, "calm": dict(spot_fraction=0.5, spot_interruptions_per_hour=0),
                     "migrate": dict(spot_fraction=0.5, spot_interruptions_per_hour=60),
                     "restart": dict(spot_fraction=0.5, spot_interruptions_per_hour=60, spot_recovery="restart")
                     }.items():
        out[name] = _score(Policy(**base, **kw), w, seed=0)
    return out


def test_spot_cuts_cost_per_token(spot_runs):
    od, calm = spot_runs["ondemand"], spot_runs["calm"]
    assert calm.usd_per_1m_tokens < 0.8 * od.usd_per_1m_tokens
    assert calm.usd_per_1m_tokens_ondemand == pytest.approx(od.usd_per_1m_tokens_ondemand)


def test_spot_interruptions_raise_tail_latency(spot_runs):
    calm, mig = spot_runs["calm"], spot_runs["migrate"]
    assert mig.interruptions >= 2 and calm.interruptions == 0
    assert mig.e2e_p99_ms > calm.e2e_p99_ms
    assert mig.n_completed == calm.n_completed == 1500  # nothing lost: cut requests are re-routed


def test_spot_migrate_beats_restart_on_e2e(spot_runs):
    mig, rst = spot_runs["migrate"], spot_runs["restart"]
    assert mig.interruptions == rst.interruptions
    assert mig.e2e_mean_ms < rst.e2e_mean_ms
