"""Async scheduling (``EnginePreset.schedule_ahead``): the engine plans step k+1 when step k
starts, so a request arriving while the engine is busy waits for the step in flight and one more."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from backends.base import Deployment
from backends.sim import engines
from backends.sim.engine import Simulation
from tuner.policy import Policy
from workloads.workload import build_workload

DEP = Deployment("llama-3.1-8b", "h100")


def _run(ahead: bool, arrivals, prompts, outputs, monkeypatch) -> Simulation:
    monkeypatch.setitem(engines.ENGINES, "vllm-v1",
                        dataclasses.replace(engines.ENGINES["vllm-v1"], schedule_ahead=ahead))
    w = build_workload("ahead", np.asarray(arrivals, float), np.asarray(prompts), np.asarray(outputs))
    return Simulation(Policy(max_num_batched_tokens=2048, prefix_caching=False), w, DEP, check=True).run()


def test_busy_engine_admits_an_arrival_one_step_later(monkeypatch):
    """A 2,500-token prompt takes two steps (2,048 + 452 tokens). A short request arriving during
    the first step shares the second step without async scheduling (both first tokens at its
    end); with it, its batch was fixed when step one started, so it computes in step three."""
    args = ([0.0, 1e-4], [2500, 100], [50, 5])
    sync = _run(False, *args, monkeypatch=monkeypatch)
    ahead = _run(True, *args, monkeypatch=monkeypatch)
    assert sync.first_tok[1] == pytest.approx(sync.first_tok[0], rel=1e-12)
    assert ahead.first_tok[0] <= sync.first_tok[0]  # the long prompt is not delayed (step two lacks B)
    extra = ahead.first_tok[1] - ahead.first_tok[0]
    assert 0 < extra < 0.3 * ahead.first_tok[0]  # one more (short) step


def test_idle_engine_schedules_an_arrival_at_once(monkeypatch):
    """Requests arriving one by one to an idle engine see the same times either way."""
    args = ([0.0, 5.0, 10.0], [500, 900, 1500], [20, 30, 40])
    sync = _run(False, *args, monkeypatch=monkeypatch)
    ahead = _run(True, *args, monkeypatch=monkeypatch)
    np.testing.assert_allclose(ahead.first_tok, sync.first_tok, rtol=1e-12)
    np.testing.assert_allclose(ahead.finish, sync.finish, rtol=1e-12)


def test_arrivals_during_decode_segments_join_the_step_after_next(monkeypatch):
    """While a fixed batch decodes (closed-form segments), every later arrival's first token
    comes one decode step later with async scheduling than without, and closed form equals
    step-by-step."""
    rng = np.random.default_rng(3)
    arr = np.concatenate([[0.0] * 4, 0.5 + np.cumsum(rng.exponential(0.2, 6))])
    args = (arr, [300] * 10, [400] * 4 + [3] * 6)
    sync = _run(False, *args, monkeypatch=monkeypatch)
    ahead = _run(True, *args, monkeypatch=monkeypatch)
    later = ahead.first_tok[4:] - sync.first_tok[4:]
    assert (later > 0).all() and (later < 0.05).all()  # ~ one decode step (a few ms), not more
    w = build_workload("ahead", arr, np.asarray(args[1]), np.asarray(args[2]))
    slow = Simulation(Policy(max_num_batched_tokens=2048, prefix_caching=False), w, DEP, segment_cap=1,
                      check=True).run()
    np.testing.assert_allclose(ahead.first_tok, slow.first_tok, rtol=1e-9)
    np.testing.assert_allclose(ahead.finish, slow.finish, rtol=1e-9)


def test_a_finished_requests_seat_frees_one_plan_later(monkeypatch):
    """Two seats, three requests at once: C waits for A's seat. With async scheduling the plan
    of the step after A's last one was made while that step ran, with A still seated, so C is
    admitted one (decode) step later than at a synchronous step boundary; closed form equals
    step-by-step."""
    args = ([0.0, 0.0, 0.0], [200, 200, 200], [20, 60, 10])

    def run(ahead: bool, **kw) -> Simulation:
        monkeypatch.setitem(engines.ENGINES, "vllm-v1",
                            dataclasses.replace(engines.ENGINES["vllm-v1"], schedule_ahead=ahead))
        w = build_workload("seats", np.asarray(args[0]), np.asarray(args[1]), np.asarray(args[2]))
        return Simulation(Policy(max_num_batched_tokens=2048, max_num_seqs=2, prefix_caching=False), w, DEP,
                          check=True, **kw).run()

    sync, ahead = run(False), run(True)
    decode_step = (sync.finish[0] - sync.first_tok[0]) / 19  # A's 19 decode steps, s
    wait_sync = sync.first_tok[2] - sync.finish[0]
    wait_ahead = ahead.first_tok[2] - ahead.finish[0]
    assert wait_ahead - wait_sync == pytest.approx(decode_step, rel=0.2)
    slow = run(True, segment_cap=1)
    np.testing.assert_allclose(ahead.first_tok, slow.first_tok, rtol=1e-9)
    np.testing.assert_allclose(ahead.finish, slow.finish, rtol=1e-9)


def test_speculative_decoding_plans_at_the_step_boundary(monkeypatch):
    """n-gram / draft speculation turn async scheduling off (vLLM keeps it only for EAGLE-style
    drafts): a busy engine admits an arrival at the next step boundary, as without schedule_ahead."""
    monkeypatch.setitem(engines.ENGINES, "vllm-v1", dataclasses.replace(engines.ENGINES["vllm-v1"], schedule_ahead=True))
    w = build_workload("ahead", np.asarray([0.0, 1e-4]), np.asarray([2500, 100]), np.asarray([50, 5]))
    pol = Policy(max_num_batched_tokens=2048, prefix_caching=False, speculation="ngram")
    sim = Simulation(pol, w, DEP, check=True).run()
    assert not sim.ahead
    assert sim.first_tok[1] == pytest.approx(sim.first_tok[0], rel=1e-12)  # B shares A's second step


def test_seats_held_by_the_last_steps_finishers_never_fail_the_queue(monkeypatch):
    """Two seats, both requests finish in the same step while two more wait: the plan made during
    that step sees no free seat, and with nothing else to run the engine plans again once they
    have left (no waiting request is declared unservable)."""
    monkeypatch.setitem(engines.ENGINES, "vllm-v1", dataclasses.replace(engines.ENGINES["vllm-v1"], schedule_ahead=True))
    w = build_workload("seats", np.zeros(4), np.full(4, 200), np.full(4, 30))
    sim = Simulation(Policy(max_num_batched_tokens=2048, max_num_seqs=2, prefix_caching=False), w, DEP,
                     check=True).run()
    assert not sim.failed.any() and np.isfinite(sim.finish).all()
    assert sim.first_tok[2] > sim.finish[0]  # the second pair started after the first left


def test_a_finished_requests_kv_blocks_free_one_plan_later(monkeypatch):
    """KV-bound, seats free: three 14,000-token prompts where two fit the KV pool. The plan made
    while A's last step ran still counted A's blocks, so whatever waited for them starts about one
    decode step later with async scheduling than at a synchronous step boundary; closed form
    equals step by step."""
    dep = Deployment("llama-3.1-8b", "h100", max_model_len=16384)
    pol = Policy(max_num_batched_tokens=8192, gpu_memory_utilization=0.27, prefix_caching=False)
    w = build_workload("kv", np.array([0.0, 0.0, 0.001]), np.full(3, 14000), np.array([100, 400, 50]))

    def run(ahead: bool, **kw) -> Simulation:
        monkeypatch.setitem(engines.ENGINES, "vllm-v1",
                            dataclasses.replace(engines.ENGINES["vllm-v1"], schedule_ahead=ahead))
        return Simulation(pol, w, dep, check=True, **kw).run()

    sync, ahead = run(False), run(True)
    assert sync.mem.total * 16 < 3 * 14000  # two prompts fit, three do not
    decode_step = (sync.finish[1] - sync.first_tok[1]) / 399
    later = (ahead.first_tok[2] - ahead.finish[0]) - (sync.first_tok[2] - sync.finish[0])
    assert 0.5 * decode_step < later < 1.5 * decode_step
    slow = run(True, segment_cap=1)
    np.testing.assert_allclose(ahead.first_tok, slow.first_tok, rtol=1e-9)
    np.testing.assert_allclose(ahead.finish, slow.finish, rtol=1e-9)
