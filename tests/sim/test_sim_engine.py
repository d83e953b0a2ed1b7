"""Engine mechanics: determinism, isolation, invariants, conservation, effective policy, telemetry."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
from simkit import H100_8B, poisson_workload, run

from backends.base import RECORD_COLUMNS, Deployment
from backends.sim import SimBackend, effective_policy, simulate
from backends.sim.engine import SimInvariantError, Simulation
from backends.sim.memory import BlockManager
from backends.sim.request_state import DecodePool, Req
from backends.sim.telemetry import MAX_ROWS
from tuner.policy import Policy
from tuner.scorecard import score
from workloads.workload import build_workload

SMALL = Deployment("llama-2-7b", "a100-40gb")


def test_same_seed_same_records_and_seed_matters_for_noisy_predictor():
    w = poisson_workload(300, 15.0, (100, 2000), (10, 400), seed=3)
    a = simulate(Policy(queue="sjf_output", max_num_seqs=8), w, H100_8B, seed=5).records
    b = simulate(Policy(queue="sjf_output", max_num_seqs=8), w, H100_8B, seed=5).records
    c = simulate(Policy(queue="sjf_output", max_num_seqs=8), w, H100_8B, seed=6).records
    pd.testing.assert_frame_equal(a, b)
    assert not np.array_equal(a["first_token_s"].to_numpy(), c["first_token_s"].to_numpy())


def test_interleaved_simulations_match_solo_runs():
    w1 = poisson_workload(300, 30.0, (100, 1500), (50, 500), seed=1)
    w2 = poisson_workload(300, 20.0, (500, 1500), (200, 600), seed=2)
    p1, p2 = Policy(queue="sjf_output"), Policy(gpu_memory_utilization=0.45, preemption_mode="swap")
    solo1 = simulate(p1, w1, H100_8B, seed=1).records
    solo2 = simulate(p2, w2, SMALL, seed=2).records
    out: dict[str, pd.DataFrame] = {}
    backend = SimBackend()

    def go(key, p, w, d, s):
        for _ in range(2):
            out[key] = backend.run(p, w, d, seed=s).records

    threads = [threading.Thread(target=go, args=("a", p1, w1, H100_8B, 1)),
               threading.Thread(target=go, args=("b", p2, w2, SMALL, 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pd.testing.assert_frame_equal(out["a"], solo1)
    pd.testing.assert_frame_equal(out["b"], solo2)


@pytest.mark.parametrize("knobs", [
    dict(preemption_mode="recompute"),
    dict(preemption_mode="swap"),
    dict(batching="continuous", preemption_mode="swap", max_num_batched_tokens=4096),
    dict(batching="decode_maximal", block_size=32, long_prefill_token_threshold=256),
    dict(preemption="request", queue="priority"),
])
def test_invariants_hold_on_a_stressed_run(knobs):
    rng = np.random.default_rng(0)
    n = 250
    blocks = [[int(g) * 100 + k for k in range(2)] for g in rng.integers(0, 5, n)]
    w = build_workload("stress", np.cumsum(rng.exponential(0.03, n)), rng.integers(1100, 2500, n),
                       rng.integers(1, 700, n), priority=rng.integers(0, 3, n), prefix_blocks=blocks,
                       prefix_block_tokens=512)
    res = simulate(Policy(gpu_memory_utilization=0.45, **knobs), w, SMALL, check=True)
    rec = res.records
    assert (np.isfinite(rec["finish_s"]) | rec["rejected"] | rec["failed"]).all()
    assert not rec["failed"].any()
    assert (rec["output_len"].to_numpy() == w.output_len).all()
    assert (rec["first_token_s"] >= rec["arrival_s"]).all() and (rec["finish_s"] >= rec["first_token_s"]).all()
    if knobs.get("preemption") != "request":
        assert res.telemetry.counters["preemptions"] > 0


def test_every_request_is_finished_rejected_or_failed_and_records_complete():
    w = poisson_workload(400, 60.0, (100, 1500), (10, 300), seed=4)
    res = simulate(Policy(max_queue_depth=20), w, H100_8B)
    rec = res.records
    assert set(RECORD_COLUMNS) <= set(rec.columns) and len(rec) == w.n
    done = np.isfinite(rec["finish_s"].to_numpy())
    assert (done.astype(int) + rec["rejected"] + rec["failed"] == 1).all()
    assert rec.loc[done, "replica"].eq(0).all() and rec.loc[rec["rejected"], "replica"].eq(-1).all()
    assert np.isnan(rec.loc[rec["rejected"], "first_token_s"]).all()


def test_prompt_longer_than_context_fails_instead_of_hanging():
    w = build_workload("long", [0.0, 0.1], [5000, 100], [10, 10])
    res = simulate(Policy(), w, Deployment("llama-2-7b", "h100"))  # 4096-token context
    assert res.records["failed"].tolist() == [True, False]


def test_max_sim_time_stops_and_marks_the_rest_failed():
    w = poisson_workload(300, 50.0, 1000, 300, seed=1)
    res = simulate(Policy(), w, H100_8B, max_sim_time_s=2.0)
    assert res.records["failed"].sum() > 0
    assert any("max_sim_time_s" in n for n in res.notes)
    assert res.telemetry.makespan_s <= 2.5


def test_effective_policy_resets_unsimulated_knobs_with_one_note_each():
    # speculation is simulated (not reset); one instance resets the cluster knobs (SimBackend.run serves them)
    p = Policy(speculation="ngram", disaggregated=True, replicas=4)
    eff, notes = effective_policy(p)
    assert eff.speculation == "ngram" and not eff.disaggregated
    assert eff.replicas == 1
    assert any(n.startswith("disaggregated=True: simulate() serves one instance") for n in notes)
    assert len(notes) == 2
    w = poisson_workload(20, 5.0, 200, 20)
    res = simulate(p, w, H100_8B)
    assert res.policy == eff and tuple(n for n in res.notes if not n.startswith("client lag"))[:2] == notes
    assert effective_policy(Policy())[1] == ()


def test_telemetry_is_filled_and_scorecard_works():
    w = poisson_workload(3000, 40.0, (100, 1500), (10, 300), seed=4)
    res, card = run(w, check=False)
    tel = res.telemetry
    assert 0 < tel.busy_s <= tel.makespan_s + 1e-9
    assert tel.flops > 0 and tel.hbm_bytes > 0 and tel.gpu_hour_usd > 0 and tel.kv_capacity_tokens > 0
    assert len(tel.timeline) <= MAX_ROWS
    assert list(tel.timeline.columns) == ["t_s", "kv_used_frac", "running", "waiting", "batch_tokens"]
    assert tel.timeline["t_s"].is_monotonic_increasing
    for k in ("preemptions", "swapped_blocks", "iterations", "batch_size_sum", "kv_allocated_slot_s",
              "kv_used_slot_s", "prefix_query_tokens", "prefix_hit_tokens"):
        assert k in tel.counters
    assert tel.counters["kv_used_slot_s"] <= tel.counters["kv_allocated_slot_s"]
    assert 0 < card.fragmentation < 0.2 and 0 < card.kv_util_peak <= 1
    assert card.mean_batch_size > 1 and 0 < card.mfu < 1 and 0 < card.mbu < 1
    assert card.n_completed == w.n and np.isfinite(card.usd_per_1m_tokens)


def test_infeasible_deployment_is_a_value_error():
    w = poisson_workload(5, 1.0, 100, 10)
    with pytest.raises(ValueError, match="infeasible"):
        simulate(Policy(), w, Deployment("llama-3.1-70b", "h100"))
    with pytest.raises(ValueError, match="tp=2: needs 2 GPUs"):
        simulate(Policy(tp=2), w, Deployment("llama-3.1-8b", "h100"))
    res = simulate(Policy(tp=2), w, Deployment("llama-3.1-70b", "h100", n_gpus=4))
    assert res.telemetry.n_gpus == 2 and any("simulated ONE instance of tp=2" in n for n in res.notes)
    with pytest.raises(ValueError, match="unknown gpu"):
        simulate(Policy(), w, Deployment("llama-3.1-8b", "nope-gpu"))


def test_simulation_runs_once_and_broken_books_raise():
    w = poisson_workload(50, 5.0, 300, 50)
    sim = Simulation(Policy(), w, H100_8B)
    sim.run()
    with pytest.raises(RuntimeError):
        sim.run()
    sim = Simulation(Policy(), w, H100_8B)
    sim.mem.free -= 1  # a leak
    with pytest.raises(SimInvariantError):
        sim.run()


def test_decode_pool_block_formula_matches_brute_force():
    rng = np.random.default_rng(0)
    for bs in (8, 16, 64):
        pool = DecodePool(bs, grow=True)
        reqs = []
        for i in range(40):
            if i % 7 == 0:
                pool.advance(int(rng.integers(0, 50)))
            r = Req(i, 0.0, int(rng.integers(1, 300)), 10_000, 10_000, 0, (), 0)
            r.computed, r.gen, r.num_tokens = r.prompt, 1, r.prompt + 1
            pool.add(r)
            reqs.append(r)
            if i % 5 == 4:
                pool.remove(reqs.pop(int(rng.integers(0, len(reqs)))))
        for n in (0, 1, 2, bs - 1, bs, 3 * bs + 5):
            brute = sum(-(-(r.b + pool.g + n) // bs) for r in reqs)
            assert pool.blocks(pool.g + n) == brute
        assert pool.cur == pool.blocks(pool.g)
        avail = 37
        k = pool.steps_fitting(avail, 10_000)
        assert pool.blocks(pool.g + k) - pool.cur <= avail < pool.blocks(pool.g + k + 1) - pool.cur
        before = pool.cur
        assert pool.advance(k) == pool.cur - before and pool.cur == pool.blocks(pool.g)
        assert pool.next_step_blocks() == pool.blocks(pool.g + 1) - pool.cur


def test_decode_pool_counts_tokens_left_with_and_without_a_clip():
    """What the members may still generate (max_out − generated), and the same clipped at ``clip``
    tokens each (SGLang's admission estimate), kept incrementally through joins, steps and leaves."""
    rng = np.random.default_rng(1)
    pool = DecodePool(16, grow=True)
    pool.clip = 100
    reqs = []
    for i in range(60):
        if i % 6 == 0:
            pool.advance(int(rng.integers(0, 40)))
        out = int(rng.integers(20, 400))
        r = Req(i, 0.0, 50, out, out + int(rng.integers(0, 200)), 0, (), 0)
        r.computed, r.gen, r.num_tokens = 50, 1, 51
        pool.add(r)
        reqs.append(r)
        if i % 4 == 3:
            pool.remove(reqs.pop(int(rng.integers(0, len(reqs)))))
        pool.pop_finished()  # (finished members leave)
        reqs = [r for r in reqs if r.fin_g > pool.g]
        left = [r.max_out - (r.out - (r.fin_g - pool.g)) for r in reqs]
        assert pool.left_tokens() == sum(left) and pool.sum_max == sum(r.max_out for r in reqs)
        assert pool.left_clipped() == sum(min(x, 100) for x in left)
    assert any(x > 100 for x in left) and pool.long_n > 0


def test_block_manager_prefix_cache_lru_and_conservation():
    m = BlockManager(total_blocks=100, block_size=16, block_tokens=64)  # 4 blocks per entry
    m.acquire((1, 2, 3))
    assert m.cached == 12 and m.free == 88 and m.hits((1, 2)) == 0  # not computed yet
    m.mark_ready((1, 2, 3))
    assert m.hits((1, 2, 9)) == 2 and m.hits((2,)) == 1
    m.release((1, 2, 3))
    assert m.evictable == 12 and m.avail == 100
    m.acquire((2,))                       # re-referenced: no longer evictable
    m.take(95)                            # needs 7 more than free: evicts LRU entries 1 then 3
    assert m.refcount(2) == 1 and m.hits((1,)) == 0 and m.hits((2,)) == 1
    assert m.free + 95 + m.cached == 100
    m.check()
    m.release((2,))
    m.acquire((7,))
    m.release((7,))                       # never computed: freed at once
    assert m.refcount(7) == 0 and m.hits((7,)) == 0
    m.check()


def test_scorecard_of_every_batching_mode():
    w = poisson_workload(200, 10.0, (100, 1500), (10, 300), seed=4)
    for b in ("static", "continuous", "chunked", "decode_maximal"):
        res = simulate(Policy(batching=b), w, H100_8B, check=True)
        card = score(res, w)
        assert card.n_completed == w.n, b
        assert res.telemetry.counters["iterations"] > 0


@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_overloaded_trace_with_tiny_kv_completes_with_checks(mode):
    """Regression: a swapped-in sequence's next block must be reserved before prefills plan."""
    from workloads import first_n, load_workload, scale_to_rate

    w = first_n(scale_to_rate(load_workload("azure-conv"), 40.0), 4000)
    res = simulate(Policy(gpu_memory_utilization=0.3, preemption_mode=mode), w, H100_8B, check=True)
    assert res.records["finish_s"].notna().all()
    assert res.telemetry.counters["preemptions"] > 100
    assert (res.telemetry.counters["swapped_blocks"] > 0) == (mode == "swap")


@pytest.mark.parametrize("knobs", [dict(), dict(batching="continuous"), dict(preemption_mode="swap"),
                                   dict(preemption="request"), dict(batching="static")])
def test_closed_form_segments_equal_iteration_by_iteration(knobs):
    """Skipping decode iterations in closed form gives the same records as stepping each one."""
    rng = np.random.default_rng(5)
    n = 120
    w = build_workload("ref", np.cumsum(rng.exponential(0.05, n)), rng.integers(200, 2000, n), rng.integers(1, 400, n))
    pol = Policy(gpu_memory_utilization=0.45, **knobs)
    fast = Simulation(pol, w, SMALL).run()
    slow = Simulation(pol, w, SMALL, segment_cap=1, check=True).run()
    np.testing.assert_allclose(fast.finish, slow.finish, rtol=1e-9)
    np.testing.assert_allclose(fast.first_tok, slow.first_tok, rtol=1e-9)
    assert (fast.preempts == slow.preempts).all() and (fast.out_done == slow.out_done).all()
    assert fast.tel.iters == slow.tel.iters
    assert fast.tel.flops == pytest.approx(slow.tel.flops, rel=1e-9)
    assert fast.tel.alloc_ss == pytest.approx(slow.tel.alloc_ss, rel=0.01)  # trapezoid vs stepwise
    assert fast.tel.used_ss == pytest.approx(slow.tel.used_ss, rel=0.01)


def test_the_request_at_an_arrival_chunk_boundary_is_served_as_written():
    """Arrivals are read in chunks of ARRIVAL_CHUNK rows; the last row of a chunk is served with
    its own prompt, not one of the next chunk's (it was, until 2026-12-08)."""
    from backends.sim.arrivals import ARRIVAL_CHUNK

    n = 2 * ARRIVAL_CHUNK + 5
    prompt = np.full(n, 100)
    prompt[ARRIVAL_CHUNK - 1] = 777
    w = build_workload("chunks", np.arange(n) * 0.01, prompt, np.full(n, 2))
    res = simulate(Policy(prefix_caching=False), w, H100_8B)
    assert res.telemetry.counters["prefill_tokens"] == prompt.sum()


def test_a_request_served_with_another_rows_lengths_is_an_invariant_error():
    """The end-of-run check: every finished request generated what its own row asks (it caught the
    arrival-chunk bug above: row 8,191 generated another row's output)."""
    w = poisson_workload(50, 20.0, (100, 500), (5, 300), seed=1)
    sim = Simulation(Policy(), w, H100_8B).run()
    sim.out_done[7] += 1
    with pytest.raises(SimInvariantError, match="request 7 generated"):
        sim._finish_run()
