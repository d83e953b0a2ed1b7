"""Multi-turn sessions: a later turn is sent when the user has read the previous answer and
thought (a closed loop), and its prefix is the KV the conversation has computed so far."""

from __future__ import annotations

import numpy as np
import pytest
from simkit import H100_8B

from backends.base import Deployment
from backends.sim import SimBackend, simulate
from tuner.policy import Policy
from tuner.scorecard import score
from workloads.synthetic import Arrival, Lengths, Session, Tenant, generate_mix
from workloads.workload import build_workload


def chat(rate=1.0, turns=4, think=3.0, prompt=1000, output=200, message=100, duration=60.0, seed=1, **kw):
    t = Tenant("chat", Arrival("poisson", rate=rate), prompt=Lengths("fixed", value=prompt),
               output=Lengths("fixed", value=output),
               session=Session(Lengths("fixed", value=turns), Lengths("fixed", value=message), think_s=think), **kw)
    return generate_mix("chat", [t], duration_s=duration, seed=seed)


def _later(w):
    kid = w.parent >= 0
    return kid, w.parent[kid]


def test_a_later_turn_is_sent_when_the_user_has_read_the_answer_and_thought():
    w = chat()
    r = simulate(Policy(), w, H100_8B, check=True).records
    kid, par = _later(w)
    assert np.isfinite(r.finish_s).all()
    # sent think_s after the client saw the previous turn's last token (the records hold what the client sees)
    sent = r.arrival_s.to_numpy()
    np.testing.assert_allclose(sent[kid], r.finish_s.to_numpy()[par] + w.think_s[kid], rtol=0, atol=1e-9)
    assert (sent[~kid] == w.arrival_s[~kid]).all()


def test_a_later_turn_reuses_the_conversation_kv():
    w = chat()
    kid, par = _later(w)
    on = simulate(Policy(), w, H100_8B).records
    off = simulate(Policy(prefix_caching=False), w, H100_8B).records
    # the previous turn's prompt and output, whole 16-token blocks up to its last computed token
    ctx = (w.prompt_len[par].astype(int) + w.output_len[par] - 1) // 16 * 16
    assert (on.cached_tokens.to_numpy()[kid] == ctx).all() and (off.cached_tokens.to_numpy()[kid] == 0).all()
    ttft = {k: np.median((r.first_token_s - r.arrival_s).to_numpy()[kid]) for k, r in (("on", on), ("off", off))}
    assert ttft["on"] < 0.6 * ttft["off"], ttft
    # the scorecard's follow-up metrics: the same numbers
    res = simulate(Policy(), w, H100_8B)
    card = score(res, w)
    assert card.followup_cached_frac == pytest.approx(ctx.sum() / w.prompt_len[kid].sum())
    assert card.followup_ttft_p50_ms == pytest.approx(1e3 * ttft["on"])
    assert np.isnan(score(res).followup_cached_frac)  # (no workload given: no sessions known)


def test_the_loop_is_closed_a_slower_engine_sends_later_turns_later():
    w = chat(turns=5, think=1.0)
    kid, _ = _later(w)
    lag = {}
    for dep in (H100_8B, Deployment("llama-3.1-70b", "a100-80gb", n_gpus=4)):
        r = simulate(Policy(tp=dep.n_gpus), w, dep).records
        lag[dep.model] = float(np.mean(r.arrival_s.to_numpy()[kid] - w.arrival_s[kid]))  # after the session start
    assert lag["llama-3.1-70b"] > 1.5 * lag["llama-3.1-8b"], lag


def test_a_conversation_ends_at_a_turn_that_fails():
    # turn 2's conversation outgrows the model's context: it fails, and turn 3 is never sent
    w = build_workload("ends", [0.0, 0.0, 0.0, 1.0], [1000, 200_000, 200_100, 500], [10, 10, 10, 10],
                       parent=[-1, 0, 1, -1], think_s=[0, 1, 1, 0])
    r = simulate(Policy(), w, H100_8B, check=True).records
    assert np.isfinite(r.finish_s.to_numpy()[[0, 3]]).all()
    assert r.failed.tolist() == [False, True, True, False] and r.first_token_s.isna().tolist() == [False, True, True, False]


def test_conversations_stay_on_their_replica():
    w = chat(rate=3.0, duration=40)
    kid, par = _later(w)
    dep = Deployment("llama-3.1-8b", "h100", n_gpus=2)
    r = SimBackend().run(Policy(replicas=2), w, dep).records
    rep = r.replica.to_numpy()
    assert set(rep) == {0, 1} and (rep[kid] == rep[par]).all()
    assert (r.cached_tokens.to_numpy()[kid] > 0).all()
    with pytest.raises(ValueError, match="fixed replicas"):
        SimBackend().run(Policy(replicas=2, migration=True), w, dep)


def test_a_cpu_tier_brings_back_a_conversation_the_gpu_evicted():
    """Many long conversations and long pauses: the GPU's prefix cache (~31k tokens) cannot keep
    them all; vLLM V1's CPU tier (written through) serves the evicted context back."""
    w = chat(rate=1.0, turns=4, think=20.0, prompt=3000, output=300, message=200, duration=60)
    kid, par = _later(w)
    dep = Deployment("llama-3.1-8b", "a100-40gb")
    res = {gb: simulate(Policy(gpu_memory_utilization=0.5, cpu_offload_gb=gb), w, dep, check=True)
           for gb in (0, 8, 32)}
    hit = {gb: r.records.cached_tokens.to_numpy()[kid].sum() / w.prompt_len[kid].sum() for gb, r in res.items()}
    # ~60 conversations of up to ~4.5k tokens: 8 GiB (65k tokens) holds a few, 32 GiB (262k) all
    assert hit[0] < 0.05 < hit[8] < 0.5 < 0.9 < hit[32], hit
    assert res[32].telemetry.counters["prefill_tokens"] < 0.3 * res[0].telemetry.counters["prefill_tokens"]
