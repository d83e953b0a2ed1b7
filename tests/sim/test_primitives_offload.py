"""Tiered KV memory (CPU / SSD offload tiers, paging threshold): victims paged out instead of
recomputed, evicted prefix entries kept and loaded back, SSD slower than CPU, swap = a CPU tier."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from simkit import long_workload, poisson_workload, run

from backends.base import Deployment
from backends.sim import effective_policy
from backends.sim.catalog import get_gpu
from backends.sim.engine import Simulation
from backends.sim.tiers import GIB, SSD_BYTES_S, make_tiers
from tuner.policy import Policy
from tuner.space import parse_range, sample
from tuner.study_spec import load_study
from workloads.workload import build_workload

A100_40_8B = Deployment("llama-3.1-8b", "a100-40gb")   # 0.5 × 40 GiB: ~31k KV tokens
A100_40_8B_V0 = Deployment("llama-3.1-8b", "a100-40gb", engine="vllm-v0")
"""An engine without vLLM V1's asynchronous tier loads: its preemption victims page out to the
tiers (with prefix caching too; vLLM V1 recomputes them: ``test_vllm_v1_victims_recompute_...``)."""
MEM = 0.5
KV_BYTES_8B = 32 * 8 * 128 * 2 * 2
"""Llama-3.1-8B KV bytes per token: 32 layers × 8 KV heads × 128 dims × (K, V) × 2 bytes."""



def shared_prefix_workload(groups: int = 40, n: int = 400, rate: float = 4.0):
    """40 distinct 4096-token system prompts (164k tokens: 5× the GPU cache) + a short question."""
    rng = np.random.default_rng(9)
    arr = np.cumsum(rng.exponential(1 / rate, n))
    g = rng.integers(0, groups, n)
    blocks = [[int(gi) * 1000 + k for k in range(8)] for gi in g]
    return build_workload("shared40", arr, 4096 + rng.integers(200, 400, n), rng.integers(20, 80, n),
                          prefix_blocks=blocks, prefix_block_tokens=512)


def _same(a, b) -> bool:
    cols = ("first_token_s", "finish_s", "preemptions", "cached_tokens")
    return all(np.array_equal(a.records[c].to_numpy(), b.records[c].to_numpy(), equal_nan=True) for c in cols)


def _recomputes(res) -> float:
    c = res.telemetry.counters
    return c["preemptions"] - c.get("paged_out_preemptions", 0.0)


def test_cpu_tier_pages_victims_out_instead_of_recomputing():
    # without prefix caching a recompute victim's KV is dropped (with it, its blocks stay cached:
    # test_primitives_preemption.py)
    # (an engine with swap: vLLM V1 recomputes, test_vllm_v1_victims_recompute_...)
    w = long_workload()
    res0, off = run(w, A100_40_8B_V0, gpu_memory_utilization=MEM, prefix_caching=False)
    res1, on = run(w, A100_40_8B_V0, gpu_memory_utilization=MEM, cpu_offload_gb=32, prefix_caching=False)
    assert _recomputes(res0) > 50
    assert _recomputes(res1) == 0 and res1.telemetry.counters["paged_out_preemptions"] > 0
    # paged back in instead of recomputed: less prefill work, sooner first tokens
    c0, c1 = res0.telemetry.counters, res1.telemetry.counters
    assert c1["prefill_tokens"] == w.prompt_len.sum() < 0.8 * c0["prefill_tokens"]
    assert on.throughput_tok_s > 1.05 * off.throughput_tok_s
    assert on.ttft_p50_ms < 0.85 * off.ttft_p50_ms and on.tpot_p50_ms <= off.tpot_p50_ms
    assert on.n_completed == off.n_completed == w.n
    assert 0 < on.offload_bw_util < 1 and off.offload_bw_util == 0


def test_vllm_v1_victims_recompute_and_reload_their_blocks_from_the_tier():
    """vLLM V1 has no swap: with its offloading connector a victim is preempted by recompute, its
    blocks stay in the GPU prefix cache, and those the GPU evicts before it resumes come back from
    the connector's CPU copy (loads beside the batch) instead of being recomputed. Another engine
    (here vLLM V0), or a policy asking for swap, pages the victims out and back in whole."""
    w = long_workload()
    res0, off = run(w, A100_40_8B, gpu_memory_utilization=MEM)
    res1, on = run(w, A100_40_8B, gpu_memory_utilization=MEM, cpu_offload_gb=32)
    c0, c1 = res0.telemetry.counters, res1.telemetry.counters
    assert c1["preemptions"] > 50 and c1["paged_out_preemptions"] == 0
    assert c1["offload_hit_tokens"] > 0.1 * w.prompt_len.sum()
    assert c1["prefill_tokens"] < 0.95 * c0["prefill_tokens"]
    assert on.throughput_tok_s >= off.throughput_tok_s and on.n_completed == w.n
    res_v0, _ = run(w, A100_40_8B_V0, gpu_memory_utilization=MEM, cpu_offload_gb=32)
    assert res_v0.telemetry.counters["paged_out_preemptions"] > 0
    # the engine decides, not the batching or the cache: V1 without prefix caching, or under the
    # simulator's continuous batching, still recomputes its victims (nothing to reload then)
    for kw in ({"prefix_caching": False}, {"batching": "continuous"}):
        r, _ = run(w, A100_40_8B, gpu_memory_utilization=MEM, cpu_offload_gb=32, **kw)
        assert r.telemetry.counters["preemptions"] > 0 and r.telemetry.counters["paged_out_preemptions"] == 0, kw
    # a policy that asks for swap still pages out (servetune export refuses it for vLLM V1)
    res_swap, _ = run(w, A100_40_8B, gpu_memory_utilization=MEM, cpu_offload_gb=32, preemption_mode="swap")
    assert res_swap.telemetry.counters["paged_out_preemptions"] > 0


def test_vllm_v1_has_no_paging_threshold():
    """vLLM V1's offloading connector pages nothing out early: offload_threshold changes nothing
    there, while an engine with a paging threshold (vLLM V0 here) pages cold entries out early."""
    w = shared_prefix_workload()
    a, _ = run(w, A100_40_8B, gpu_memory_utilization=MEM, cpu_offload_gb=2)
    b, _ = run(w, A100_40_8B, gpu_memory_utilization=MEM, cpu_offload_gb=2, offload_threshold=0.7)
    assert _same(a, b) and a.telemetry.offload_bytes == b.telemetry.offload_bytes > 0
    assert any("no paging threshold" in n for n in b.notes) and not any("paging threshold" in n for n in a.notes)
    c, _ = run(w, A100_40_8B_V0, gpu_memory_utilization=MEM, cpu_offload_gb=2)
    d, _ = run(w, A100_40_8B_V0, gpu_memory_utilization=MEM, cpu_offload_gb=2, offload_threshold=0.7)
    assert not _same(c, d)
    # the engine decides, not prefix caching: without it the threshold's only use is the page-in
    # headroom of swapped victims, which V1 does not have either
    w = long_workload()
    kw = {"gpu_memory_utilization": MEM, "cpu_offload_gb": 32, "prefix_caching": False, "preemption_mode": "swap"}
    for dep, inert in ((A100_40_8B, True), (A100_40_8B_V0, False)):
        e, _ = run(w, dep, **kw)
        f, _ = run(w, dep, offload_threshold=0.7, **kw)
        assert e.telemetry.counters["paged_out_preemptions"] > 0
        assert _same(e, f) == inert and any("no paging threshold" in n for n in f.notes) == inert


def test_paged_out_bytes_are_conserved_and_counted():
    w = long_workload()
    sim = Simulation(Policy(gpu_memory_utilization=MEM, cpu_offload_gb=32), w, A100_40_8B_V0, check=True).run()
    cpu = sim.tiers.tiers[0]
    assert cpu.used == cpu.seq == 0 and not sim.swapped     # every paged-out block came back
    assert cpu.moved == sim.c_swapped > 0 and cpu.moved % 2 == 0   # out and in, block for block
    assert sim.tiers.moved_bytes == cpu.moved * sim.bs * sim.cm.kv_bytes_per_token * sim.cm.tp
    # offload_bytes_s_capacity is the PCIe link: utilisation = transfer seconds / makespan
    from backends.sim.telemetry import build_result
    from tuner.scorecard import score

    res = build_result(sim, sim.policy, ())
    sc = score(res, w)
    assert res.telemetry.offload_bytes_s_capacity == sim.cm.gpu.pcie_bytes_s * sim.cm.tp
    assert sc.offload_bw_util == pytest.approx(sim.tiers.busy_s / res.telemetry.makespan_s)


def test_cpu_tier_turns_prefix_cache_misses_into_loads():
    w = shared_prefix_workload()
    res0, off = run(w, A100_40_8B, gpu_memory_utilization=MEM)
    res1, on = run(w, A100_40_8B, gpu_memory_utilization=MEM, cpu_offload_gb=64)
    assert off.prefix_hit_rate < 0.3 and on.prefix_hit_rate > 0.7
    assert res1.telemetry.counters["offload_hit_tokens"] > 0.5 * res1.telemetry.counters["prefix_query_tokens"]
    assert on.ttft_p50_ms < 0.05 * off.ttft_p50_ms
    assert on.throughput_tok_s > 1.3 * off.throughput_tok_s
    assert on.offload_bw_util > 0


def test_ssd_hits_come_back_slower_than_cpu_hits():
    w = shared_prefix_workload()
    res_c, cpu = run(w, A100_40_8B, gpu_memory_utilization=MEM, cpu_offload_gb=64)
    res_s, ssd = run(w, A100_40_8B, gpu_memory_utilization=MEM, cpu_offload_gb=0.5, ssd_offload_gb=64)
    cs, ss = res_c.telemetry.counters, res_s.telemetry.counters
    assert ss["offload_ssd_blocks_moved"] > 0 and ss["offload_spill_bytes"] > 0
    assert ssd.prefix_hit_rate == pytest.approx(cpu.prefix_hit_rate, abs=0.05)   # same hits ...
    moved = (ss["offload_cpu_blocks_moved"] + ss["offload_ssd_blocks_moved"]) / cs["offload_cpu_blocks_moved"]
    assert ss["offload_transfer_s"] > 3 * moved * cs["offload_transfer_s"]        # ... slower bytes
    # a hit's 4096-token prefix loads in 4096 × 128 KiB / bandwidth: SSD hits wait that much longer
    prefix_bytes = 4096 * KV_BYTES_8B
    gap_s = prefix_bytes / SSD_BYTES_S - prefix_bytes / get_gpu("a100-40gb").pcie_bytes_s
    assert ssd.ttft_p50_ms - cpu.ttft_p50_ms > 0.8 * gap_s * 1e3
    assert SSD_BYTES_S < get_gpu("a100-40gb").pcie_bytes_s


def test_tiny_tier_changes_nothing():
    for w in (long_workload(), shared_prefix_workload()):
        res0, _ = run(w, A100_40_8B, gpu_memory_utilization=MEM)
        res1, _ = run(w, A100_40_8B, gpu_memory_utilization=MEM, cpu_offload_gb=0.001)  # < one KV block
        assert _same(res0, res1)
        assert res1.telemetry.offload_bytes == 0


def test_small_tiers_spill_and_drop_with_invariants_checked():
    w = shared_prefix_workload(n=200)
    res, _ = run(w, A100_40_8B, gpu_memory_utilization=MEM, cpu_offload_gb=0.5, ssd_offload_gb=2,
                 offload_threshold=0.7)   # run(): every invariant recounted every step
    c = res.telemetry.counters
    assert c["offload_spill_bytes"] > 0 and c["offload_ssd_blocks_moved"] > 0


def test_swap_is_a_cpu_tier_of_swap_space():
    w = long_workload()
    # without prefix caching (with it, the CPU tier also keeps cache entries evicted from the GPU), on
    # an engine whose tier pages victims out (vLLM V1's connector recomputes them)
    res_swap, _ = run(w, A100_40_8B_V0, gpu_memory_utilization=MEM, preemption_mode="swap", prefix_caching=False)
    res_tier, _ = run(w, A100_40_8B_V0, gpu_memory_utilization=MEM, cpu_offload_gb=4.0, offload_threshold=1.0,
                      prefix_caching=False)
    assert _same(res_swap, res_tier)                  # 4 GiB per GPU, tp=1, no prefix entries to keep
    assert res_swap.telemetry.offload_bytes == res_tier.telemetry.offload_bytes > 0


def test_default_policy_is_untouched_by_the_offload_knobs():
    w = poisson_workload(200, 20.0, (500, 1500), (200, 600), seed=11)
    a, _ = run(w, A100_40_8B, gpu_memory_utilization=MEM)
    b, _ = run(w, A100_40_8B, gpu_memory_utilization=MEM, offload_threshold=0.5)  # no CPU tier: inert
    assert _same(a, b) and "paged_out_preemptions" not in a.telemetry.counters
    assert a.telemetry.offload_bytes == 0 and a.telemetry.offload_bytes_s_capacity == 0
    eff, notes = effective_policy(Policy(cpu_offload_gb=16, ssd_offload_gb=64, offload_threshold=0.8))
    assert eff.cpu_offload_gb == 16 and eff.ssd_offload_gb == 64 and not notes


def test_search_space_conditions_and_checklist_study():
    space = tuple(parse_range(k, v, f"search.{k}") for k, v in {
        "cpu_offload_gb": [0, 16, 64], "ssd_offload_gb": [0, 256], "offload_threshold": {"low": 0.7, "high": 0.98}}.items())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = 0
    for _ in range(30):
        t = study.ask()
        p = sample(t, space, Policy())
        assert ("offload_threshold" in t.params) == ("ssd_offload_gb" in t.params) == (p.cpu_offload_gb > 0)
        seen += p.cpu_offload_gb > 0
        assert effective_policy(p)[0] == p
        study.tell(t, 0.0)
    assert 0 < seen < 30
    spec = load_study("studies/full-checklist.yaml")
    assert {"cpu_offload_gb", "offload_threshold"} <= {r.knob for r in spec.search}


def _tier_hit_workload(decoder: bool):
    """Prefix A's 16k tokens are cached, then evicted in part (to the CPU tier) by prefix B's;
    at t = 4 s a request on A hits the GPU and the CPU tier. ``decoder``: a short-prompt request
    decodes all along (the batch the load could stall)."""
    a, b = [1000 + k for k in range(32)], [2000 + k for k in range(32)]
    rows = [(0.0, 16500, 2, a), (1.0, 16500, 30, b), (4.0, 16500, 50, a)] + ([(0.5, 100, 3000, [])] if decoder else [])
    rows.sort(key=lambda r: r[0])
    return build_workload("tier-hit", np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
                          np.array([r[2] for r in rows]), prefix_blocks=[r[3] for r in rows], prefix_block_tokens=512)


def _sync_tier_engine(monkeypatch):
    from dataclasses import replace

    from backends.sim import engines

    monkeypatch.setitem(engines.ENGINES, "vllm-v1", replace(engines.ENGINES["vllm-v1"], kv_tier_async=False))


@pytest.mark.parametrize("decoder", [True, False])
def test_vllm_v1_loads_tier_hits_beside_the_batch(monkeypatch, decoder):
    """vLLM V1's offloading connector: a request whose prefix comes back from the CPU tier waits
    for its load (at least two engine steps after the one that issued it, and the load's
    transfer time) while the running batch goes on; with synchronous loads (the tier's old
    rule, kept for engines without ``kv_tier_async``) that batch stalls for the transfer."""
    from backends.sim import simulate

    # threshold 1 for both engines (vLLM V1 has no paging threshold): the same hits, other timing
    w, pol = _tier_hit_workload(decoder), Policy(gpu_memory_utilization=MEM, cpu_offload_gb=64, offload_threshold=1.0)
    a = simulate(pol, w, A100_40_8B, check=True, client_lag=False)
    _sync_tier_engine(monkeypatch)
    s = simulate(pol, w, A100_40_8B, check=True, client_lag=False)
    rec = a.records
    hit = int(np.flatnonzero(rec.arrival_s.to_numpy() == 4.0)[0])
    tokens = a.telemetry.counters["offload_hit_tokens"]
    assert tokens > 0 and s.telemetry.counters["offload_hit_tokens"] == tokens
    load_s = tokens * KV_BYTES_8B / get_gpu("a100-40gb").pcie_bytes_s
    ttft = a.records.first_token_s[hit] - a.records.arrival_s[hit]
    assert ttft >= load_s
    if decoder:  # the decoding request never waits for the load: it finishes a load earlier
        dec = int(np.flatnonzero(rec.output_len.to_numpy() == 3000)[0])
        step = (a.records.finish_s[dec] - a.records.first_token_s[dec]) / 2999
        assert ttft >= load_s + 2 * step
        assert s.records.finish_s[dec] - a.records.finish_s[dec] >= load_s
    else:  # nothing else runs: empty engine steps until the load is in, then its last tokens
        assert ttft < load_s + 0.05


def test_a_paged_out_request_comes_back_when_the_last_running_one_leaves_in_the_same_step():
    """Found by a random-policy run of studies/full-checklist.yaml (disaggregated, 46 LoRA slots
    leaving a prefill instance 57 KV blocks, CPU tier): the last running request failed after
    the step's swap-in had been refused for want of room, and the engine declared the paged-out
    ones stranded in an empty instance (SimInvariantError) instead of swapping them in."""
    from backends.sim import SimBackend

    w = load_study("studies/full-checklist.yaml").load_workload()
    pol = Policy(batching="decode_maximal", max_num_batched_tokens=2435, gpu_memory_utilization=0.5,
                 cpu_offload_gb=16.0, offload_threshold=0.85, queue="priority", disaggregated=True,
                 prefill_instances=2, disagg_min_prompt=1024, disagg_min_queue=4, routing="prefix_affinity",
                 max_loras=46, prefix_caching=True)
    res = SimBackend(check=True).run(pol, w, Deployment("llama-3.1-8b", "a100-40gb", n_gpus=4, engine="vllm-v0"), seed=89)
    rec = res.records
    assert res.telemetry.counters["paged_out_preemptions"] > 0
    assert (np.isfinite(rec.finish_s) | rec.failed).all() and rec.failed.sum() < 0.1 * len(rec)


def test_written_through_tier_books():
    """The write-through CPU tier (vLLM V1's connector): entries stored once and refreshed by every
    lookup, first block most recent; anonymous runs merge, are dropped only as far as needed, and
    push entries out like any other blocks; a run larger than the tier is not stored."""
    tiers = make_tiers(cpu_offload_gb=10 / 1024, ssd_offload_gb=0.0, swap=False, tp=1, block_bytes_gpu=GIB / 1024,
                       pcie_bytes_s=1e9, entry_blocks=2, write_through=True)
    cpu = tiers.tiers[0]
    assert tiers.write_through and cpu.capacity == 10
    tiers.write_entries((1, 2))
    tiers.write_anon(3)
    tiers.write_anon(2)                      # one run with the blocks just written
    assert cpu.used == 4 and cpu.moved == 4  # (placed lazily: by the next tier operation)
    tiers.flush()
    assert list(cpu.lru.values()) == [2, 2, 5] and cpu.used == 9 and cpu.moved == 9
    tiers.write_entries((1, 2, 3))           # lookup touches 1, 2 (saving 1 from eviction), stores 3
    assert list(cpu.lru.values()) == [4, 2, 2, 2] and list(cpu.lru)[1:] == [3, 2, 1] and cpu.moved == 11
    tiers.write_anon(6)                      # the rest of the old run, then entry 3, go
    tiers.flush()
    assert list(cpu.lru)[:2] == [2, 1] and list(cpu.lru.values()) == [2, 2, 6] and set(tiers.where) == {1, 2}
    tiers.write_anon(11)                     # larger than the tier: not stored
    tiers.flush()
    assert cpu.used == 10 and cpu.moved == 17
    tiers.check([0])


def test_vllm_v1_tier_is_written_through():
    """vLLM V1's offloading connector stores every block as it is computed, and its lookups refresh
    the blocks they find: a CPU tier smaller than the GPU's prefix cache holds the most recent
    blocks, which the GPU holds too, so it serves (almost) no hits, while a tier filled by what the
    GPU evicts (vLLM V0 here) adds its size to the cache. A tier larger than the working set serves
    both alike. Every computed block crosses PCIe (offload bytes)."""
    w = shared_prefix_workload()                       # GPU cache ~31k tokens: ~3.9 GiB
    none, s0 = run(w, A100_40_8B, gpu_memory_utilization=MEM)
    v1, s1 = run(w, A100_40_8B, gpu_memory_utilization=MEM, cpu_offload_gb=2, check=True)
    v0, s0v = run(w, A100_40_8B_V0, gpu_memory_utilization=MEM, cpu_offload_gb=2, offload_threshold=1.0,
                  prefix_caching=True, batching="chunked", check=True)
    q = v1.telemetry.counters["prefix_query_tokens"]
    assert v1.telemetry.counters["offload_hit_tokens"] < 0.01 * q and abs(s1.prefix_hit_rate - s0.prefix_hit_rate) < 0.01
    assert v0.telemetry.counters["offload_hit_tokens"] > 0.05 * q and s0v.prefix_hit_rate > s1.prefix_hit_rate + 0.04
    c = v1.telemetry.counters
    computed = c["prefill_tokens"] + w.output_len.sum()
    # (plus GPU hits whose copy the tier had dropped: stored again, as vLLM does)
    assert 0.9 * computed * KV_BYTES_8B < v1.telemetry.offload_bytes <= (computed + q) * KV_BYTES_8B
    big1, b1 = run(w, A100_40_8B, gpu_memory_utilization=MEM, cpu_offload_gb=64)
    big0, b0 = run(w, A100_40_8B_V0, gpu_memory_utilization=MEM, cpu_offload_gb=64, offload_threshold=1.0,
                   prefix_caching=True, batching="chunked")
    assert b1.prefix_hit_rate > 0.8 and abs(b1.prefix_hit_rate - b0.prefix_hit_rate) < 0.02


@pytest.mark.parametrize("engine, through", [("sglang", True), ("tensorrt-llm", False)])
def test_engines_fill_their_tier_their_way(engine, through):
    """SGLang's HiCache backs radix nodes up as they are inserted (its default write policy,
    write_through): a 2 GiB host pool smaller than the GPU cache serves (almost) no hit, and it has
    no paging threshold. TensorRT-LLM offloads the blocks the GPU evicts: the same pool serves hits."""
    w = shared_prefix_workload()
    dep = Deployment("llama-3.1-8b", "a100-40gb", engine=engine)
    res, _ = run(w, dep, gpu_memory_utilization=MEM, cpu_offload_gb=2, offload_threshold=1.0, check=True)
    hits = res.telemetry.counters["offload_hit_tokens"] / res.telemetry.counters["prefix_query_tokens"]
    assert (hits < 0.01) if through else (hits > 0.05)
    res7, _ = run(w, dep, gpu_memory_utilization=MEM, cpu_offload_gb=2, offload_threshold=0.7)
    assert _same(res, res7) == through
    assert any("no paging threshold" in n for n in res7.notes) == through
