"""``servetune tune``: run a study to its total, show progress, then summarise and log artifacts.

The summary compares the best trial (single objective) or the Pareto front (several) with the
default policy (trial 0): the gain is the improvement in each objective's direction, in %.
For those trials, the per-request records (Parquet) and TTFT/TPOT CDF plots are logged as
MLflow artifacts of their trial runs (re-simulated: backends are deterministic for a seed).
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.evaluate import DEFAULT_ATTR, RESULT_ATTR, Evaluator, Outcome, Timings
from tuner.policy import Policy
from tuner.study import TuneOptions, Worker, counts, prepare, spawn_workers
from tuner.study_spec import StudySpec
from tuner.tracking import EXPERIMENT_ATTR, PARENT_ATTR, Tracker

MAX_PARETO_ARTIFACTS = 5


@dataclass(slots=True)
class TuneResult:
    study: Any
    spec: StudySpec
    default: Any | None
    """The default-policy trial (FrozenTrial) if it completed."""
    best: list[Any]
    """Best trial (single objective, feasible if any is) or the feasible Pareto front."""
    feasible: bool
    stale: list[int]
    wall_s: float
    timings: Timings = field(default_factory=Timings)
    n_finished: int = 0


def default_trial(study: Any) -> Any | None:
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get(DEFAULT_ATTR):
            return t
    return None


def constraint_values(t: Any) -> list[float]:
    """A trial's constraint values (Optuna 5 keeps them by name; older versions as a list)."""
    c = t.constraints or []
    return list(c.values()) if isinstance(c, dict) else list(c)


def is_feasible(t: Any) -> bool:
    return all(v <= 0 for v in constraint_values(t))


def best_trials(spec: StudySpec, study: Any) -> tuple[list[Any], bool]:
    """(best trials, whether they are feasible). Single objective: the best feasible COMPLETE
    trial (else the best infeasible one, flagged); several: the feasible Pareto front."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values and all(math.isfinite(v) for v in t.values)]
    if not done:
        return [], False
    if spec.multi_objective:
        front = study.best_trials
        if front:
            return sorted(front, key=lambda t: t.number), True
        return [], False
    sign = 1 if spec.objectives[0].direction == "maximize" else -1
    feas = [t for t in done if is_feasible(t)]
    pool = feas or done
    return [max(pool, key=lambda t: (sign * t.values[0], -t.number))], bool(feas)


def gain_pct(value: float, default: float, direction: str) -> float:
    """Improvement over the default in the objective's direction, % (NaN if undefined)."""
    if not (math.isfinite(value) and math.isfinite(default)) or default == 0:
        return float("nan")
    d = (value - default) / abs(default) * 100
    return (d if direction == "maximize" else -d) + 0.0  # + 0.0: no "-0.0%"


def trial_policy(spec: StudySpec, t: Any) -> Policy:
    """The full policy a trial ran (stored with it; rebuilt from params for old trials)."""
    stored = (t.user_attrs.get(RESULT_ATTR) or {}).get("policy")
    if stored:
        return Policy.from_dict(stored)
    return spec.base_policy().replace(**t.params)


def tune(spec: StudySpec, opts: TuneOptions, *, progress: bool = True, backend: Any = None) -> TuneResult:
    """Run the study until it has ``opts.trials`` (else the spec's) finished trials."""
    tracker = Tracker(opts.mlflow_uri)
    study, stale = prepare(spec, opts, tracker)
    target = opts.trials or spec.trials
    deadline = time.time() + opts.timeout_s if opts.timeout_s else None
    t0 = time.perf_counter()
    timings = Timings()
    with _Progress(spec, study, target, counts(study)[0], enabled=progress) as bar:
        if opts.n_jobs <= 1:
            w = Worker(spec, opts, tracker, study=study, backend=backend)
            timings = w.run(deadline, on_trial=bar.trial_done)
        else:
            procs = spawn_workers(spec, opts, deadline)
            try:
                while any(p.poll() is None for p in procs):
                    bar.poll(study)
                    time.sleep(0.5)
            except KeyboardInterrupt:  # stop the workers too; each stores its finished trials
                _interrupt(procs)
                raise
            bar.poll(study)
            bad = [p.returncode for p in procs if p.returncode != 0]
            if bad:
                raise RuntimeError(f"{len(bad)} of {len(procs)} worker processes failed (exit {bad[0]}); "
                                   "run again to resume the study")
    best, feasible = best_trials(spec, study)
    res = TuneResult(study, spec, default_trial(study), best, feasible, stale, time.perf_counter() - t0, timings,
                     counts(study)[0])
    return res


def _interrupt(procs: list[Any], timeout_s: float = 60.0) -> None:
    """Send SIGINT to the worker processes still running and wait up to ``timeout_s`` s for them."""
    import signal

    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    end = time.time() + timeout_s
    for p in procs:
        try:
            p.wait(max(end - time.time(), 0.1))
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: leave it; the next tune fails its trial as stale
            pass


def log_best_artifacts(res: TuneResult, opts: TuneOptions, backend: Any = None) -> list[Path]:
    """Re-simulate the best/Pareto trials and log records (Parquet), CDF plots, the ITL histogram
    (``itl.csv``) and, for a multi-tenant workload, the per-tenant table (``tenants.csv``) to their runs."""
    from backends.itl import write_itl_csv
    from backends.registry import get_backend
    from tuner.plots import latency_cdf_png
    from tuner.tenants import write_tenant_csv

    if not res.best:
        return []
    tracker = Tracker(opts.mlflow_uri)
    ev = Evaluator(res.spec, backend or get_backend(opts.backend), seed=opts.seed)
    out: list[Path] = []
    tmp = Path(tempfile.mkdtemp(prefix="servetune-art-"))
    attrs = res.study.user_attrs
    for t in res.best[:MAX_PARETO_ARTIFACTS]:
        run_id = tracker.trial_run_id(attrs[EXPERIMENT_ATTR], attrs[PARENT_ATTR], t.number)
        if not run_id:
            continue
        result, workload = replay(ev, res.spec, t)
        d = tmp / f"trial-{t.number:04d}"
        d.mkdir()
        rec = d / "records.parquet"
        result.records.to_parquet(rec, index=False)
        png = latency_cdf_png({f"trial {t.number}": result}, d / "latency_cdf.png",
                              title=f"{res.spec.name}: trial {t.number}")
        paths = [rec, png]
        if write_tenant_csv(result.records, d / "tenants.csv"):
            paths.append(d / "tenants.csv")
        if write_itl_csv(result.telemetry.itl, d / "itl.csv"):
            paths.append(d / "itl.csv")
        tracker.log_artifacts(run_id, paths)
        out += paths
    parent = res.study.user_attrs.get(PARENT_ATTR)
    if parent:
        tracker.finish(parent)
    return out


def replay(ev: Evaluator, spec: StudySpec, t: Any) -> tuple[Any, Any]:
    """Run a stored trial's policy again on the study workload (at its max rate if any)."""
    from workloads import scale_to_rate

    policy = trial_policy(spec, t)
    rate = (t.user_attrs.get(RESULT_ATTR) or {}).get("rate")
    w = scale_to_rate(ev.workload, rate) if rate else ev.workload
    result, _ = ev.run(policy, w, Timings())
    return result, w


class _Progress:
    """A rich progress bar with the best value so far (no-op when disabled or not a terminal)."""

    def __init__(self, spec: StudySpec, study: Any, total: int, done: int, enabled: bool) -> None:
        self.spec, self.study, self.total, self.done, self.enabled = spec, study, total, done, enabled
        self.best: float | None = None
        self.bar: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("{task.fields[best]}"),
                                console=Console(stderr=True), transient=False)
            self.bar.__enter__()
            self.task = self.bar.add_task(self.spec.name, total=self.total, completed=min(self.done, self.total),
                                          best="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def _label(self) -> str:
        if self.best is None:
            return ""
        o = self.spec.objectives[0]
        return f"best {o.name}={self.best:.4g}" if not self.spec.multi_objective else f"Pareto front: {int(self.best)}"

    def trial_done(self, number: int, out: Outcome) -> None:
        self.done += 1
        if self.spec.multi_objective:
            self.poll(self.study)
            return
        if out.state == "COMPLETE" and out.values and out.feasible and not self.spec.multi_objective:
            v = out.values[0]
            better = self.best is None or (v > self.best if self.spec.objectives[0].direction == "maximize" else v < self.best)
            if math.isfinite(v) and better:
                self.best = v
        if self.bar is not None:
            self.bar.update(self.task, completed=min(self.done, self.total), best=self._label())

    def poll(self, study: Any) -> None:
        if self.bar is None:
            return
        fin, _ = counts(study)
        best, _ = best_trials(self.spec, study)
        if best:
            self.best = best[0].values[0] if not self.spec.multi_objective else float(len(best))
        self.bar.update(self.task, completed=min(fin, self.total), best=self._label())
