"""``servetune simulate`` serves the whole deployment (the path of a tune trial, SimBackend.run),
and cuts/paces a workload by the study's rule (first N requests, then the rate)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import cli
from backends.base import Deployment
from backends.sim import SimBackend
from tuner.scorecard import score
from tuner.study_spec import WorkloadSpec, engine_default_policy
from workloads import load_cut

H100_DEFAULT = engine_default_policy("vllm-v1", "h100")  # what simulate starts from: vLLM's defaults on an H100
CASES = [  # (knob flags, the policy they make, n_gpus the deployment gets by default)
    (["--replicas", "2", "--routing", "least_loaded"], H100_DEFAULT.replace(replicas=2, routing="least_loaded"), 2),
    (["--disaggregated", "--prefill-instances", "1", "--decode-instances", "2"],
     H100_DEFAULT.replace(disaggregated=True, prefill_instances=1, decode_instances=2), 3),
]


def _simulate(tmp_path, *args: str) -> dict:
    out = tmp_path / "card.json"
    r = CliRunner().invoke(cli.app, ["simulate", *args, "-o", str(out)])
    assert r.exit_code == 0, r.output
    return json.loads(out.read_text())


@pytest.mark.parametrize("flags, policy, n_gpus", CASES, ids=["replicas", "disaggregated"])
def test_simulate_of_a_cluster_policy_equals_the_backend_run(tmp_path, flags, policy, n_gpus):
    doc = _simulate(tmp_path, "-w", "vtc-lmsys", "--first", "150", "--rate", "20", "-g", "h100", *flags)
    dep = Deployment("llama-3.1-8b", "h100", n_gpus=n_gpus)
    w = load_cut("vtc-lmsys", seed=0, first=150, rate=20)
    res = SimBackend().run(policy, w, dep, seed=0)
    assert doc["deployment"]["n_gpus"] == n_gpus and doc["meta"]["instances"] == res.meta["instances"]
    expected = score(res, w).as_dict()
    for k, v in doc["scorecard"].items():
        assert v == pytest.approx(expected[k], rel=1e-12, nan_ok=True), k
    assert not any("serves one instance" in n or "ONE instance" in n for n in doc["notes"])


def test_extra_gpus_serve_replicas_and_one_instance_is_unchanged(tmp_path):
    two = _simulate(tmp_path, "-w", "vtc-lmsys", "--first", "150", "--rate", "20", "--n-gpus", "2")
    assert two["meta"]["instances"] == "2" and two["deployment"]["n_gpus"] == 2
    one = _simulate(tmp_path, "-w", "vtc-lmsys", "--first", "150", "--rate", "20")
    w = load_cut("vtc-lmsys", seed=0, first=150, rate=20)
    assert one["deployment"]["n_gpus"] == 1 and "instances" not in one["meta"]
    assert one["scorecard"]["goodput_tok_s"] == pytest.approx(
        score(SimBackend().run(H100_DEFAULT, w, Deployment("llama-3.1-8b", "h100")), w).goodput_tok_s, rel=1e-12)


def test_first_then_rate_is_one_rule_for_study_simulate_and_export(tmp_path):
    study = WorkloadSpec(source="azure-conv", first_n=120, rate=5.0).load()
    assert study.n == 120 and study.rate == pytest.approx(5.0)  # the rate of the kept requests
    assert np.array_equal(load_cut("azure-conv", first=120, rate=5.0).arrival_s, study.arrival_s)
    doc = _simulate(tmp_path, "-w", "azure-conv", "--first", "120", "--rate", "5")
    assert doc["workload"]["hash"] == study.content_hash()
    out = tmp_path / "w.parquet"
    r = CliRunner().invoke(cli.app, ["workloads", "export", "azure-conv", "--first", "120", "--rate", "5", "-o", str(out)])
    assert r.exit_code == 0, r.output
    from workloads import load_workload

    assert np.allclose(load_workload(out).arrival_s, study.arrival_s)


def test_trace_of_a_cluster_policy_is_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["simulate", "-w", "vtc-lmsys", "--first", "50", "--replicas", "2", "--trace", str(tmp_path / "t.json")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: --trace") and err.count("\n") == 1
