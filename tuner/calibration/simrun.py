"""Run the simulator with a given cost model (a fitted ``ProfiledCostModel`` or any CostModel-like).

The simulator picks its own cost model (``backends.sim.profiled.instance_cost_model``, from
``Deployment.profile``); ``simulate_with`` builds a ``Simulation`` and swaps in ``cost_model``
(and the admission controller that uses it) before the run, to evaluate a candidate fit;
nothing global is touched.
"""

from __future__ import annotations

from backends.base import Deployment, RunResult
from tuner.policy import Policy
from workloads.workload import Workload


def simulate_with(cost_model, policy: Policy, workload: Workload, deployment: Deployment, *, seed: int = 0,
                  max_sim_time_s: float | None = None, lag_steps: float = 0.0, lag_s: float = 0.0) -> RunResult:
    """``backends.sim.simulate`` with ``cost_model`` in place of the default roofline.

    ``lag_steps``: steps of client-visible latency the engine loop does not model, added to each
    request's first-token and finish times as ``lag_steps`` × the request's own time per output
    token (≈ the step time around it): output processing, detokenisation and streaming in vLLM's
    API server process. (The step an arrival waits because vLLM V1 plans step N+1 when step N
    starts is in the loop: ``EnginePreset.schedule_ahead``.) ``lag_s``: a fixed client-visible
    latency per request, s (HTTP, tokenisation; large on a busy CPU host). Both are fitted from
    real runs (``engine_fit``, ``live``); 0 = the simulator's own times. (This path adds only the lag
    given here, not the engine preset's ``client_lag_steps`` that ``simulate`` adds.)
    A policy of several replicas (vLLM data parallelism) runs through
    ``backends.sim.scaling.simulate_replicated``, every replica priced by ``cost_model``."""
    from backends.sim import effective_policy
    from backends.sim.client_lag import with_client_lag
    from backends.sim.cluster import needs_cluster
    from backends.sim.engine import Simulation
    from backends.sim.scaling import simulate_replicated
    from backends.sim.telemetry import build_result

    if needs_cluster(policy, deployment):  # replicas (vLLM data parallelism): backends/sim/scaling.py
        if (policy.disaggregated or policy.autoscale or policy.spot_fraction or policy.migration
                or max_sim_time_s is not None):
            raise ValueError("simulate_with: replicas only (no disaggregation, autoscaling, spot, migration, "
                             "time limit)")
        res = simulate_replicated(policy, workload, deployment, seed=seed, cost_model=cost_model)
        return with_client_lag(res, lag_steps, lag_s)
    eff, notes = effective_policy(policy, workload)
    sim = Simulation(eff, workload, deployment, seed=seed, max_sim_time_s=max_sim_time_s)
    if cost_model is not None:
        sim.use_cost_model(cost_model)
    sim.run()
    return with_client_lag(build_result(sim, eff, notes), lag_steps, lag_s)


__all__ = ["simulate_with"]
