"""Search space: ranges from Policy types, conditional knobs, the default-policy params."""

from __future__ import annotations

import optuna
import pytest

from tuner.objectives import Objective, bisect_max_rate, parse_constraint
from tuner.policy import Policy
from tuner.space import default_params, parse_range, sample


def _space(raw: dict):
    return tuple(parse_range(k, v, f"search.{k}") for k, v in raw.items())


def test_conditional_knobs_are_sampled_only_when_they_apply():
    space = _space({"speculation": ["off", "ngram"], "spec_k": {"low": 1, "high": 8},
                    "preemption": ["token", "request"], "preemption_mode": ["recompute", "swap"],
                    "disaggregated": "bool", "prefill_instances": {"low": 1, "high": 4}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = {"spec_k": 0, "preemption_mode": 0, "prefill_instances": 0}
    for _ in range(40):
        t = study.ask()
        p = sample(t, space, Policy())
        assert ("spec_k" in t.params) == (p.speculation != "off")
        assert ("preemption_mode" in t.params) == (p.preemption == "token")
        assert ("prefill_instances" in t.params) == p.disaggregated
        for k in seen:
            seen[k] += k in t.params
        study.tell(t, 0.0)
    assert all(0 < v < 40 for v in seen.values()), seen


def test_instance_counts_are_sampled_within_the_deployments_gpus():
    """With n_gpus, every sampled disaggregated / replicated layout fits the GPUs (without it, a
    third of these layouts would need more), and the full range is still reached where it fits."""
    from backends.base import Deployment
    from backends.sim.cluster import check_gpus

    space = _space({"tp": [1, 2], "disaggregated": "bool", "prefill_instances": {"low": 1, "high": 2},
                    "decode_instances": {"low": 1, "high": 3}, "replicas": {"low": 1, "high": 8}})
    dep = Deployment("llama-3.1-8b", "h100-sxm", n_gpus=4)
    counts = {"fit": 0, "unfit_without": 0}
    seen_d3 = False
    for n_gpus, key in ((4, "fit"), (0, "unfit_without")):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
        for _ in range(60):
            t = study.ask()
            p = sample(t, space, Policy(), n_gpus=n_gpus)
            try:
                check_gpus(p, dep)
                counts["fit"] += key == "fit"
            except ValueError:
                counts["unfit_without"] += key == "unfit_without"
                assert key == "unfit_without", p
            seen_d3 |= key == "fit" and p.disaggregated and p.decode_instances == 3
            study.tell(t, 0.0)
    assert counts["fit"] == 60 and counts["unfit_without"] >= 15, counts
    assert seen_d3  # tp=1, one prefill instance: three decode instances still fit and are sampled


def test_types_log_and_step():
    (r,) = _space({"max_num_batched_tokens": {"low": 256, "high": 8192, "log": True}})
    assert r.kind == "int" and r.log
    (r,) = _space({"kv_watermark": {"low": 0.0, "high": 0.2, "step": 0.05}})
    assert r.kind == "float" and r.step == 0.05
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        t = study.ask()
        v = sample(t, (r,), Policy()).kv_watermark
        assert round(v / 0.05, 6) == round(v / 0.05)
        study.tell(t, 0.0)


def test_default_params_reproduce_the_default_policy():
    space = _space({"queue": ["sjf", "edf"], "max_num_seqs": {"low": 8, "high": 64},
                    "spec_k": {"low": 1, "high": 8}, "speculation": ["off", "ngram"]})
    d = default_params(space, Policy())
    # fcfs is not a choice (left to the base), spec_k does not apply with speculation off,
    # max_num_seqs=256 lies outside the range but is still enqueued
    assert d == {"max_num_seqs": 256, "speculation": "off"}
    study = optuna.create_study()
    study.enqueue_trial(d)
    t = study.ask()
    assert sample(t, space, Policy(), only=d) == Policy()


def test_constraint_violation_sign_and_scale():
    from types import SimpleNamespace

    c = parse_constraint("ttft_p99_ms <= 500", "c")
    assert c.violation(SimpleNamespace(ttft_p99_ms=250.0)) == pytest.approx(-0.5)
    assert c.violation(SimpleNamespace(ttft_p99_ms=1000.0)) == pytest.approx(1.0)
    assert c.violation(SimpleNamespace(ttft_p99_ms=float("nan"))) > 0
    g = parse_constraint({"metric": "slo_attainment", "op": ">=", "value": 0.9}, "c")
    assert g.violation(SimpleNamespace(slo_attainment=0.95)) < 0 < g.violation(SimpleNamespace(slo_attainment=0.5))


def test_max_rate_bisection_finds_the_knee():
    from types import SimpleNamespace

    calls = []

    def run_at(rate):
        calls.append(rate)
        return SimpleNamespace(slo_attainment=1.0 if rate <= 10.0 else 0.5, ttft_p99_ms=1.0)

    best, sc, _, _ = bisect_max_rate(run_at, Objective("max_rate", "max_rate", "maximize", 1.0, 64.0, 8, 0.9), ())
    assert 8.0 < best <= 10.0 and sc.slo_attainment == 1.0 and len(calls) == 8


@pytest.mark.parametrize("knob,raw", [
    ("spec_acceptance", {"low": 0.1, "high": 0.9}), ("spec_acceptance_by_tenant", [{"a": 0.5}]),
    ("kv_link", ["nvlink", "network"]), ("network_gbps", {"low": 10.0, "high": 400.0}),
    ("cold_start_s", {"low": 1.0, "high": 120.0}), ("spot_interruptions_per_hour", [0.1, 1.0]),
])
def test_environment_knobs_are_not_searchable(knob, raw):
    """Knobs that describe the workload or the environment are refused in search: with one line
    saying why and where they go; they can still be fixed."""
    with pytest.raises(ValueError) as err:
        parse_range(knob, raw, f"search.{knob}")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"search.{knob}: {knob} describes the workload/environment (")
    assert msg.endswith("not a policy: set it in fixed:")


def test_not_searchable_in_a_study_file_and_fixable(tiny):
    from tuner.study_spec import parse_study

    bad = {**tiny, "search": {**tiny["search"], "spec_acceptance": {"low": 0.2, "high": 0.9}}}
    with pytest.raises(ValueError, match=r"^search\.spec_acceptance: spec_acceptance describes the workload/env"):
        parse_study(bad)
    ok = parse_study({**tiny, "fixed": {"spec_acceptance": 0.6, "network_gbps": 25.0}})
    assert ok.base_policy().spec_acceptance == 0.6 and ok.base_policy().network_gbps == 25.0
    with pytest.raises(ValueError, match="tenant_weights is a structured value .*: set it in fixed:"):
        parse_range("tenant_weights", [{"a": 2}], "search.tenant_weights")
    # the scheduler's VTC weights stay a policy knob (the fairness yardstick is fixed: scorecard)
    assert parse_range("vtc_output_weight", {"low": 1.0, "high": 4.0}, "s").kind == "float"


def test_pool_tps_are_sampled_only_when_disaggregated_and_before_the_counts_they_bound():
    """prefill_tp / decode_tp apply only to disaggregated pools; they are sampled before the
    instance counts, so every sampled P/D layout fits the GPUs even with the TPs searched."""
    from backends.base import Deployment
    from backends.sim.cluster import check_gpus

    space = _space({"disaggregated": "bool", "prefill_tp": [1, 2, 4], "decode_tp": [1, 2, 4],
                    "prefill_instances": {"low": 1, "high": 4}, "decode_instances": {"low": 1, "high": 4}})
    dep = Deployment("llama-3.1-8b", "h100-sxm", n_gpus=8)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    tps_seen = set()
    for _ in range(80):
        t = study.ask()
        p = sample(t, space, Policy(), n_gpus=8)
        assert ("prefill_tp" in t.params) == ("decode_tp" in t.params) == p.disaggregated
        if p.disaggregated:
            check_gpus(p, dep)  # raises when the layout needs more than 8 GPUs
            tps_seen.add(p.pool_tps)
        else:
            assert (p.prefill_tp, p.decode_tp) == (0, 0)
        study.tell(t, 0.0)
    assert (4, 4) in tps_seen and len(tps_seen) >= 6


def test_a_default_outside_its_range_is_said_once_and_optuna_does_not_warn(write_study, project):
    import subprocess
    import sys

    p = write_study(name="outside", trials=2, search={"max_num_seqs": {"low": 8, "high": 64, "log": True}})
    r = subprocess.run([sys.executable, "-c", "import cli; cli.main()", "tune", str(p), "--no-progress"],
                       cwd=project, capture_output=True, text=True, timeout=300)  # stderr as a user sees it
    assert r.returncode == 0, r.stderr
    notes = [ln for ln in r.stdout.splitlines() if ln.startswith("note: the default")]
    assert notes == ["note: the default max_num_seqs=1024 lies outside the searched range [8, 64]; "
                     "the default trial runs it as is"], r.stdout
    assert "out of range" not in r.stderr, r.stderr
