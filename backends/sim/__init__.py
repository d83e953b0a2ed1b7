"""The discrete-event simulator of one LLM serving instance.

    from backends.sim import SimBackend, simulate
    result = SimBackend().run(policy, workload, deployment, seed=0)   # -> backends.base.RunResult

``RunResult.policy`` is the policy actually simulated: knobs this simulator does not model yet
are reset to their defaults, one line each in ``RunResult.notes``. ``SimBackend.run`` serves a
policy that needs several instances (replicas > 1, disaggregated pools, autoscaling, spot) on
the cluster simulator (``backends.sim.cluster``, docs/primitives.md); ``simulate`` serves one.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from backends.base import Deployment, RunResult
from tuner.policy import Policy
from workloads.workload import Workload

__all__ = ["SimBackend", "effective_policy", "simulate"]

_DEFAULTS = {f.name: f.default for f in fields(Policy)}


def effective_policy(policy: Policy, workload: Workload | None = None) -> tuple[Policy, tuple[str, ...]]:
    """The policy this simulator runs for ``policy`` and one note per knob it changed."""
    changes: dict[str, object] = {}
    notes: list[str] = []
    for k in ("replicas", "disaggregated", "autoscale", "spot_fraction"):  # simulate(): one instance
        v = getattr(policy, k)
        if (v > 1) if k == "replicas" else v:
            changes[k] = 1 if k == "replicas" else _DEFAULTS[k]
            notes.append(f"{k}={v}: simulate() serves one instance (SimBackend.run serves the cluster); "
                         f"ran with {changes[k]!r}")
    if policy.queue != "vtc":  # tenant shares and caps are VTC's (backends/sim/fairness.py)
        for k in ("tenant_weights", "tenant_cap_tokens_s"):
            v = getattr(policy, k)
            if v != _DEFAULTS[k]:
                changes[k] = _DEFAULTS[k]
                notes.append(f"{k}={v} applies to queue=vtc only; ran with {_DEFAULTS[k]!r}")
    if policy.batching == "static" and policy.preemption == "token":
        changes["preemption"] = "request"
        notes.append("batching=static reserves prompt + max_tokens per request; preemption=token ran as request")
    if workload is not None and policy.prefix_caching and workload.prefix_offsets is None:
        notes.append("prefix_caching: the workload names no prefix blocks; only a conversation's earlier turns "
                     "(multi-turn sessions) and a preempted request's own blocks can hit" if workload.has_sessions else
                     "prefix_caching: the workload names no prefix blocks; only a preempted request's own blocks can hit")
    return (policy.replace(**changes) if changes else policy), tuple(notes)


def simulate(policy: Policy, workload: Workload, deployment: Deployment, *, seed: int = 0,
             trace_path: str | Path | None = None, max_sim_time_s: float | None = None,
             check: bool = False, prefilled=None, client_lag: bool = True) -> RunResult:
    """Serve ``workload`` on one simulated instance under ``policy`` (see ``SimBackend.run``).
    ``prefilled``: bool per request, prompt KV computed elsewhere (``engine.Simulation``).
    First-token and finish times are what the client sees: the engine preset's client lag
    (``client_lag``; vllm-v1: 0.65 steps) is added to the engine's times (``client_lag=False``:
    the engine's own times, e.g. to compare with another engine simulator); a deployment with a
    calibration file (``backends.sim.calibrated``) adds that calibration's lag instead."""
    from backends.sim.client_lag import deployment_client_lag, deployment_lag
    from backends.sim.engine import Simulation
    from backends.sim.telemetry import build_result

    if policy.tp > deployment.n_gpus:
        raise ValueError(f"policy knob tp={policy.tp}: needs {policy.tp} GPUs, the deployment has {deployment.n_gpus}")
    eff, notes = effective_policy(policy, workload)
    sim = Simulation(eff, workload, deployment, seed=seed, check=check, trace=trace_path is not None,
                     max_sim_time_s=max_sim_time_s, prefilled=prefilled)
    if client_lag:  # a session's next turn starts from the last token the client sees
        sim.turn_lag = deployment_lag(deployment)[:2]
    sim.run()
    if deployment.n_gpus > eff.tp:
        notes = (*notes, f"deployment has {deployment.n_gpus} GPUs: simulated ONE instance of tp={eff.tp}; "
                         f"the other {deployment.n_gpus - eff.tp} idle, not priced (SimBackend.run serves replicas)")
    if trace_path is not None:
        sim.trace.write(trace_path)
    res = build_result(sim, eff, notes)
    return deployment_client_lag(res, deployment) if client_lag else res


class SimBackend:
    """The simulator as a ``backends.base.Backend``. Stateless: one object serves any number
    of runs, concurrently or interleaved; each run owns its RNG and counters."""

    name = "sim"

    def __init__(self, *, check: bool = False, client_lag: bool = True) -> None:
        self.check = check
        self.client_lag = client_lag  # add the engine preset's client lag (``simulate``)

    def check_deployment(self, deployment: Deployment) -> None:
        """Raise a one-line ValueError when the deployment's model, GPU or engine preset is not
        one this simulator knows, or whose calibration file does not read or was fitted for
        another model, GPU or engine (before a study spends trials on it)."""
        from backends.sim.calibrated import check_calibration
        from backends.sim.catalog import context_len, get_gpu, get_model
        from backends.sim.engines import get_engine

        context_len(get_model(deployment.model), deployment.max_model_len)
        get_gpu(deployment.gpu)
        get_engine(deployment.engine)
        check_calibration(deployment)

    def run(self, policy: Policy, workload: Workload, deployment: Deployment, *, seed: int = 0,
            trace_path: str | Path | None = None, max_sim_time_s: float | None = None,
            prefilled=None) -> RunResult:
        """Per-request records, telemetry and the effective policy of one simulated run.
        ``prefilled`` (bool per request or None): prompt KV already computed elsewhere (a prefill
        instance): admitted straight to decoding, first token with the first decode iteration.
        Raises ValueError for an unknown model/GPU or a deployment whose weights do not fit."""
        from backends.sim.cluster import needs_cluster, simulate_cluster

        if needs_cluster(policy, deployment):  # several instances: backends/sim/cluster.py
            if trace_path is not None or max_sim_time_s is not None or prefilled is not None:
                raise ValueError("trace_path, max_sim_time_s and prefilled need one instance; this policy "
                                 "needs a cluster (replicas > 1, disaggregated, autoscale or spot_fraction > 0)")
            return simulate_cluster(policy, workload, deployment, seed=seed, client_lag=self.client_lag)
        return simulate(policy, workload, deployment, seed=seed, trace_path=trace_path,
                        max_sim_time_s=max_sim_time_s, check=self.check, prefilled=prefilled,
                        client_lag=self.client_lag)
