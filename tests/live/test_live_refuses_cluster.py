"""A live backend serves one server: a policy asking for a cluster it does not deploy (P/D pools,
autoscaling, spot, migration) is refused before anything starts, never scored as that cluster.
No engine needed: the backends get an interpreter path that does not exist, so anything they
tried to start would fail with another error."""

from __future__ import annotations

import optuna
import pytest

from backends.base import Deployment
from backends.live.sglang import SGLangBackend
from backends.live.vllm import VLLMBackend, check_deployable
from tuner.policy import Policy
from workloads.workload import build_workload

GPU = Deployment("org/model", "h100-sxm", n_gpus=4)
CPU = Deployment("tiny-llama", "cpu")
WORKLOAD = build_workload("x", [0.0, 0.1], [8, 8], [4, 4])


def _backend(cls, tmp_path):
    return cls(python=str(tmp_path / "no-such-python"), cache_dir=tmp_path / "cache", log_dir=tmp_path / "logs")


@pytest.mark.parametrize("cls", [VLLMBackend, SGLangBackend])
@pytest.mark.parametrize("knobs,shown", [
    ({"disaggregated": True, "prefill_instances": 1, "decode_instances": 2}, "disaggregated=True"),
    ({"autoscale": True}, "autoscale=True"), ({"spot_fraction": 0.5}, "spot_fraction=0.5"),
    ({"migration": True}, "migration=True")])
def test_live_backend_refuses_cluster_knobs_before_starting_anything(cls, knobs, shown, tmp_path):
    b = _backend(cls, tmp_path)
    with pytest.raises(ValueError) as err:
        b.run(Policy(**knobs), WORKLOAD, GPU)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"policy knob {shown}: the live {cls.name} backend serves one server")
    assert "--backend sim" in msg
    assert b.servers() == [] and not (tmp_path / "logs").exists() and not (tmp_path / "cache").exists()


def test_replicas_are_refused_on_cpu_only(tmp_path):
    with pytest.raises(ValueError, match=r"^policy knob replicas=2: the live vllm backend serves one CPU server"):
        _backend(VLLMBackend, tmp_path).run(Policy(replicas=2), WORKLOAD, CPU)
    check_deployable(Policy(replicas=2, tp=2), GPU, "vllm")  # on GPUs: --data-parallel-size 2, deployed
    check_deployable(Policy(queue="sjf", kv_watermark=0.2), GPU, "vllm")  # scheduler knobs: run with defaults


def test_a_disaggregated_live_trial_fails_with_the_reason(tmp_path):
    """In a study on a live backend the refused trial is a FAIL with the reason: no scorecard,
    so nothing is logged as a P/D deployment that did not run."""
    from tuner.evaluate import Evaluator, Timings
    from tuner.study_spec import parse_study

    spec = parse_study({
        "schema_version": 1, "name": "pd-live", "workload": {"source": "azure-conv", "first_n": 20},
        "deployment": {"model": "org/model", "gpu": "h100-sxm", "n_gpus": 4},
        "objectives": [{"metric": "goodput", "direction": "maximize"}],
        "search": {"max_num_seqs": {"low": 8, "high": 64}}, "pruning": False,
        "fixed": {"disaggregated": True, "prefill_instances": 1, "decode_instances": 3}})
    ev = Evaluator(spec, _backend(VLLMBackend, tmp_path))
    out = ev.evaluate(optuna.create_study(directions=spec.directions).ask(), Timings())
    assert out.state == "FAIL" and out.scorecard is None and out.result is None
    assert out.error.startswith("backend refused: policy knob disaggregated=True: the live vllm backend")
