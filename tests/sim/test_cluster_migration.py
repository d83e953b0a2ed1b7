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
