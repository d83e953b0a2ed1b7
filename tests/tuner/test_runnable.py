"""``runnable_on:`` restricts a study's search to what one engine can launch (tuner/runnable.py)."""

from __future__ import annotations

import optuna
import pytest
import yaml

from backends.live.flags import sglang_args, vllm_args
from studies import preset_path
from tuner.space import sample
from tuner.study_spec import load_study, parse_study

BUNDLED = yaml.safe_load(preset_path("latency-critical").read_text())


def _study(**changes):
    return parse_study({**BUNDLED, **changes})


def test_bundled_quickstart_searches_only_what_vllm_runs():
    spec = load_study("latency-critical")
    assert spec.runnable_on == "vllm"
    by = {r.knob: r for r in spec.search}
    assert set(by["queue"].choices) == {"fcfs", "priority"}
    assert set(by["batching"].choices) == {"chunked", "continuous"}
    assert "kv_watermark" not in by and "ttft_admission" not in by
    assert "max_num_batched_tokens" in by and "long_prefill_token_threshold" in by  # vLLM runs these
    assert any(n.startswith("kv_watermark: not searched") for n in spec.notes)
    # sampled policies never carry a knob vLLM cannot express on its own
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    dropped = {"queue", "batching", "kv_watermark", "ttft_admission", "admission_action"}
    for _ in range(40):
        pol = sample(study.ask(), spec.search, spec.base_policy())
        refused = {k for k, _v, _why in vllm_args(pol, spec.deployment).unsupported}
        assert not refused & dropped, refused


def test_sglang_and_the_full_space():
    sg = _study(runnable_on="sglang")
    by = {r.knob: r for r in sg.search}
    assert "edf" not in by["queue"].choices and "sjf" in by["queue"].choices
    assert "long_prefill_token_threshold" not in by  # SGLang has no such cap: only 0 would run
    pol = sg.base_policy()
    assert not sglang_args(pol, sg.deployment).unsupported
    full = _study(runnable_on=None)
    assert full.runnable_on == "" and not full.notes
    assert "decode_maximal" in {r.knob: r for r in full.search}["batching"].choices


def test_bad_runnable_on_is_one_line():
    with pytest.raises(ValueError, match=r"runnable_on: 'trtllm' must be one of vllm, sglang"):
        _study(runnable_on="trtllm")
    with pytest.raises(ValueError, match=r"^fixed\.kv_watermark: runnable_on: vllm cannot run it"):
        _study(fixed={"prefix_caching": True, "kv_watermark": 0.05},
               search={k: v for k, v in BUNDLED["search"].items() if k != "kv_watermark"})
    only = {"queue": ["edf", "sjf"]}
    with pytest.raises(ValueError, match=r"search: needs at least one knob .*queue: vllm cannot run edf, sjf"):
        _study(search=only)
