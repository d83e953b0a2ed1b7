"""Inter-token latency (``backends.itl``): the simulator's ITL histogram counts one gap per output
token after the first, its gaps add up to each request's first-to-last-token time, and its tail
shows what TPOT averages away (decode steps that also run a big prefill chunk)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from simkit import poisson_workload

from backends.base import Deployment, RunResult
from backends.itl import N_BINS, PER_DECADE, ITLHistogram
from backends.sim import SimBackend
from backends.sim.cluster import simulate_cluster
from backends.sim.engine import Simulation
from backends.sim.itl_counter import ITLCounter
from backends.sim.telemetry import build_result
from tuner.policy import Policy
from tuner.scorecard import score
from workloads.workload import build_workload

A100_40_7B = Deployment("llama-2-7b", "a100-40gb")
H100_8B = Deployment("llama-3.1-8b", "h100")
DEP4 = Deployment("llama-3.1-8b", "h100", n_gpus=4)


def _served(res: RunResult) -> tuple[float, float]:
    """(Σ (output − 1), Σ (finish − first token) s) over completed requests."""
    r = res.records
    done = r.finish_s.notna() & ~(r.rejected | r.failed)
    return float((r.output_len[done] - 1).sum()), float((r.finish_s[done] - r.first_token_s[done]).sum())


CASES = {
    "continuous": (H100_8B, {}),
    "chunked, big budget": (H100_8B, {"max_num_batched_tokens": 8192}),
    "recompute preemptions": (A100_40_7B, {"gpu_memory_utilization": 0.45, "preemption_mode": "recompute"}),
    "swap preemptions": (A100_40_7B, {"gpu_memory_utilization": 0.45, "preemption_mode": "swap"}),
    "prefill/decode disaggregation": (DEP4, {"disaggregated": True, "prefill_instances": 2, "decode_instances": 2}),
    "four replicas": (DEP4, {"routing": "least_loaded"}),
    "MoE data-parallel ranks in lockstep": (Deployment("mixtral-8x7b", "h100", n_gpus=4),
                                            {"tp": 2, "replicas": 2, "routing": "least_loaded"}),
    "spot interruptions, migrate": (DEP4, {"replicas": 4, "routing": "least_loaded", "spot_fraction": 0.5,
                                           "spot_interruptions_per_hour": 3600, "spot_recovery": "migrate"}),
    "spot interruptions, restart": (DEP4, {"replicas": 4, "routing": "least_loaded", "spot_fraction": 0.5,
                                           "spot_interruptions_per_hour": 3600, "spot_recovery": "restart"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_gap_per_token_after_the_first_and_gaps_sum_to_each_requests_decode_time(case):
    """Every output token after a request's first ends exactly one gap (a decode step's, or the
    wait of a preempted request until its next token), so the count is Σ (output − 1) and the
    gaps telescope to Σ (finish − first token): exact, segments (closed form) included."""
    dep, knobs = CASES[case]
    w = poisson_workload(200, 20.0, (500, 1500), (200, 600), seed=11)
    res = SimBackend().run(Policy(**knobs), w, dep)
    tokens, decode_s = _served(res)
    itl = res.telemetry.itl
    assert itl is not None and tokens > 0
    assert itl.n == pytest.approx(tokens, rel=1e-12)
    assert itl.total_s == pytest.approx(decode_s, rel=1e-9)
    if "spot" in case:
        c = res.telemetry.counters
        assert res.telemetry.interruptions > 0 and c["spot_migrated_requests"] + c["spot_restarted_requests"] > 0
    if "preemptions" in case:
        assert res.records["preemptions"].sum() > 0
        # a preempted request's wait is one long gap: the tail is far above the typical step
        assert itl.percentile_ms(100) > 20 * itl.percentile_ms(50)


def test_live_migration_hands_off_a_gap_per_moved_request():
    """Llumnix-style migration moves decoding requests with their KV: the moved request's first
    token on its new instance is its next token, due since its last one on the old instance."""
    rng = np.random.default_rng(7)
    n = 400  # every even request decodes 1500-2500 tokens: round robin piles them on replica 0
    out = np.where(np.arange(n) % 2 == 0, rng.integers(1500, 2500, n), rng.integers(20, 60, n))
    w = build_workload("imbalanced", np.cumsum(rng.exponential(1 / 8, n)), rng.integers(500, 1000, n), out)
    res = simulate_cluster(Policy(replicas=2, migration=True), w, Deployment("llama-3.1-8b", "h100", n_gpus=2))
    assert res.telemetry.counters["migrated_running_requests"] >= 20
    tokens, decode_s = _served(res)
    assert res.telemetry.itl.n == pytest.approx(tokens, rel=1e-12)
    assert res.telemetry.itl.total_s == pytest.approx(decode_s, rel=1e-9)


def test_closed_form_segments_bin_like_step_by_step():
    """Decode segments (closed form) spread their gaps over the bins they span; step by step
    gives the same count, sum and percentiles (within a bin)."""
    w = poisson_workload(150, 8.0, (200, 2000), (50, 400), seed=4)
    fast = Simulation(Policy(), w, H100_8B, check=True).run()
    slow = Simulation(Policy(), w, H100_8B, segment_cap=1, check=True).run()
    a, b = build_result(fast, Policy(), ()).telemetry.itl, build_result(slow, Policy(), ()).telemetry.itl
    assert a.n == pytest.approx(b.n, rel=1e-12) and a.total_s == pytest.approx(b.total_s, rel=1e-9)
    for q in (10, 50, 90, 99):
        assert a.percentile_ms(q) == pytest.approx(b.percentile_ms(q), rel=2.5 / PER_DECADE)


def test_big_prefill_chunks_stall_decodes_in_the_itl_tail():
    """Sarathi's trade-off: a large token budget lets a step carry thousands of prefill tokens,
    so the decodes sharing it wait that long for their next token. The ITL p99 shows it; the
    typical gap (p50) barely moves."""
    w = poisson_workload(300, 6.0, (3000, 6000), (100, 300), seed=7)
    res = SimBackend().run(Policy(max_num_batched_tokens=512), w, H100_8B)
    small = score(res, w)
    big = score(SimBackend().run(Policy(max_num_batched_tokens=16384), w, H100_8B), w)
    assert big.itl_p99_ms > 3 * small.itl_p99_ms
    assert big.itl_p50_ms < 1.5 * small.itl_p50_ms
    assert small.itl_p50_ms <= small.itl_p90_ms <= small.itl_p95_ms <= small.itl_p99_ms
    tokens, decode_s = _served(res)
    assert small.itl_mean_ms == pytest.approx(decode_s / tokens * 1e3, rel=1e-9)  # token-weighted TPOT


def test_histogram_percentiles_match_the_exact_ones_within_a_bin():
    rng = np.random.default_rng(0)
    gaps = rng.lognormal(math.log(0.02), 0.6, 50_000)
    h = ITLHistogram.from_gaps(gaps)
    assert h.n == gaps.size and h.total_s == pytest.approx(gaps.sum())
    assert h.mean_ms() == pytest.approx(gaps.mean() * 1e3)
    for q in (1, 25, 50, 90, 99, 99.9):
        assert h.percentile_ms(q) == pytest.approx(np.percentile(gaps, q) * 1e3, rel=1.5 / PER_DECADE)
    c = ITLCounter()
    for g in gaps[:1000]:
        c.add(float(g), 1.0)
    c.add_steps(0.010, 0.012, 500.0, 3.0)  # 500 steps of 3 sequences, 10 -> 12 ms
    f = c.freeze()
    assert f.n == pytest.approx(2500.0) and f.total_s == pytest.approx(gaps[:1000].sum() + 0.011 * 1500.0)
    both = ITLHistogram.merge([h, None, f])
    assert both.n == pytest.approx(h.n + f.n) and both.total_s == pytest.approx(h.total_s + f.total_s)
    assert ITLHistogram.merge([None]) is None and ITLHistogram.from_gaps([]) is None and ITLCounter().freeze() is None
    assert ITLHistogram.from_gaps([1e-9, 1e9]).counts[[0, N_BINS - 1]].tolist() == [1.0, 1.0]  # clamped
    with pytest.raises(ValueError, match="non-negative"):
        ITLHistogram(np.full(N_BINS, -1.0), 0.0)


def test_scorecard_itl_is_nan_without_gaps():
    """A backend that saw no gaps (every request one token) reports NaN, not 0."""
    w = poisson_workload(20, 5.0, (100, 200), (1, 1), seed=1)
    card = score(SimBackend().run(Policy(), w, H100_8B), w)
    assert all(math.isnan(getattr(card, f"itl_{k}_ms")) for k in ("mean", "p50", "p95", "p99"))
    assert card.n_completed == w.n
