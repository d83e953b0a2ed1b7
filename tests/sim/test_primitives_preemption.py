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

A100_40_8B = Deployment("llama-3.1-8b", "a100-40gb")   # 0.5 × 40 GiB: ~31k KV tokens
MEM = 0.5



def _same(a, b) -> bool:
    cols = ("first_token_s", "finish_s", "preemptions", "cached_tokens")
    return all(np.array_equal(a.records[c].to_numpy(), b.records[c].to_numpy(), equal_nan=True) for c in cols)


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
