"""``export`` never launches a policy vLLM rejects at startup: a best trial that breaks a vLLM
startup rule (backends.live.flags._vllm_token_budget) is not runnable, so vllm.sh launches the
best trial that keeps the rules (fixtures as in test_export_runnable)."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution

from tuner.evaluate import DEFAULT_ATTR
from tuner.export import export
from tuner.policy import Policy
from tuner.study_spec import parse_study

DIST = {"batching": CategoricalDistribution(["chunked", "continuous"]),
        "max_num_seqs": IntDistribution(8, 1024),
        "max_num_batched_tokens": IntDistribution(256, 8192)}
TRIALS = [  # (params, goodput)
    ({"batching": "chunked", "max_num_seqs": 256, "max_num_batched_tokens": 2048}, 100.0),    # 0: default
    ({"batching": "continuous", "max_num_seqs": 64, "max_num_batched_tokens": 1834}, 150.0),  # 1: < context
    ({"batching": "chunked", "max_num_seqs": 512, "max_num_batched_tokens": 256}, 140.0),     # 2: < max_num_seqs
    ({"batching": "chunked", "max_num_seqs": 128, "max_num_batched_tokens": 4096}, 120.0),    # 3: within the rules
]


def _study(tiny):
    spec = parse_study({**tiny, "search": {"batching": ["chunked", "continuous"],
                                           "max_num_seqs": {"low": 8, "high": 1024},
                                           "max_num_batched_tokens": {"low": 256, "high": 8192}}})
    study = optuna.create_study(directions=spec.directions)
    for i, (params, v) in enumerate(TRIALS):
        study.add_trial(optuna.trial.create_trial(values=[v], params=params, distributions=DIST,
                                                  constraints={"ttft_p99_ms <= 5000": -1.0},
                                                  user_attrs={DEFAULT_ATTR: True} if i == 0 else {}))
    return spec, study


def test_export_falls_back_from_a_trial_vllm_would_reject(tiny, tmp_path):
    spec, study = _study(tiny)
    done = export(spec, study, tmp_path)
    assert done.choice.trial.number == 1
    la = {x.engine: x for x in done.launches}
    assert la["vllm"].trial.number == 3 and la["vllm"].simulated  # trials 1 and 2 break a vLLM rule
    assert la["sglang"].trial.number == 1 and la["sglang"].simulated  # SGLang has no such rule
    (knob, value, why), = la["vllm"].blocked
    assert (knob, value) == ("max_num_batched_tokens", 1834) and "max_model_len (131072" in why
    script = (tmp_path / "vllm.sh").read_text()
    assert "--max-num-batched-tokens 4096" in script and "--max-num-seqs 128" in script
    assert "--no-enable-chunked-prefill" not in script and "cannot express (the engine runs its default" not in script
    assert Policy.from_yaml(tmp_path / "policy-vllm.yaml") == spec.base_policy().replace(**TRIALS[3][0])
    assert "vLLM cannot express max_num_batched_tokens=1834" in (tmp_path / "policy.yaml").read_text()
