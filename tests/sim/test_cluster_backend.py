"""SimBackend.run serves policies that need several instances on the cluster simulator."""

from __future__ import annotations

import pytest
from simkit import poisson_workload

from backends.base import Deployment
from backends.sim import SimBackend, effective_policy, simulate
from tuner.policy import Policy

DEP4 = Deployment("llama-3.1-8b", "h100", n_gpus=4)


def test_backend_dispatches_to_the_cluster():
    w = poisson_workload(80, 20, (100, 800), (10, 60))
    res = SimBackend().run(Policy(routing="least_loaded"), w, DEP4)  # replicas=0 -> 4 instances
    assert set(res.records["replica"]) == {0, 1, 2, 3} and res.meta["instances"] == "4"
    assert res.policy.routing == "least_loaded" and not any("not simulated yet" in n for n in res.notes)
    dis = SimBackend().run(Policy(disaggregated=True, prefill_instances=2, decode_instances=2), w, DEP4)
    assert dis.policy.disaggregated and dis.telemetry.counters["disaggregated_requests"] == w.n
    one = SimBackend().run(Policy(tp=4), w, DEP4)  # one instance fills the node
    assert set(one.records["replica"]) == {0} and "instances" not in one.meta
    with pytest.raises(ValueError, match="replicas=8 x tp=1 need 8 GPUs"):
        SimBackend().run(Policy(replicas=8), w, DEP4)
    with pytest.raises(ValueError, match="need one instance"):
        SimBackend().run(Policy(), w, DEP4, max_sim_time_s=1.0)


def test_effective_policy_keeps_cluster_knobs_but_simulate_serves_one_instance():
    p = Policy(routing="least_loaded", migration=True, disaggregated=True)
    eff, notes = effective_policy(p)
    assert eff.routing == "least_loaded" and eff.migration and not eff.disaggregated
    assert notes == ("disaggregated=True: simulate() serves one instance (SimBackend.run serves the cluster); "
                     "ran with False",)
    w = poisson_workload(20, 5, 200, 20)
    assert simulate(p, w, Deployment("llama-3.1-8b", "h100")).policy == eff
