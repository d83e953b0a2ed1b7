"""Prefilled requests (prompt KV transferred from a prefill instance): no prefill compute."""

from __future__ import annotations

import numpy as np
import pytest
from simkit import H100_8B, poisson_workload

from backends.sim import SimBackend
from backends.sim.engine import Simulation
from tuner.policy import Policy


def _sim(w, prefilled, **knobs):
    return Simulation(Policy(**knobs), w, H100_8B, check=True, prefilled=prefilled).run()


def test_prefilled_first_token_comes_with_first_decode_iteration():
    w = poisson_workload(1, 1.0, 4000, 50)
    a = _sim(w, None)
    b = _sim(w, np.ones(1, bool))
    ttft_a = a.first_tok[0] - w.arrival_s[0]
    ttft_b = b.first_tok[0] - w.arrival_s[0]
    assert ttft_b < ttft_a / 5            # one decode iteration, not a 4000-token prefill
    assert 0 < ttft_b < 0.05
    assert b.out_done[0] == 50 and np.isfinite(b.finish[0])
    # the decode phase itself is unchanged: same per-token time within 10 %
    tpot_a = (a.finish[0] - a.first_tok[0]) / 49
    tpot_b = (b.finish[0] - b.first_tok[0]) / 49
    assert tpot_b == pytest.approx(tpot_a, rel=0.1)
    assert b.tel.flops < a.tel.flops / 2


@pytest.mark.parametrize("knobs", [{}, {"batching": "continuous"}, {"preemption": "request"},
                                   {"preemption_mode": "swap"}])
def test_prefilled_mix_under_pressure_keeps_invariants(knobs):
    w = poisson_workload(300, 40.0, (200, 3000), (1, 400), seed=3)
    pf = np.random.default_rng(0).random(w.n) < 0.5
    dep = H100_8B
    res = SimBackend(check=True).run(Policy(gpu_memory_utilization=0.3, **knobs), w, dep, prefilled=pf)
    rec = res.records
    done = rec["finish_s"].notna().to_numpy()
    assert done.sum() + rec["failed"].sum() == w.n
    ttft = (rec["first_token_s"] - rec["arrival_s"]).to_numpy()
    assert np.all(np.isfinite(ttft[done])) and np.all(ttft[done] > 0)
    assert np.all(rec["finish_s"].to_numpy()[done] >= rec["first_token_s"].to_numpy()[done])
    assert np.median(ttft[done & pf]) < np.median(ttft[done & ~pf])
    # deterministic
    again = SimBackend(check=True).run(Policy(gpu_memory_utilization=0.3, **knobs), w, dep, prefilled=pf)
    assert np.array_equal(again.records["finish_s"].to_numpy(), rec["finish_s"].to_numpy(), equal_nan=True)


def test_prefilled_wrong_shape_is_an_error():
    w = poisson_workload(3, 1.0, 100, 10)
    with pytest.raises(ValueError, match="prefilled"):
        Simulation(Policy(), w, H100_8B, prefilled=np.ones(2, bool))


def test_prefilled_request_paged_out_before_its_first_decode_comes_back_to_decode():
    """A prefilled request preempted (paged out to the CPU tier) before its first decode step
    came back as a 'prefill' with nothing left to compute: never sampled, its KV held for good,
    and the instance livelocked (found by a random-policy run of a disaggregated study; 8 of these
    60 requests never finished). It must rejoin the decoding pool and sample its first token."""
    from backends.base import Deployment

    w = poisson_workload(60, 4.0, (3000, 6000), (300, 800), seed=3)
    sim = Simulation(Policy(gpu_memory_utilization=0.5, cpu_offload_gb=32), w,
                     Deployment("llama-3.1-8b", "a100-40gb", engine="vllm-v0"),  # pages victims out (vLLM V1 does not)
                     check=True, prefilled=np.ones(w.n, bool), max_sim_time_s=3000).run()
    assert sim.c_paged > 0 and sim.stopped == 0
    assert np.isfinite(sim.finish).all() and (sim.out_done == w.output_len).all()
    assert np.isfinite(sim.first_tok).all() and (sim.first_tok <= sim.finish).all()


def test_a_run_that_samples_nothing_for_too_long_is_a_livelock_not_a_result():
    """The guard that turned the livelock above into an error instead of a trial that never
    ends: a stretch of iterations sampling no token longer than ``stall_limit`` raises. A
    4000-token prompt at a 256-token budget is 16 such iterations: fine at 16, an error at 10."""
    from backends.sim.engine import SimInvariantError

    w = poisson_workload(1, 1.0, 4000, 5)
    ok = Simulation(Policy(max_num_batched_tokens=256), w, H100_8B, check=True)
    ok.stall_limit = 16
    assert np.isfinite(ok.run().finish[0])
    bad = Simulation(Policy(max_num_batched_tokens=256), w, H100_8B, check=True)
    bad.stall_limit = 10
    with pytest.raises(SimInvariantError, match="no token sampled in 10 iterations"):
        bad.run()
