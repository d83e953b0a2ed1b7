"""Recompute preemption with prefix caching: a victim's computed blocks stay in the prefix cache
(vLLM's automatic prefix caching hashes every full block, prompt and generated, and keeps it when
the request is freed), so its recompute hits whatever LRU eviction has not taken since."""

from __future__ import annotations

import numpy as np
from simkit import long_workload, poisson_workload, run

from backends.base import Deployment
from backends.sim.engine import Simulation
from backends.sim.scheduler import VICTIM_ID_SPAN, VICTIM_IDS
from tuner.policy import Policy
from workloads.workload import build_workload

A100_40_8B = Deployment("llama-3.1-8b", "a100-40gb")   # 0.5 × 40 GiB: ~31k KV tokens
MEM = 0.5



def _same(a, b) -> bool:
    cols = ("first_token_s", "finish_s", "preemptions", "cached_tokens")
    return all(np.array_equal(a.records[c].to_numpy(), b.records[c].to_numpy(), equal_nan=True) for c in cols)


def _peak_running(w, dep, *, until: float, every: float) -> tuple[int, Simulation]:
    """Run ``w`` (invariants checked), noting the most requests running at once every ``every`` s
    up to ``until`` s; (that peak, the finished simulation)."""
    sim = Simulation(Policy(gpu_memory_utilization=MEM), w, dep, check=True)
    top = 0
    for t in np.arange(every, until, every):
        sim.advance(float(t))
        top = max(top, sim.n_running())
    sim.run_rest()
    return top, sim


def test_recompute_hits_the_victims_own_blocks():
    w = long_workload()   # no prefix ids: nothing is shared between requests
    res_off, off = run(w, A100_40_8B, gpu_memory_utilization=MEM, prefix_caching=False)
    res_on, on = run(w, A100_40_8B, gpu_memory_utilization=MEM, prefix_caching=True)
    assert on.n_completed == off.n_completed == w.n
    c_off, c_on = res_off.telemetry.counters, res_on.telemetry.counters
    assert c_on["preemptions"] > 50
    # prefill tokens beyond the prompts are recomputation: with the cache, mostly hits instead
    again_off = c_off["prefill_tokens"] - w.prompt_len.sum()
    again_on = c_on["prefill_tokens"] - w.prompt_len.sum()
    assert again_off > 100_000 and 0 < again_on < 0.1 * again_off
    assert on.ttft_p50_ms < 0.5 * off.ttft_p50_ms and on.throughput_tok_s > 1.5 * off.throughput_tok_s
    # the hit rate is that of new requests: re-admissions of victims do not inflate it
    assert c_on["prefix_hit_tokens"] == 0 and c_on["prefix_query_tokens"] == w.prompt_len.sum()


def test_recompute_without_the_cache_thrashes():
    # vLLM V1 admits no waiting request in a step that preempted, then takes the victim back first.
    # Without prefix caching its recompute allocates chunk by chunk while the decodes keep growing,
    # so it is preempted again and again and recomputes from scratch each time; with the cache each
    # attempt keeps what it computed.
    w = long_workload()
    res_off, _ = run(w, A100_40_8B, gpu_memory_utilization=MEM, prefix_caching=False)
    res_on, _ = run(w, A100_40_8B, gpu_memory_utilization=MEM, prefix_caching=True)
    c_off, c_on = res_off.telemetry.counters, res_on.telemetry.counters
    assert c_off["preemptions"] > 3 * w.n and 0 < c_on["preemptions"] < w.n
    assert c_off["prefill_tokens"] > 4 * w.prompt_len.sum() > 3 * c_on["prefill_tokens"]


def test_victim_entries_are_its_own_and_evicted_tail_first():
    w = long_workload()
    sim = Simulation(Policy(gpu_memory_utilization=MEM), w, A100_40_8B, check=True).run()
    assert sim.c_preempt > 0
    own = [i for i in sim.mem._lru if i >= VICTIM_IDS]
    assert own   # finished victims leave their entries evictable
    # a request's entries are released last block first (BlockManager.release), so the oldest of
    # its entries in the LRU order is its highest block index: its tail is evicted first
    by_req: dict[int, list[int]] = {}
    for i in own:
        by_req.setdefault((i - VICTIM_IDS) // VICTIM_ID_SPAN, []).append(i)
    assert any(len(v) > 1 for v in by_req.values())
    assert all(v == sorted(v, reverse=True) for v in by_req.values())


def test_without_preemption_nothing_changes():
    # no prefix ids and room for everything: prefix caching has nothing to keep
    w = poisson_workload(200, 10.0, (200, 800), (50, 200), seed=5)
    res_on, on = run(w, A100_40_8B, prefix_caching=True)
    res_off, off = run(w, A100_40_8B, prefix_caching=False)
    assert res_on.telemetry.counters["preemptions"] == 0
    assert _same(res_on, res_off)


def test_sglang_victims_keep_only_their_prefill(monkeypatch):
    """SGLang's radix tree holds a request's prompt (inserted after its prefill); retraction frees
    the tokens decoded since, so a retracted request recomputes them. vLLM keeps them too. With the
    same engine otherwise, keeping only the prefill recomputes more."""
    from dataclasses import replace

    from backends.sim import engines

    w = poisson_workload(80, 20.0, (100, 300), (1500, 2500), seed=3)  # decodes outgrow the KV pool
    dep = Deployment("llama-3.1-8b", "a100-40gb", engine="sglang")
    sim = Simulation(Policy(gpu_memory_utilization=MEM), w, dep, check=True).run()
    assert sim.c_preempt > 20
    per_req: dict[int, int] = {}
    for i in sim.mem._lru:
        if i >= VICTIM_IDS:
            rid = (i - VICTIM_IDS) // VICTIM_ID_SPAN
            per_req[rid] = per_req.get(rid, 0) + 1
    # a first-time victim's own entries cover its prompt (whole blocks), never its output
    assert per_req and all(n * sim.pbt <= w.prompt_len[rid] for rid, n in per_req.items()
                           if sim.preempts[rid] == 1)
    res_sg, _ = run(w, dep, gpu_memory_utilization=MEM)
    monkeypatch.setitem(engines.ENGINES, "sglang", replace(engines.ENGINES["sglang"], victim_keeps_output=True))
    res_all, _ = run(w, dep, gpu_memory_utilization=MEM)
    assert res_sg.telemetry.counters["prefill_tokens"] > res_all.telemetry.counters["prefill_tokens"]


def test_engines_without_swap_recompute_whatever_their_tier():
    """vLLM V1 and SGLang have no swap: with a CPU tier their victims still recompute (and reload
    from the tier what it holds); vLLM V0 pages them out."""
    w = long_workload()
    for engine, paged in (("vllm-v1", False), ("sglang", False), ("vllm-v0", True)):
        res, _ = run(w, Deployment("llama-3.1-8b", "a100-40gb", engine=engine), gpu_memory_utilization=MEM,
                     cpu_offload_gb=32)
        c = res.telemetry.counters
        assert c["preemptions"] > 0 and (c["paged_out_preemptions"] > 0) == paged, engine


def test_sglang_admission_sets_kv_aside_for_future_tokens(monkeypatch):
    """SGLang admits a request only if the free KV covers its prefill and max_tokens after setting
    aside new_token_ratio × what every running request may still generate; the ratio decays every
    decode step and starts over when the engine idles. On a burst of long outputs it runs fewer
    requests at once than vLLM's rule (the blocks its prefill needs are free now), and retracts less."""
    from dataclasses import replace

    from backends.sim import engines

    dep = Deployment("llama-3.1-8b", "a100-40gb", engine="sglang")
    # two bursts 100 s apart: the engine idles between them
    arr = np.r_[np.zeros(30), np.full(30, 100.0)]
    two = build_workload("bursts", arr, np.full(60, 200), np.full(60, 300))
    sim = Simulation(Policy(gpu_memory_utilization=MEM), two, dep, check=True)
    d = sim.dres
    assert d is not None and sim.ratio == d.init
    sim.advance(1.0)
    assert sim.steps > 0 and d.floor <= sim.ratio < d.init
    sim.advance(50.0)
    assert sim.n_done == 30 and sim.ratio == d.init   # idle: starts over
    sim.run_rest()
    assert sim.n_done == 60

    w = poisson_workload(80, 20.0, (100, 300), (1500, 2500), seed=3)
    peak = {}
    for reserve in (True, False):
        if not reserve:
            monkeypatch.setitem(engines.ENGINES, "sglang", replace(engines.ENGINES["sglang"], decode_reserve=None))
        top, s = _peak_running(w, dep, until=10.0, every=0.5)
        peak[reserve] = (top, s.c_preempt)
    assert peak[True][0] < 0.7 * peak[False][0] and peak[True][1] < 0.5 * peak[False][1], peak


def test_sglang_counts_this_rounds_admissions_in_full():
    """Within one scheduling round SGLang's ``PrefillAdder`` charges each request it admits its
    whole (clipped) ``max_tokens``; only requests already running count at ``new_token_ratio``. A
    burst of 40 requests (200-token prompts, max_tokens 4,000) into an idle engine: the first round
    admits as many as fit prompt + max_tokens in full, the next rounds more."""
    n = 40
    w = build_workload("burst", np.zeros(n), np.full(n, 200), np.full(n, 300), max_output=np.full(n, 4000))
    sim = Simulation(Policy(gpu_memory_utilization=MEM), w, Deployment("llama-3.1-8b", "a100-40gb", engine="sglang"),
                     check=True)
    kv_tokens = sim.mem.total * sim.bs
    sim.advance(1e-6)
    first = sim.n_running()
    assert sim.steps == 1 and first == kv_tokens // 4200  # at the ratio (0.7) it would be 9
    sim.advance(0.2)
    assert sim.n_running() > first
    sim.run_rest()
    assert sim.n_done == n


def test_sglang_reserve_counts_at_most_the_clip_per_request(monkeypatch):
    """SGLang counts at most 4,096 future tokens per request (CLIP_MAX_NEW_TOKENS): with max_tokens
    of 20,000 and short actual outputs, it still runs several requests at once; without the clip
    the reserve would hold it to about two."""
    from dataclasses import replace

    from backends.sim import engines

    n = 40
    w = build_workload("big-max", np.zeros(n), np.full(n, 200), np.full(n, 300), max_output=np.full(n, 20_000))
    dep = Deployment("llama-3.1-8b", "a100-40gb", engine="sglang")
    peak = {}
    for clip in (4096, 10**9):
        base = engines.ENGINES["sglang"]
        monkeypatch.setitem(engines.ENGINES, "sglang", replace(base, decode_reserve=replace(base.decode_reserve, clip=clip)))
        top, s = _peak_running(w, dep, until=3.0, every=0.05)
        assert s.n_done == n
        peak[clip] = top
    assert peak[4096] >= 5 and peak[10**9] <= 3, peak
