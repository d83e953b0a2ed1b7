"""Policies vLLM rejects at startup (``SchedulerConfig.verify_max_model_len``) are refused by the
flag mapping like an inexpressible knob, naming the rule; ``servetune engine flags`` prints it."""

from __future__ import annotations

import shlex

import pytest

from backends.base import Deployment
from backends.live.flags import sglang_args, vllm_args
from tuner.policy import Policy

LLAMA = Deployment("llama-3.1-8b", "h100-sxm")  # context 131072 (no max_model_len given)


def _value(args, flag):
    return args[args.index(flag) + 1]


def test_continuous_batching_below_the_model_context_is_refused():
    m = vllm_args(Policy(batching="continuous", max_num_batched_tokens=1834), LLAMA)
    ((knob, value, why),) = m.unsupported
    assert (knob, value) == ("max_num_batched_tokens", 1834)
    assert "max_num_batched_tokens < max_model_len (131072" in why and "chunked prefill is off" in why
    assert "\n" not in why
    assert _value(m.args, "--max-num-batched-tokens") == "131072" and m.effective.max_num_batched_tokens == 131072
    # an explicit max_model_len is the limit the rule uses
    m = vllm_args(Policy(batching="continuous", max_num_batched_tokens=1834), Deployment("llama-3.1-8b", "h100-sxm",
                                                                                          max_model_len=4096))
    assert "max_model_len (4096, max_model_len)" in m.unsupported[0][2]


def test_budget_below_max_num_seqs_is_refused():
    m = vllm_args(Policy(max_num_seqs=512, max_num_batched_tokens=256), LLAMA)
    assert m.unsupported == (("max_num_batched_tokens", 256,
                              "vLLM rejects max_num_batched_tokens < max_num_seqs (512); raised to 512"),)
    assert _value(m.args, "--max-num-batched-tokens") == "512" and m.effective.max_num_batched_tokens == 512


def test_both_rules_are_named_in_one_line():
    m = vllm_args(Policy(batching="continuous", max_num_seqs=512, max_num_batched_tokens=256), LLAMA)
    ((_, _, why),) = m.unsupported
    assert "max_model_len" in why and "max_num_seqs (512)" in why and why.endswith("raised to 131072")


@pytest.mark.parametrize("policy,dep", [
    (Policy(max_num_seqs=256, max_num_batched_tokens=256), LLAMA),           # == max_num_seqs is fine
    (Policy(batching="chunked", max_num_seqs=64, max_num_batched_tokens=512), LLAMA),  # chunked: no context rule
    (Policy(batching="continuous", max_num_batched_tokens=4096), Deployment("llama-3.1-8b", "h100-sxm",
                                                                            max_model_len=4096)),
])
def test_a_policy_within_the_rules_maps_cleanly(policy, dep):
    m = vllm_args(policy, dep)
    assert m.unsupported == () and m.effective == policy
    assert _value(m.args, "--max-num-batched-tokens") == str(policy.max_num_batched_tokens)


def test_unknown_model_context_is_noted_not_refused():
    m = vllm_args(Policy(batching="continuous", max_num_batched_tokens=1024), Deployment("org/unknown", "h100-sxm"))
    assert m.unsupported == ()
    assert any("cannot check for model 'org/unknown'" in n for n in m.notes)


def test_sglang_has_no_such_startup_rule():
    m = sglang_args(Policy(batching="continuous", max_num_seqs=512, max_num_batched_tokens=256), LLAMA)
    assert m.unsupported == () and _value(m.args, "--max-prefill-tokens") == "256"


def test_engine_flags_shows_the_rule(run_cli, tmp_path):
    pol = tmp_path / "p.yaml"
    pol.write_text("policy:\n  max_num_seqs: 512\n  max_num_batched_tokens: 256\n")
    code, out, err = run_cli("flags", pol)
    assert code == 0, err
    cmd = shlex.split(out.splitlines()[0])
    assert cmd[cmd.index("--max-num-batched-tokens") + 1] == "512"
    assert ("# not expressible: max_num_batched_tokens=256: vLLM rejects max_num_batched_tokens < max_num_seqs "
            "(512); raised to 512") in out


def test_a_workload_of_conversations_is_refused_by_sglang_before_a_server_starts(monkeypatch):
    """SGLang's replay of multi-turn sessions is not checked (the next prompt is built from the
    generated token ids vLLM returns): refused, nothing launched."""
    import sys

    from backends.live.sglang import SGLangBackend
    from workloads.workload import build_workload

    monkeypatch.setenv("SERVETUNE_SGLANG_PYTHON", sys.executable)
    w = build_workload("chat", [0.0, 0.0], [100, 300], [50, 50], parent=[-1, 0], think_s=[0.0, 5.0])
    with pytest.raises(ValueError, match="multi-turn sessions: the live replay sends conversations to vLLM only"):
        SGLangBackend().run(Policy(), w, LLAMA)
