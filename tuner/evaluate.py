"""Evaluate one trial: sample its policy, run the backend, score, report intermediate values.

Pruning (single objective): the workload's prefixes (e.g. 25 %, 50 %, 100 % of the requests)
are simulated in turn; after each, ``trial.report`` + ``should_prune``. ``max_rate`` bisects the
workload's rate instead. Every trial is simulated with the study seed (common random numbers:
trials differ only by their policy).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from backends.base import Deployment, RunResult
from tuner.objectives import MAX_RATE, bisect_max_rate, objective_value
from tuner.policy import Policy
from tuner.scorecard import Scorecard, score
from tuner.space import default_params, for_workload, sample
from tuner.study_spec import StudySpec
from workloads.workload import Workload

DEFAULT_ATTR = "servetune_default"
RESULT_ATTR = "result"


@dataclass(slots=True)
class Timings:
    """Seconds spent per part of the tuning loop (summed over trials)."""

    sampler: float = 0.0
    storage: float = 0.0
    mlflow: float = 0.0
    """On the trial loop: handing the run to the logger process."""
    mlflow_drain: float = 0.0
    """Waiting at the end until the logger process has stored every run."""
    simulation: float = 0.0
    trials: int = 0

    def add(self, other: Timings) -> None:
        for k in ("sampler", "storage", "mlflow", "mlflow_drain", "simulation", "trials"):
            setattr(self, k, getattr(self, k) + getattr(other, k))


@dataclass(slots=True)
class Outcome:
    """What one trial produced."""

    state: str
    """COMPLETE, PRUNED or FAIL."""
    policy: Policy | None = None
    values: list[float] | None = None
    scorecard: Scorecard | None = None
    result: RunResult | None = None
    constraints: dict[str, float] = field(default_factory=dict)
    intermediate: list[float] = field(default_factory=list)
    rate: float | None = None
    """max_rate: the rate found (req/s); the scorecard is the one at that rate."""
    error: str = ""

    @property
    def feasible(self) -> bool:
        return all(v <= 0 for v in self.constraints.values())


class Evaluator:
    """Runs trials of one study on one backend (one per worker process)."""

    def __init__(self, spec: StudySpec, backend: Any, *, seed: int | None = None,
                 workload: Workload | None = None) -> None:
        self.spec = spec
        self.backend = backend
        self.seed = spec.seed if seed is None else seed
        self.workload = workload if workload is not None else spec.load_workload()
        self.deployment: Deployment = spec.deployment
        self.base = spec.base_policy()
        self.search = for_workload(spec.search, self.workload)
        self.defaults = default_params(self.search, self.base)
        self._prefixes: dict[float, Workload] = {}

    def prefix(self, frac: float) -> Workload:
        from workloads import first_n

        if frac >= 1.0:
            return self.workload
        if frac not in self._prefixes:
            self._prefixes[frac] = first_n(self.workload, max(2, math.ceil(frac * self.workload.n)))
        return self._prefixes[frac]

    def run(self, policy: Policy, workload: Workload, timings: Timings) -> tuple[RunResult, Scorecard]:
        t = time.perf_counter()
        res = self.backend.run(policy, workload, self.deployment, seed=self.seed)
        sc = score(res, workload)
        timings.simulation += time.perf_counter() - t
        return res, sc

    def policy_for(self, trial: Any) -> Policy:
        only = self.defaults if trial.user_attrs.get(DEFAULT_ATTR) else None
        return sample(trial, self.search, self.base, only=only, n_gpus=self.deployment.n_gpus)

    def evaluate(self, trial: Any, timings: Timings) -> Outcome:
        """Sample, run and score one trial (reports intermediate values; never raises for a bad
        policy combination: that is a FAIL outcome with the reason)."""
        t = time.perf_counter()
        try:
            policy = self.policy_for(trial)
        except ValueError as e:
            timings.sampler += time.perf_counter() - t
            return Outcome("FAIL", error=f"invalid policy: {str(e).splitlines()[0]}")
        timings.sampler += time.perf_counter() - t
        try:
            return self._run_trial(trial, policy, timings)
        except ValueError as e:  # a combination the backend refuses (e.g. the model does not fit)
            return Outcome("FAIL", policy=policy, error=f"backend refused: {str(e).splitlines()[0]}")

    def _run_trial(self, trial: Any, policy: Policy, timings: Timings) -> Outcome:
        spec = self.spec
        out = Outcome("COMPLETE", policy=policy)
        objs = spec.objectives
        if any(o.metric == MAX_RATE for o in objs):
            from workloads import scale_to_rate

            obj = next(o for o in objs if o.metric == MAX_RATE)
            runs: dict[float, tuple[RunResult, Scorecard]] = {}

            def run_at(rate: float) -> Scorecard:
                runs[rate] = self.run(policy, scale_to_rate(self.workload, rate), timings)
                return runs[rate][1]

            best, best_sc, fail_rate, fail_sc = bisect_max_rate(run_at, obj, spec.constraints)
            out.rate = best
            key = best if best_sc is not None else fail_rate
            out.result, out.scorecard = runs[key]
        elif spec.prunes:
            fr = spec.pruning
            for step, f in enumerate(fr):
                out.result, out.scorecard = self.run(policy, self.prefix(f), timings)
                v = objective_value(objs[0], out.scorecard)
                out.intermediate.append(v)
                if step < len(fr) - 1:
                    ts = time.perf_counter()
                    trial.report(v if math.isfinite(v) else _worst(objs[0].direction), step)
                    prune = trial.should_prune()
                    timings.storage += time.perf_counter() - ts
                    if prune:
                        out.state = "PRUNED"
                        break
        else:
            out.result, out.scorecard = self.run(policy, self.workload, timings)
        out.constraints = {c.name: c.violation(out.scorecard) for c in spec.constraints}
        if out.state == "COMPLETE":
            out.values = [objective_value(o, out.scorecard, out.rate) for o in objs]
        return out


def _worst(direction: str) -> float:
    return -1e300 if direction == "maximize" else 1e300
