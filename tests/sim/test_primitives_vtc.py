"""VTC fairness (queue=vtc, backends/sim/fairness.py): bounded service gaps, shares, caps, exact counters."""

from __future__ import annotations

import numpy as np
import pytest

from backends.base import Deployment
from backends.sim import effective_policy, simulate
from backends.sim.engine import Simulation
from backends.sim.fairness import CAP_BURST_S, VTCQueue
from backends.sim.queue import FCFSQueue
from backends.sim.request_state import DecodePool
from tests.sim.simkit import H100_8B, poisson_workload, run
from tuner.policy import Policy
from tuner.scorecard import score
from tuner.space import applies
from workloads import load_workload
from workloads.transforms import scale_to_rate

LMSYS_SEATS = 16  # a seat-bound instance: the queue, not the batch, decides who is served


@pytest.fixture(scope="module")
def lmsys():
    """The VTC paper's LMSYS trace (1,500 requests, 27 skewed tenants) at 10 req/s: with 16 seats
    an 8B model on one H100 serves ~6 req/s, so queues build for minutes."""
    return scale_to_rate(load_workload("vtc-lmsys"), 10.0)


def two_tenants(n: int = 2000, rate: float = 40.0, **kw):
    """Tenants a and b, interleaved, together 40 req/s: far past what 16 seats serve (~15 req/s)."""
    return poisson_workload(n, rate, (100, 400), (50, 300), seed=3, tenant=np.array(["a", "b"] * (n // 2)), **kw)


def tenant_service(sim: Simulation, w) -> list[float]:
    """Weighted service (prompt + 2 × output tokens) of the requests each tenant got finished."""
    ok = np.isfinite(sim.finish)
    return [float((w.prompt_len[ok & (w.tenant == u)] + 2 * w.output_len[ok & (w.tenant == u)]).sum())
            for u in range(len(w.tenants))]


def test_vtc_bounds_the_service_gap_that_fcfs_lets_grow_on_lmsys(lmsys):
    _, fcfs = run(lmsys, check=False, max_num_seqs=LMSYS_SEATS)
    res, vtc = run(lmsys, check=False, max_num_seqs=LMSYS_SEATS, queue="vtc")
    assert not any("queue" in n or "tenant" in n for n in res.notes)  # nothing fell back
    biggest = float((lmsys.prompt_len + 2 * lmsys.output_len).max())  # one request's service
    assert fcfs.max_service_diff > 30 * biggest  # FCFS: the busiest tenants pull far ahead
    assert vtc.max_service_diff < 4 * biggest  # VTC: a few requests' worth, whatever the backlog
    assert vtc.max_service_diff < 0.1 * fcfs.max_service_diff
    assert vtc.jain_index > fcfs.jain_index + 0.2
    assert vtc.throughput_tok_s == pytest.approx(fcfs.throughput_tok_s, rel=0.02)  # fairness costs no throughput


def test_counters_are_exact_at_every_admission_through_preemption_swap_and_speculation(lmsys):
    w = scale_to_rate(lmsys.take(np.arange(400)), 40.0)
    dep = Deployment("llama-3.1-8b", "l40s")
    for knobs in ({"gpu_memory_utilization": 0.45},  # KV pressure: recompute preemptions
                  {"gpu_memory_utilization": 0.45, "preemption_mode": "swap"},
                  {"speculation": "ngram", "batching": "continuous"},
                  {"preemption": "request", "max_num_seqs": 8}):
        sim = Simulation(Policy(queue="vtc", vtc_output_weight=3.0, **knobs), w, dep, check=True)
        checked = []

        class Checked:  # the queue, recounting every tenant's output tokens before each admission
            def __init__(self, q: VTCQueue) -> None:
                self.q = q

            def __getattr__(self, name):
                return getattr(self.q, name)

            def __len__(self) -> int:
                return len(self.q)

            def pop(self, sim=sim, checked=checked):
                out = np.zeros(len(w.tenants), np.int64)
                done = np.isfinite(sim.finish) | sim.failed
                np.add.at(out, w.tenant[done], sim.out_done[done])
                for r in [*sim.prefilling, *sim.swapped, *self.q.front]:
                    out[w.tenant[r.rid]] += r.gen
                for m in sim.pool.members():
                    out[w.tenant[m.rid]] += m.out - (m.fin_g - sim.pool.g)
                assert [sim.fair.output_tokens(u) for u in range(len(w.tenants))] == out.tolist()
                checked.append(1)
                return self.q.pop()

        sim.waiting = Checked(sim.waiting)  # (a wrapper, not a subclass: it works on the compiled engine too)
        sim.run()
        assert len(checked) >= w.n and (sim.c_preempt > 0 or "gpu_memory_utilization" not in knobs)
        assert sim.c_swapped > 0 or knobs.get("preemption_mode") != "swap"
        ok = ~sim.failed
        for u in range(len(w.tenants)):  # at the end: every prompt once, every output token once
            m = ok & (w.tenant == u)
            want = 1.0 * w.prompt_len[m].sum() + 3.0 * w.output_len[m].sum()
            assert sim.fair.service(u) == pytest.approx(want), (knobs, u)


def test_tenant_weights_two_to_one_give_two_to_one_service():
    w = two_tenants()
    served = {}
    for q, weights in (("fcfs", ()), ("vtc", ()), ("vtc", (("a", 2.0),)), ("vtc", (("a", 2.0), ("b", 1.0)))):
        sim = Simulation(Policy(queue=q, max_num_seqs=16, tenant_weights=weights), w, H100_8B,
                         max_sim_time_s=30.0).run()  # both tenants backlogged throughout
        a, b = tenant_service(sim, w)
        served[q, weights] = a / b
    assert served["vtc", ()] == pytest.approx(1.0, abs=0.05)
    assert served["vtc", (("a", 2.0),)] == pytest.approx(2.0, rel=0.08)
    assert served["vtc", (("a", 2.0), ("b", 1.0))] == served["vtc", (("a", 2.0),)]  # missing = 1
    assert effective_policy(Policy(tenant_weights=(("a", 2.0),)))[0].tenant_weights == ()  # fcfs: no shares


def test_a_newly_backlogged_tenant_is_lifted_and_banks_no_credit():
    # a floods from t=0; b floods from t=15 s. Unlifted, b's counter (0) would win every seat
    # until it caught up with a's 15 s of service; lifted, the two share from t=15 s on.
    n = 1200
    arr = np.r_[np.linspace(0.0, 30.0, n // 2), np.linspace(15.0, 30.0, n // 2)]
    w = poisson_workload(n, 1.0, 300, 150, tenant=np.array(["a"] * (n // 2) + ["b"] * (n // 2)))
    w = w.replace(arrival_s=np.sort(arr), tenant=w.tenant[np.argsort(arr, kind="stable")])
    pol = Policy(queue="vtc", max_num_seqs=16)
    at15 = Simulation(pol, w, H100_8B, max_sim_time_s=15.0).run().fair.service(0)
    end = Simulation(pol, w, H100_8B, max_sim_time_s=30.0).run().fair
    gain_a, gain_b = end.service(0) - at15, end.service(1)
    assert at15 > 50_000 and gain_b == pytest.approx(gain_a, rel=0.1)


def test_tenant_cap_holds_a_tenant_to_its_rate_while_others_wait():
    w = two_tenants()
    pol = Policy(queue="vtc", max_num_seqs=16, tenant_weights=(("a", 4.0),))
    free = Simulation(pol, w, H100_8B, max_sim_time_s=30.0).run().fair
    cap = 4000.0  # weighted tokens/s: below a's 4/5 share, above b's remaining share
    capped = Simulation(pol.replace(tenant_cap_tokens_s=cap), w, H100_8B, max_sim_time_s=30.0).run()
    t = capped.t
    assert free.service(0) > 1.4 * cap * t  # uncapped, a gets ~4/5 of the instance
    assert capped.fair.service(0) <= cap * (t + CAP_BURST_S) + 2 * 2 * 700  # + requests already running
    assert capped.fair.service(0) > 0.9 * cap * t
    assert capped.fair.service(1) > 1.5 * free.service(1)  # b takes what a may not
    # work-conserving: a cap below both tenants' shares still keeps the instance busy
    both = Simulation(pol.replace(tenant_cap_tokens_s=500.0), w, H100_8B, max_sim_time_s=30.0).run().fair
    assert both.service(0) + both.service(1) == pytest.approx(free.service(0) + free.service(1), rel=0.05)


def test_vtc_is_deterministic_for_a_seed(lmsys):
    pol = Policy(queue="vtc", max_num_seqs=LMSYS_SEATS, tenant_weights=((lmsys.tenants[0], 3.0),),
                 tenant_cap_tokens_s=1500.0)
    a = simulate(pol, lmsys, H100_8B, seed=7).records
    b = simulate(pol, lmsys, H100_8B, seed=7).records
    assert a.equals(b)


def test_default_policy_pays_nothing_for_fairness(lmsys):
    sim = Simulation(Policy(), lmsys, H100_8B)
    assert sim.fair is None and type(sim.pool) is DecodePool and type(sim.waiting) is FCFSQueue
    assert type(Simulation(Policy(queue="vtc"), lmsys, H100_8B).waiting) is VTCQueue
    eff, notes = effective_policy(Policy(tenant_cap_tokens_s=100.0))
    assert eff.tenant_cap_tokens_s == 0.0 and notes == ("tenant_cap_tokens_s=100.0 applies to queue=vtc only; "
                                                        "ran with 0.0",)
    assert not applies("tenant_cap_tokens_s", Policy().to_dict())  # searched only with queue=vtc
    assert applies("tenant_cap_tokens_s", Policy(queue="vtc").to_dict())
    keep = Policy(queue="vtc", tenant_cap_tokens_s=100.0, tenant_weights=(("x", 2.0),))
    assert effective_policy(keep) == (keep, ())
    # a single tenant: VTC is FCFS
    w = poisson_workload(300, 30.0, (50, 500), (20, 200), seed=2)
    assert simulate(Policy(queue="vtc"), w, H100_8B).records.equals(simulate(Policy(), w, H100_8B).records)
    assert score(simulate(Policy(queue="vtc"), w, H100_8B), w).jain_index == 1.0


def test_vtc_with_lora_slots_keeps_fairness_and_sets_requests_aside_uncharged():
    """Requests whose adapter has no slot are set aside and put back in place (pop_entry /
    restore): every request finishes and the counters stay exact (check=True recounts them)."""
    from workloads.adapters import assign_adapters

    w = assign_adapters(two_tenants(600), 8, seed=0)
    res, _ = run(w, max_num_seqs=16, queue="vtc", max_loras=2, tenant_weights=(("a", 2.0), ("b", 1.0)))
    assert res.records["finish_s"].notna().all()
    assert res.telemetry.counters["lora_loads"] > 0
