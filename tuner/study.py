"""Run a study: open/resume it in Optuna storage, enqueue the defaults, drive worker loops.

``--trials N`` is the total the study should reach, counted as FINISHED trials: COMPLETE +
PRUNED + FAIL, except FAIL trials that were retried (``--retry-failed``: their retry counts
instead). So re-running the same command resumes an interrupted study and stops at N. Each
worker counts and asks under a file lock (``.servetune/<study>.lock``), so K workers on one
machine reach exactly N; workers on several machines (RDB storage) may overshoot by < K.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from tuner.evaluate import DEFAULT_ATTR, RESULT_ATTR, Evaluator, Outcome, Timings
from tuner.interrupts import deferred_interrupt, interrupted
from tuner.space import default_params
from tuner.storage import (
    JOURNAL_NAME,
    fail_stale_trials,
    has_heartbeat,
    mask_url,
    open_storage,
    pid_alive,
    study_lock,
    workdir,
    worker_id,
)
from tuner.study_spec import StudySpec, load_study
from tuner.tracking import EXPERIMENT_ATTR, KEY_TAG, PARENT_ATTR, Tracker, study_key

# We drive trials with ask/tell and record heartbeats ourselves (Worker._beat); Optuna warns
# that heartbeats are meant for Study.optimize, and that heartbeat_interval is experimental.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed", category=UserWarning)
warnings.filterwarnings("ignore", message="Argument ``heartbeat_interval``")
warnings.filterwarnings("ignore", message="Argument ``grace_period``")
warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")  # said once: space.defaults_outside

STALE_ATTR = "stale_trials"
RETRIED_ATTR = "retried_trials"
DEFAULT_ENQUEUED_ATTR = "default_enqueued"


@dataclass(frozen=True, slots=True)
class TuneOptions:
    """Command-line options of ``servetune tune`` (None = the study file's value)."""

    trials: int | None = None
    timeout_s: float | None = None
    storage: str | None = None
    mlflow_uri: str | None = None
    n_jobs: int = 1
    backend: str = "sim"
    seed: int | None = None
    retry_failed: bool = False
    mlflow_logger: str = "auto"
    """inline | process | auto (``tuner.mlflow_logger.make_logger``)."""


def make_sampler(spec: StudySpec, seed: int) -> Any:
    import optuna

    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if spec.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed)


def open_study(spec: StudySpec, opts: TuneOptions, worker_index: int = 0) -> Any:
    """Create or load the study named in the spec (sampler seeded per worker)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = (spec.seed if opts.seed is None else opts.seed) + worker_index
    from tuner.pruning import MarginPruner

    pruner = MarginPruner(percentile=50.0, margin=0.1, n_startup_trials=5) if spec.prunes else optuna.pruners.NopPruner()
    storage = open_storage(opts.storage)
    try:
        return optuna.create_study(study_name=spec.name, storage=storage, sampler=make_sampler(spec, seed),
                                   pruner=pruner, directions=spec.directions, load_if_exists=True)
    except ValueError as e:
        raise ValueError(f"study {spec.name!r}: {str(e).splitlines()[0]} (the stored study has other objectives; "
                         "rename the study)") from None


def existing_study(spec: StudySpec, storage: str | None) -> Any:
    """The stored study, loaded without creating it (export, report and ``simulate --trial``
    never write a new study); a one-line ValueError when the storage holds no trial of it."""
    import optuna

    empty = ValueError(f"study {spec.name!r} has no trials in this storage (run `servetune tune` first, "
                       "or pass the --storage it used)")
    try:
        optuna.load_study(study_name=spec.name, storage=open_storage(storage))
    except KeyError:
        raise empty from None
    study = open_study(spec, TuneOptions(storage=storage))
    if not study.get_trials(deepcopy=False):
        raise empty
    return study


def counts(study: Any) -> tuple[int, int]:
    """(finished trials toward the total, running trials)."""
    from optuna.trial import TrialState

    retried = set(study.user_attrs.get(RETRIED_ATTR, []))
    fin = run = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (t.state == TrialState.FAIL and t.number not in retried):
            fin += 1
        elif t.state == TrialState.RUNNING:
            run += 1
    return fin, run


def prepare(spec: StudySpec, opts: TuneOptions, tracker: Tracker) -> tuple[Any, list[int]]:
    """Open/resume the study once (main process): fail stale trials, optionally retry them,
    enqueue the engine defaults as the first trial (once), create the MLflow parent run."""
    from optuna.trial import TrialState

    study = open_study(spec, opts)
    with study_lock(spec.name):
        stale = fail_stale_trials(study)
        attrs = study.user_attrs
        if stale:
            study.set_user_attr(STALE_ATTR, sorted(set(attrs.get(STALE_ATTR, [])) | set(stale)))
        if opts.retry_failed:
            retried = set(attrs.get(RETRIED_ATTR, []))
            stale_all = set(study.user_attrs.get(STALE_ATTR, []))
            for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
                if t.number in stale_all and t.number not in retried:
                    study.enqueue_trial(t.params, user_attrs={"retry_of": t.number, **(
                        {DEFAULT_ATTR: True} if t.user_attrs.get(DEFAULT_ATTR) else {})}, skip_if_exists=False)
                    retried.add(t.number)
            study.set_user_attr(RETRIED_ATTR, sorted(retried))
        if not attrs.get(DEFAULT_ENQUEUED_ATTR):
            study.enqueue_trial(default_params(spec.search, spec.base_policy()), user_attrs={DEFAULT_ATTR: True})
            study.set_user_attr(DEFAULT_ENQUEUED_ATTR, True)
            study.set_user_attr("study_file", spec.path)
        d = spec.deployment  # under the lock: local workers starting together make one parent
        tracker.ensure_parent(study, {
            "servetune.study_file": spec.path, "servetune.storage": storage_label(opts),
            "servetune.sampler": spec.sampler,
            "servetune.objectives": ",".join(f"{o.name}:{o.direction}" for o in spec.objectives),
            "servetune.model": d.model, "servetune.gpu": d.gpu, "servetune.engine": d.engine,
            "servetune.backend": opts.backend}, study_key(study, storage_label(opts)), spec.path)
    log_missing_runs(spec, study, tracker, study_key(study, storage_label(opts)))
    return study, stale


def storage_label(opts: TuneOptions) -> str:
    """The Optuna storage as logged (password masked)."""
    return mask_url(opts.storage or f"journal:{(workdir() / JOURNAL_NAME).resolve()}")


def log_missing_runs(spec: StudySpec, study: Any, tracker: Tracker, key: str) -> list[int]:
    """Log an MLflow run for every finished trial that has none (its worker died between telling
    Optuna and logging, or the trial was failed as stale), from what Optuna stored. Trials of a
    worker process still alive on this host are left to it. Returns the trial numbers logged."""
    from optuna.trial import TrialState

    exp, parent = study.user_attrs[EXPERIMENT_ATTR], study.user_attrs[PARENT_ATTR]
    have = {r.data.tags.get("optuna.trial") for r in [*tracker.child_runs(exp, parent), *tracker.study_runs(exp, key)]}
    host = socket.gethostname()
    logged = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        if str(t.number) in have:
            continue
        h, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if h == host and pid.isdigit() and pid_alive(int(pid)) and int(pid) != os.getpid():
            continue
        info = t.user_attrs.get(RESULT_ATTR) or {}
        metrics = dict(info.get("scorecard") or {})
        for o, v in zip(spec.objectives, t.values or [], strict=False):
            metrics[f"objective.{o.name}"] = v
        metrics.update({f"constraint.{k}": v for k, v in (t.constraints or {}).items()})
        if info.get("rate") is not None:
            metrics["max_rate_req_s"] = info["rate"]
        d = spec.deployment
        tags = {KEY_TAG: key, "optuna.study": spec.name, "optuna.state": t.state.name, "servetune.repaired": "true",
                "servetune.model": d.model, "servetune.gpu": d.gpu, "servetune.engine": d.engine,
                "servetune.sampler": spec.sampler,
                "servetune.default_policy": str(bool(t.user_attrs.get(DEFAULT_ATTR))).lower()}
        err = info.get("error") or t.system_attrs.get("fail_reason")
        if err:
            tags["servetune.error"] = str(err)[:5000]
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(t.state.name, "FAILED")
        tracker.log_trial(exp, parent, t.number, params=info.get("effective_policy") or info.get("policy") or t.params,
                          metrics=metrics, tags=tags, status=status)
        logged.append(t.number)
    return logged


class Worker:
    """One worker's loop: count → ask (under the lock) → evaluate → log to MLflow → tell."""

    def __init__(self, spec: StudySpec, opts: TuneOptions, tracker: Tracker, *, index: int = 0,
                 study: Any = None, backend: Any = None, evaluator: Evaluator | None = None) -> None:
        from backends.registry import get_backend

        self.spec, self.opts, self.tracker = spec, opts, tracker
        self.study = study if study is not None else open_study(spec, opts, index)
        self.backend = backend if backend is not None else get_backend(opts.backend)
        self.ev = evaluator or Evaluator(spec, self.backend, seed=opts.seed)
        self.target = opts.trials or spec.trials
        self.timings = Timings()
        self.logger_stats: str | None = None
        """Path where the logger process writes its per-run times (benchmarks)."""
        attrs = self.study.user_attrs
        self.experiment_id, self.parent_run_id = attrs[EXPERIMENT_ATTR], attrs[PARENT_ATTR]
        self.study_key = study_key(self.study, storage_label(opts))
        self.workload_hash = self.ev.workload.content_hash()
        self._heartbeat = has_heartbeat(self.study._storage)

    def run(self, deadline: float | None = None, on_trial: Callable[[int, Outcome], None] | None = None) -> Timings:
        """Run trials until the study has its total (or the deadline); every trial's MLflow run
        is in the store when this returns."""
        from tuner.mlflow_logger import make_logger

        with study_lock(self.spec.name):
            ahead = self.target - sum(counts(self.study))
        self.logger = make_logger(self.opts.mlflow_logger, self.tracker, ahead, self.logger_stats)
        try:
            self._loop(deadline, on_trial)
        finally:
            t = time.perf_counter()
            self.logger.close()
            self.parent_run_id = self.tracker.converge(self.study, self.study_key)
            self.timings.mlflow_drain += time.perf_counter() - t
        return self.timings

    def _loop(self, deadline: float | None, on_trial: Callable[[int, Outcome], None] | None) -> None:
        while deadline is None or time.time() < deadline:
            t = time.perf_counter()
            trial, told = None, [False]
            try:
                with deferred_interrupt():  # a trial Optuna stores as RUNNING is always one we hold
                    with study_lock(self.spec.name):
                        fin, running = counts(self.study)
                        if fin + running >= self.target:
                            break
                        trial = self.study.ask()
                        trial.set_user_attr("worker", worker_id())
                self.timings.storage += time.perf_counter() - t
                outcome = self._one(trial, told)
            except BaseException:  # Ctrl-C or an internal error: never scored, the trial fails
                if trial is not None and not told[0]:
                    self._fail(trial)
                raise
            if on_trial is not None:
                on_trial(trial.number, outcome)

    def _one(self, trial: Any, told: list[bool]) -> Outcome:
        stop = threading.Event()
        if self._heartbeat:
            threading.Thread(target=self._beat, args=(trial._trial_id, stop), daemon=True).start()
        try:
            return self._evaluate_and_tell(trial, told)
        finally:
            stop.set()

    def _fail(self, trial: Any) -> None:
        """Tell Optuna ``trial`` FAILED unless it is finished already (an interrupt can land
        inside the ``tell`` that finished it); the error being raised is the one to surface."""
        from optuna.trial import TrialState

        with contextlib.suppress(Exception):  # (Optuna refuses to tell a finished trial again)
            self.study.tell(trial, state=TrialState.FAIL)

    def _evaluate_and_tell(self, trial: Any, told: list[bool]) -> Outcome:
        """Evaluate, tell Optuna (the source of truth), then mirror the trial to MLflow. A worker
        killed between the two leaves a finished trial without a run: the next ``tune`` logs it
        (``log_missing_runs``)."""
        from optuna.trial import TrialState

        out = self.ev.evaluate(trial, self.timings)
        t = time.perf_counter()
        for name, v in out.constraints.items():
            trial.set_constraint(name, v)
        trial.set_user_attr(RESULT_ATTR, _result_attr(out))
        state = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED, "FAIL": TrialState.FAIL}[out.state]
        self.study.tell(trial, out.values if out.state == "COMPLETE" else None, state=state)
        told[0] = True
        self.timings.storage += time.perf_counter() - t
        t = time.perf_counter()
        self._log(trial, out)
        self.timings.mlflow += time.perf_counter() - t
        self.timings.trials += 1
        return out

    def _beat(self, trial_id: int, stop: threading.Event) -> None:
        storage = self.study._storage
        while not stop.is_set():
            storage.record_heartbeat(trial_id)
            stop.wait(storage.get_heartbeat_interval() or 30)

    def _log(self, trial: Any, out: Outcome) -> None:
        spec, d = self.spec, self.spec.deployment
        res = out.result
        policy = res.policy if res is not None else out.policy
        metrics: dict[str, float] = dict(out.scorecard.metrics()) if out.scorecard is not None else {}
        for o, v in zip(spec.objectives, out.values or [], strict=False):
            metrics[f"objective.{o.name}"] = v
        metrics.update({f"constraint.{k}": v for k, v in out.constraints.items()})
        if out.rate is not None:
            metrics["max_rate_req_s"] = out.rate
        tags = {KEY_TAG: self.study_key, "servetune.backend": getattr(self.backend, "name", self.opts.backend),
                "servetune.workload_hash": self.workload_hash, "servetune.workload": self.ev.workload.name,
                "servetune.model": d.model, "servetune.gpu": d.gpu, "servetune.engine": d.engine,
                "servetune.sampler": spec.sampler, "optuna.study": spec.name, "optuna.state": out.state,
                "servetune.feasible": str(out.feasible).lower(),
                "servetune.default_policy": str(bool(trial.user_attrs.get(DEFAULT_ATTR))).lower()}
        if res is not None and res.notes:
            tags["servetune.notes"] = "; ".join(res.notes)[:5000]
        if res is not None and res.meta.get("cost_model"):
            tags["servetune.cost_model"] = str(res.meta["cost_model"])[:500]
        if out.error:
            tags["servetune.error"] = out.error[:5000]
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[out.state]
        self.parent_run_id = self.study.user_attrs.get(PARENT_ATTR, self.parent_run_id)  # a racing worker's
        self.logger.submit(self.experiment_id, self.parent_run_id, trial.number,
                           params=policy.to_dict() if policy is not None else {}, metrics=metrics, tags=tags,
                           status=status)


def _result_attr(out: Outcome) -> dict[str, Any]:
    d: dict[str, Any] = {"state": out.state}
    if out.policy is not None:
        d["policy"] = out.policy.to_dict()
        if out.result is not None and out.result.policy != out.policy:
            d["effective_policy"] = out.result.policy.to_dict()
    if out.scorecard is not None:
        d["scorecard"] = out.scorecard.metrics()
    if out.rate is not None:
        d["rate"] = out.rate
    if out.error:
        d["error"] = out.error
    if out.result is not None and out.result.notes:
        d["notes"] = list(out.result.notes)
    return d


def spawn_workers(spec: StudySpec, opts: TuneOptions, deadline: float | None) -> list[subprocess.Popen]:
    """K worker processes (``python -m tuner.worker``) on the same storage and MLflow store."""
    payload = json.dumps({**asdict(opts), "deadline": deadline})
    return [subprocess.Popen([sys.executable, "-m", "tuner.worker", spec.path, payload, str(i)],
                             cwd=os.getcwd(), env={**os.environ, "PYTHONUNBUFFERED": "1"})
            for i in range(opts.n_jobs)]


def worker_main(argv: list[str]) -> int:
    """Entry of one spawned worker process."""
    spec_path, payload, index = argv[0], json.loads(argv[1]), int(argv[2])
    deadline = payload.pop("deadline")
    opts = TuneOptions(**payload)
    try:
        spec = load_study(spec_path)
        Worker(spec, opts, Tracker(opts.mlflow_uri), index=index).run(deadline)
    except KeyboardInterrupt:  # Ctrl-C (the terminal signals the whole group): finished trials are stored
        return 130
    except Exception as e:
        if interrupted(e):  # (a library's cleanup failed under the Ctrl-C)
            return 130
        raise
    return 0
