"""``export``: each engine's script launches the best trial that engine runs AS SIMULATED, says
which trial that is and claims that trial's own gain; the exported policy.yaml is marked when an
engine cannot run it. The study's trials are stored with Optuna's own ``create_trial`` (values
chosen so that every rule is exercised: the best trial needs a knob no engine has, SGLang but
not vLLM has shortest-prefill-first, one runnable trial misses the constraints)."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from tuner.evaluate import DEFAULT_ATTR
from tuner.export import export
from tuner.policy import Policy
from tuner.study_spec import parse_study

DIST = {"queue": CategoricalDistribution(["fcfs", "sjf", "priority"]),
        "kv_watermark": FloatDistribution(0.0, 0.2)}
TRIALS = [  # (params, goodput, constraint violation)
    ({"queue": "fcfs", "kv_watermark": 0.01}, 100.0, -1.0),      # 0: the default policy
    ({"queue": "sjf", "kv_watermark": 0.01}, 130.0, -1.0),       # 1: SGLang only (shortest-prefill-first)
    ({"queue": "fcfs", "kv_watermark": 0.05}, 150.0, -1.0),      # 2: best; no engine has a KV watermark
    ({"queue": "priority", "kv_watermark": 0.01}, 120.0, -1.0),  # 3: both engines
    ({"queue": "fcfs", "kv_watermark": 0.01}, 125.0, 0.5),       # 4: both engines, misses the constraint
]


def _study(tiny, trials=TRIALS, **over):
    spec = parse_study({**tiny, "search": {"queue": ["fcfs", "sjf", "priority"],
                                           "kv_watermark": {"low": 0.0, "high": 0.2}}, **over})
    study = optuna.create_study(directions=spec.directions)
    for i, (params, v, c) in enumerate(trials):
        study.add_trial(optuna.trial.create_trial(values=[v], params=params, distributions=DIST,
                                                  constraints={"ttft_p99_ms <= 5000": c},
                                                  user_attrs={DEFAULT_ATTR: True} if i == 0 else {}))
    return spec, study


def _comments(path) -> str:
    return "".join(ln for ln in path.read_text().splitlines(keepends=True) if ln.startswith("#"))


def test_scripts_launch_the_best_trial_each_engine_runs_as_simulated(tiny, tmp_path):
    spec, study = _study(tiny)
    done = export(spec, study, tmp_path)
    assert done.choice.trial.number == 2  # policy.yaml: the best trial, as before
    assert {la.engine: la.trial.number for la in done.launches} == {"vllm": 3, "sglang": 1}
    assert done.summary[1] == ("trial 2 needs knobs no engine can express (vLLM: kv_watermark=0.05; SGLang: "
                               "kv_watermark=0.05): policy.yaml is marked servetune-only")
    pol = _comments(tmp_path / "policy.yaml")
    assert "best trial 2 by goodput -- SERVETUNE-ONLY: no engine runs this policy as simulated" in pol
    assert "(+50.0% vs default policy)" in pol and Policy.from_yaml(tmp_path / "policy.yaml").kv_watermark == 0.05
    vllm, sglang = _comments(tmp_path / "vllm.sh"), _comments(tmp_path / "sglang.sh")
    # each script names the trial it launches and claims that trial's own value and gain
    assert "trial 3, the best trial vLLM runs as simulated" in vllm and "= 120  (+20.0% vs default policy)" in vllm
    assert "trial 1, the best trial SGLang runs as simulated" in sglang and "= 130  (+30.0% vs default policy)" in sglang
    for text in (vllm, sglang):
        assert "+50.0%" not in text and "cannot express (the engine runs its default" not in text
        assert "the exported trial 2 (policy.yaml) needs knobs" in text
    assert "--scheduling-policy priority" in (tmp_path / "vllm.sh").read_text()
    assert "--schedule-policy shortest-prefill-first" in (tmp_path / "sglang.sh").read_text()
    # the policies the scripts run, for `servetune simulate --policy`
    assert Policy.from_yaml(tmp_path / "policy-vllm.yaml") == spec.base_policy().replace(**TRIALS[3][0])
    assert Policy.from_yaml(tmp_path / "policy-sglang.yaml") == spec.base_policy().replace(**TRIALS[1][0])


def test_a_runnable_best_trial_is_launched_by_both_scripts(tiny, tmp_path):
    spec, study = _study(tiny, TRIALS[:2] + TRIALS[3:])  # trial 2 gone: the best is 1 (sjf), then 2 (priority)
    done = export(spec, study, tmp_path)
    assert {la.engine: la.trial.number for la in done.launches} == {"vllm": 2, "sglang": 1}
    assert done.summary[1] == "trial 1 needs knobs vLLM cannot express (vLLM: queue='sjf')"
    assert "SERVETUNE-ONLY" not in _comments(tmp_path / "policy.yaml")
    assert "vLLM cannot express queue='sjf'" in _comments(tmp_path / "policy.yaml")
    assert "runs it as simulated" in _comments(tmp_path / "sglang.sh")
    assert not (tmp_path / "policy-sglang.yaml").exists() and (tmp_path / "policy-vllm.yaml").exists()


def test_trial_n_as_asked_claims_no_gain_for_what_the_engine_runs(tiny, tmp_path):
    spec, study = _study(tiny)
    done = export(spec, study, tmp_path, number=2)
    assert all(la.trial.number == 2 and not la.simulated for la in done.launches)
    vllm = _comments(tmp_path / "vllm.sh")
    assert ("vllm.sh launches trial 2 with vLLM's defaults for kv_watermark (policy-vllm.yaml, NOT simulated); "
            "the best trial vLLM runs as simulated is 3 (--trial 3)") in vllm
    assert "vs default policy" not in vllm and "kv_watermark=0.05: vLLM V1 has no free-block watermark" in vllm
    assert Policy.from_yaml(tmp_path / "policy-vllm.yaml").kv_watermark == Policy().kv_watermark


def test_no_runnable_trial_is_said_plainly(tiny, tmp_path):
    spec, study = _study(tiny, fixed={"max_queue_depth": 64})  # admission control: no engine flag
    done = export(spec, study, tmp_path)
    assert done.summary[2].startswith("NO trial of this study runs on vLLM as simulated: vllm.sh launches trial 2 "
                                      "with vLLM's defaults for kv_watermark, max_queue_depth")
    assert "vs default policy" not in _comments(tmp_path / "vllm.sh")
    runs = Policy.from_yaml(tmp_path / "policy-vllm.yaml")
    assert (runs.max_queue_depth, runs.kv_watermark) == (0, Policy().kv_watermark)


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_disaggregated_export_starts_each_pool_with_its_own_tp(tiny, tmp_path, engine):
    import subprocess

    spec, study = _study(tiny, TRIALS[:1], deployment={**tiny["deployment"], "n_gpus": 4},
                         fixed={"disaggregated": True, "prefill_instances": 1, "decode_instances": 2, "prefill_tp": 2})
    export(spec, study, tmp_path)
    script = tmp_path / f"{engine}.sh"
    tp = "--tensor-parallel-size" if engine == "vllm" else "--tp-size"
    text = script.read_text()
    assert f"{tp} 2" in text and f"{tp} 1" in text and "data-parallel" not in text and "--dp-size" not in text
    assert "(4 GPUs in all)" in text
    bad = subprocess.run(["bash", str(script), "both"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "role must be one of: prefill | decode (got both)" in bad.stderr
