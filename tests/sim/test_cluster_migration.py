"""Live migration of running requests (Llumnix): on a workload built to unbalance round robin,
moving decoding requests with their KV cuts the tail; a very slow link makes it help less;
tokens are conserved across a request's pieces; runs are deterministic."""

from __future__ import annotations

import numpy as np
import pytest

from backends.base import Deployment
from backends.sim.cluster import simulate_cluster
from tuner.policy import Policy
from tuner.scorecard import score
from workloads.workload import SLOClass, build_workload

DEP2 = Deployment("llama-3.1-8b", "h100", n_gpus=2)


@pytest.fixture(scope="module")
def imbalanced():
    """400 requests at 8 req/s; every even one decodes 1500–2500 tokens, every odd one 20–60:
    round robin over 2 replicas sends all the long decodes to replica 0."""
    rng = np.random.default_rng(7)
    n = 400
    arr = np.cumsum(rng.exponential(1 / 8, n))
    out = np.where(np.arange(n) % 2 == 0, rng.integers(1500, 2500, n), rng.integers(20, 60, n))
    return build_workload("imbalanced", arr, rng.integers(500, 1000, n), out,
                          slo_classes=(SLOClass("s", 2000, 15),))


def _run(w, **kw):
    res = simulate_cluster(Policy(replicas=2, **kw), w, DEP2)
    return res, score(res, w)


def test_live_migration_cuts_the_tail_of_an_imbalanced_round_robin(imbalanced):
    w = imbalanced
    _, off = _run(w)
    res, mig = _run(w, migration=True)
    c = res.telemetry.counters
    assert c["migrated_queued_requests"] == 0  # the router's estimate at routing sees no imbalance
    assert c["migrated_running_requests"] >= 20
    assert c["migration_kv_bytes"] > 0 and c["kv_transfer_bytes"] >= c["migration_kv_bytes"]
    assert mig.tpot_p99_ms < 0.8 * off.tpot_p99_ms
    assert mig.e2e_p99_ms < 0.8 * off.e2e_p99_ms
    assert mig.goodput_frac > off.goodput_frac
    assert any("running requests live-migrated" in n for n in res.notes)
    # both replicas finish requests now (replica 0 alone held the long decodes before)
    assert set(res.records["replica"]) == {0, 1}


def test_a_very_slow_link_makes_migration_help_less(imbalanced):
    w = imbalanced
    fast_res, fast = _run(w, migration=True)
    slow_res, slow = _run(w, migration=True, kv_link="network", network_gbps=0.1)
    assert slow_res.telemetry.counters["migration_downtime_s"] > 100 * fast_res.telemetry.counters[
        "migration_downtime_s"]
    assert slow.tpot_p99_ms > fast.tpot_p99_ms
    assert slow.e2e_p99_ms > fast.e2e_p99_ms


def test_tokens_are_conserved_across_pieces_and_runs_are_deterministic(imbalanced):
    w = imbalanced
    a, _ = _run(w, migration=True)
    b, _ = _run(w, migration=True)
    rec = a.records
    assert (rec["output_len"].to_numpy() == w.output_len).all()
    assert np.isfinite(rec["finish_s"]).all() and not rec["failed"].any()
    assert (rec["first_token_s"] <= rec["finish_s"]).all()
    assert rec.equals(b.records)
    assert a.telemetry.counters == b.telemetry.counters


def test_migration_with_spot_lives_and_without_imbalance_stays_consistent():
    """Interrupted (spot) lives run first; the others migrate among themselves; a balanced
    workload (equal outputs) migrates (almost) nothing."""
    rng = np.random.default_rng(1)
    n = 300
    w = build_workload("even", np.cumsum(rng.exponential(1 / 6, n)), rng.integers(200, 400, n),
                       np.full(n, 200))
    res, _ = _run(w, migration=True)
    assert res.telemetry.counters["migrated_running_requests"] <= 3
    dep = Deployment("llama-3.1-8b", "h100", n_gpus=4)
    spot = simulate_cluster(Policy(replicas=4, migration=True, spot_fraction=0.5, spot_interruptions_per_hour=120),
                            w, dep, seed=2)
    assert (spot.records["output_len"].to_numpy() == w.output_len).all()


def test_pausing_a_simulation_does_not_change_it_and_a_departed_request_resumes_elsewhere(imbalanced):
    """``advance`` pauses only split decode segments (same result up to float rounding);
    ``depart`` + ``inject`` hand a decoding request's remaining tokens to another instance."""
    from backends.sim.cluster import sub_workload
    from backends.sim.engine import Simulation

    w = imbalanced.take(np.arange(60))
    pol, dep = Policy(), Deployment("llama-3.1-8b", "h100", n_gpus=1)
    ref = Simulation(pol, w, dep).run()
    paused = Simulation(pol, w, dep)
    for t in np.arange(0.5, 40.0, 0.7):
        paused.advance(float(t))
    paused.run_rest()
    np.testing.assert_allclose(paused.finish, ref.finish, rtol=1e-9)
    assert (paused.out_done == ref.out_done).all()

    src = Simulation(pol, w, dep)
    src.advance(3.0)
    row = max(src.pool.members(), key=lambda r: r.rid).rid
    req = src.depart(row)
    assert req is not None and 0 < req.gen < req.out and src.depart(row) is None
    src.run_rest()
    assert src.failed[row] and src.out_done[row] == req.gen
    rids = np.array([row])
    one = sub_workload(w, rids, w.arrival_s[rids], w.prompt_len[rids], w.output_len[rids], w.max_output[rids])
    dst = Simulation(pol, one, dep, prefilled=np.ones(1, bool), n_stream=0)
    dst.inject(0, 3.1, req.prompt + req.gen, req.out - req.gen, req.max_out - req.gen)
    dst.run_rest()
    assert dst.out_done[0] + req.gen == w.output_len[row] and dst.first_tok[0] > 3.1


def test_migration_with_autoscaling_conserves_tokens(imbalanced):
    res = simulate_cluster(Policy(autoscale=True, autoscale_max_replicas=2, cold_start_s=5,
                                  autoscale_queue_per_replica=2, migration=True), imbalanced, DEP2)
    assert (res.records["output_len"].to_numpy() == imbalanced.output_len).all()


def test_migrated_requests_keep_their_lora_adapter_and_give_back_its_slot(imbalanced):
    """A request leaving a replica frees its adapter slot there and takes its adapter along: with
    4 slots for 16 adapters every request still finishes, and the destination loads adapters."""
    from workloads.adapters import assign_adapters

    w = assign_adapters(imbalanced, 16, seed=0)
    res, _ = _run(w, migration=True, max_loras=4)
    c = res.telemetry.counters
    assert c["migrated_running_requests"] >= 20
    assert res.records["finish_s"].notna().all()
    assert int(res.records["output_len"].sum()) == int(w.output_len.sum())
    assert c["lora_loads"] > 0
