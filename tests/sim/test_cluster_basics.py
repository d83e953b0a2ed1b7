"""The cluster simulator's plumbing: GPU accounting, routing, record merging, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
from simkit import poisson_workload

from backends.base import RECORD_COLUMNS, Deployment
from backends.sim import simulate
from backends.sim.cluster import check_gpus, merge_timelines, needs_cluster, simulate_cluster
from backends.sim.costmodel import CostModel
from backends.sim.router import FluidRouter, instance_drain
from tuner.policy import Policy
from tuner.scorecard import score
from workloads.workload import build_workload

DEP4 = Deployment("llama-3.1-8b", "h100", n_gpus=4)


@pytest.fixture(scope="module")
def w():
    return poisson_workload(300, 30, (100, 1500), (20, 200), seed=7)


def test_gpus_must_add_up():
    with pytest.raises(ValueError, match=r"replicas=3 x tp=2 need 6 GPUs.*n_gpus=4"):
        check_gpus(Policy(replicas=3, tp=2), DEP4)
    with pytest.raises(ValueError, match=r"prefill_instances=2 x prefill_tp=2 \+ decode_instances=1 x decode_tp=1 need 5"):
        check_gpus(Policy(disaggregated=True, prefill_instances=2, prefill_tp=2, decode_instances=1), DEP4)
    with pytest.raises(ValueError, match=r"autoscale_max_replicas=8 x tp=1 need 8 GPUs"):
        check_gpus(Policy(autoscale=True, autoscale_max_replicas=8), DEP4)
    check_gpus(Policy(replicas=2, tp=2), DEP4)  # fits


@pytest.mark.parametrize("replicas", [2, 4])
def test_prefix_affinity_spreads_groups_and_keeps_each_on_one_replica(replicas):
    """40 prefix groups whose block ids are multiples of 1000 (a multiplicative hash modulo the
    replica count sent every one of them to replica 0): each group stays on one replica, and
    the groups spread over all of them."""
    rng = np.random.default_rng(4)
    n = 400
    g = rng.integers(0, 40, n)
    w = build_workload("groups", np.cumsum(rng.exponential(0.05, n)), np.full(n, 600), np.full(n, 20),
                       prefix_blocks=[[int(gi) * 1000 + k for k in range(4)] for gi in g], prefix_block_tokens=128)
    res = simulate_cluster(Policy(replicas=replicas, routing="prefix_affinity"), w, DEP4)
    rep = res.records["replica"].to_numpy()
    assert all(len(set(rep[g == gi])) == 1 for gi in np.unique(g))
    per_replica = np.bincount([rep[g == gi][0] for gi in np.unique(g)], minlength=replicas)
    assert per_replica.min() >= 40 / replicas / 3


def test_needs_cluster():
    assert needs_cluster(Policy(), DEP4)  # replicas=0 -> 4 instances of tp=1
    assert not needs_cluster(Policy(tp=4), DEP4)
    assert not needs_cluster(Policy(), Deployment("llama-3.1-8b", "h100"))
    assert needs_cluster(Policy(spot_fraction=0.5), Deployment("llama-3.1-8b", "h100"))


@pytest.mark.parametrize("routing", ["round_robin", "least_loaded", "prefix_affinity"])
def test_every_request_served_once_on_some_replica(w, routing):
    res = simulate_cluster(Policy(replicas=4, routing=routing), w, DEP4, seed=3)
    rec = res.records
    assert set(RECORD_COLUMNS) <= set(rec.columns)
    assert rec["req_id"].tolist() == list(range(w.n))
    assert np.isfinite(rec["finish_s"]).all() and (rec["output_len"].to_numpy() == w.output_len).all()
    assert set(rec["replica"]) <= {0, 1, 2, 3}
    assert (rec["first_token_s"] >= rec["arrival_s"]).all() and (rec["finish_s"] >= rec["first_token_s"]).all()
    if routing != "prefix_affinity":  # no prefix blocks: prefix_affinity falls back to round robin
        counts = np.bincount(rec["replica"], minlength=4)
        assert counts.min() > w.n / 8
    tel = res.telemetry
    assert tel.n_gpus == 4 and tel.counters["gpu_seconds"] == pytest.approx(4 * tel.makespan_s)
    assert tel.counters["iterations"] > 0 and tel.busy_s > 0


def test_round_robin_replicas_match_single_instance_runs(w):
    """Round robin over 2 replicas = two single-instance runs over alternate requests."""
    dep2 = Deployment("llama-3.1-8b", "h100", n_gpus=2)
    res = simulate_cluster(Policy(replicas=2), w, dep2, seed=0)
    one = simulate(Policy(), w.take(np.arange(0, w.n, 2)), Deployment("llama-3.1-8b", "h100"))
    got = res.records.iloc[0::2]
    assert np.allclose(got["finish_s"].to_numpy(), one.records["finish_s"].to_numpy())
    assert (got["replica"] == 0).all() and (res.records.iloc[1::2]["replica"] == 1).all()


def test_deterministic_for_a_seed(w):
    p = Policy(replicas=4, routing="least_loaded", spot_fraction=0.5, spot_interruptions_per_hour=3600)
    a, b = simulate_cluster(p, w, DEP4, seed=11), simulate_cluster(p, w, DEP4, seed=11)
    assert a.records.equals(b.records)
    assert a.telemetry.interruptions == b.telemetry.interruptions > 0
    c = a.telemetry.counters
    assert c["spot_migrated_requests"] + c["spot_restarted_requests"] > 0
    assert c["spot_gpu_seconds"] > 0 and 0 < a.telemetry.spot_fraction < 1
    assert np.isfinite(a.records["finish_s"]).all()  # every cut request finished elsewhere


def test_least_loaded_balances_uneven_requests():
    # every 4th request is huge: round robin puts them all on one replica, least_loaded spreads them
    n = 200
    prompt = np.where(np.arange(n) % 4 == 0, 8000, 100)
    w = build_workload("skew", np.arange(n) * 0.02, prompt, np.full(n, 50))
    rr = score(simulate_cluster(Policy(replicas=4), w, DEP4), w)
    ll = score(simulate_cluster(Policy(replicas=4, routing="least_loaded"), w, DEP4), w)
    assert ll.ttft_p99_ms < rr.ttft_p99_ms


def test_router_fluid_estimate_drains():
    w = poisson_workload(50, 10, 1000, 100)
    d = instance_drain(Policy(), CostModel.for_deployment(DEP4, 1), w)
    assert d.rate > 1000 and d.batch >= 1
    r = FluidRouter("least_loaded", w, [d, d])
    assert r.route(0, 0.0, [0, 1]) == 0 and r.route(1, 0.0, [0, 1]) == 1
    assert r.load(0, 0.0) == pytest.approx(r.tokens(0))
    assert r.load(0, 1e6) == 0.0 and r.backlog_s(0, 0.0) == pytest.approx(r.tokens(0) / d.rate)


def test_timeline_merge_means_kv_and_sums_queues():
    import pandas as pd

    a = pd.DataFrame({"t_s": [0.0, 2.0], "kv_used_frac": [0.2, 0.4], "running": [1, 2], "waiting": [0, 1],
                      "batch_tokens": [10, 20]})
    b = pd.DataFrame({"t_s": [1.0], "kv_used_frac": [0.6], "running": [3], "waiting": [2], "batch_tokens": [5]})
    m = merge_timelines([a, b, None])
    assert m["t_s"].tolist() == [0.0, 1.0, 2.0]
    assert m["kv_used_frac"].tolist() == pytest.approx([0.2, 0.4, 0.5])
    assert m["running"].tolist() == [1, 4, 5]


def test_cluster_scorecard_is_finite(w):
    s = score(simulate_cluster(Policy(replicas=2, tp=2), w, DEP4), w)
    for k in ("ttft_p99_ms", "throughput_tok_s", "mfu", "usd_per_1m_tokens", "kv_util_mean", "busy_frac"):
        assert math.isfinite(getattr(s, k)), k


def test_result_policy_is_the_cluster_policy_in_force(w):
    p = Policy(disaggregated=True, prefill_instances=1, decode_instances=3, autoscale=True, routing="least_loaded")
    res = simulate_cluster(p, w, DEP4)
    assert res.policy.disaggregated and res.policy.decode_instances == 3 and res.policy.routing == "least_loaded"
    assert not res.policy.autoscale and any(n.startswith("autoscale=True not simulated") for n in res.notes)
    assert res.meta["instances"] == "4"
    c = res.telemetry.counters
    assert c["disaggregated_requests"] == w.n and c["kv_transfer_bytes"] > 0


def test_replicas_zero_uses_every_gpu_at_this_tp(w):
    res = simulate_cluster(Policy(tp=2), w, DEP4)
    assert set(res.records["replica"]) == {0, 1} and res.telemetry.n_gpus == 4


def test_disagg_min_queue_disaggregates_only_under_decode_backlog():
    calm = poisson_workload(100, 1, 2000, 50, seed=2)
    busy = poisson_workload(300, 80, 2000, 400, seed=2)
    p = Policy(disaggregated=True, prefill_instances=1, decode_instances=1, disagg_min_queue=4)
    assert simulate_cluster(p, calm, DEP4).telemetry.counters["disaggregated_requests"] == 0
    c = simulate_cluster(p, busy, DEP4).telemetry.counters
    assert 0 < c["disaggregated_requests"] < busy.n


def test_autoscale_retires_replicas_when_load_falls():
    n1, n2 = 1500, 60
    arr = np.r_[np.sort(np.random.default_rng(1).uniform(0, 20, n1)), 20 + np.arange(n2) * 2.0]
    w = build_workload("drop", arr, np.full(n1 + n2, 1000), np.full(n1 + n2, 200))
    res = simulate_cluster(Policy(autoscale=True, cold_start_s=5, autoscale_queue_per_replica=8), w, DEP4)
    c, mk = res.telemetry.counters, res.telemetry.makespan_s
    assert c["instances_started"] >= 2
    assert c["gpu_seconds"] < 0.8 * c["instances_started"] * mk  # retired replicas stop costing
    assert np.isfinite(res.records["finish_s"]).all()
