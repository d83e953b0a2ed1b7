"""MLflow logging for studies: one parent run per study, one nested run per trial.

Default store: SQLite ``.servetune/mlflow.db`` (WAL mode, set once) with artifacts in
``.servetune/mlartifacts`` — never the same file as Optuna's storage. Browse it with::

    mlflow ui --backend-store-uri sqlite:///.servetune/mlflow.db

Each trial costs three store calls (create run with its tags, one ``log_batch`` with the
effective policy as params and the scorecard as metrics, set terminated), ~20-40 ms on SQLite.
The parent run id is kept as an Optuna study user attr, so resumed studies and workers in other
processes log their trials under the same parent (``mlflow.parentRunId`` tag). Optuna has no
compare-and-set for attrs, so workers on several machines that open a new study at once may
each create a parent; every run carries the study's key (``servetune.study_key``) and each
worker, when it stops, moves every run of the study under the one parent the attr names and
deletes the others (``Tracker.converge``). The last worker to stop has seen every run and the
final attr, so the store ends with one parent and every trial under it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import subprocess
import time
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from tuner.storage import file_lock, mask_url, set_wal, sqlite_synchronous_normal, workdir

PARENT_ATTR = "mlflow_parent_run_id"
EXPERIMENT_ATTR = "mlflow_experiment_id"
KEY_TAG = "servetune.study_key"
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
"""MLflow's HTTP client settings (retries; timeout per request, s) unless the user set them: a
tracking server that does not answer fails in ~10-40 s, not minutes (MLflow's defaults: 7
retries with exponential backoff, 120 s a request)."""


def study_key(study: Any, storage: str) -> str:
    """Names one Optuna study in every worker on every machine: its storage, id and name (a
    study deleted and created again under the same name gets another key)."""
    raw = f"{storage}|{study._study_id}|{study.study_name}"
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


def default_mlflow_uri() -> str:
    return f"sqlite:///{(workdir() / 'mlflow.db').resolve()}"


def code_version() -> str:
    """``servetune <version>`` plus ``+g<sha>`` (and ``-dirty``) when run from a git checkout."""
    from cli import _version

    v = _version()
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{v}+g{sha}" if sha else v


def _param(v: Any) -> str:
    if isinstance(v, Mapping):
        return ",".join(f"{k}={w:g}" for k, w in v.items()) or "{}"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


class Tracker:
    """Logs a study to one MLflow tracking store (``uri``; default the project-local SQLite)."""

    def __init__(self, uri: str | None = None) -> None:
        self.uri = uri or default_mlflow_uri()
        self._db = Path(self.uri[len("sqlite:///"):]) if self.uri.startswith("sqlite:///") else None

    @cached_property
    def client(self) -> Any:
        with _quiet():
            from mlflow import MlflowClient
        _quiet_loggers()

        for k, v in HTTP_DEFAULTS.items():
            os.environ.setdefault(k, v)
        if self.uri.startswith("file:"):  # asked for by name: MLflow 3 serves it only when allowed
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        if self._db is None:
            return MlflowClient(tracking_uri=self.uri)
        # processes creating a fresh store together would race on its schema (alembic)
        with file_lock(self._db.with_name(self._db.name + ".lock")):
            set_wal(self._db)
            client = MlflowClient(tracking_uri=self.uri)
        sqlite_synchronous_normal(getattr(client._tracking_client.store, "engine", None))
        return client

    def check(self) -> None:
        """Raise a one-line ValueError naming the URI when the tracking store cannot be opened or
        reached (before a study writes anything)."""
        try:
            self.client.search_experiments(max_results=1)
        except Exception as e:  # noqa: BLE001 - MlflowException, OSError, SQLAlchemy, requests ...
            msg = mask_url(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
            raise ValueError(f"--mlflow-uri {mask_url(self.uri)}: cannot use this MLflow tracking store "
                             f"({msg if len(msg) <= 200 else msg[:200] + '...'})") from None

    @cached_property
    def store(self) -> Any:
        """The tracking store behind the client (SQLAlchemy, REST, ...): same API for each."""
        return self.client._tracking_client.store

    @cached_property
    def user(self) -> str:
        import getpass

        try:
            return getpass.getuser()
        except (KeyError, OSError):
            return "servetune"

    @cached_property
    def code_version(self) -> str:
        return code_version()

    # ------------------------------------------------------------ parent
    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        loc = (self._db.parent / "mlartifacts" / name).resolve().as_uri() if self._db is not None else None
        try:
            return self.client.create_experiment(name, artifact_location=loc)
        except Exception:  # noqa: BLE001 - another worker created it first
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def ensure_parent(self, study: Any, tags: Mapping[str, str], key: str,
                      study_file: str | None = None) -> tuple[str, str]:
        """The study's parent run (created once, id kept as a study user attr) → (experiment id, run id)."""
        attrs = study.user_attrs
        if PARENT_ATTR in attrs:
            run_id = attrs[PARENT_ATTR]
            try:
                self.client.get_run(run_id)
                return attrs[EXPERIMENT_ATTR], run_id
            except Exception:  # noqa: BLE001 - a different/emptied MLflow store: start a new parent
                pass
        exp = self.experiment_id(study.study_name)
        run = self.client.create_run(exp, run_name=study.study_name,
                                     tags={**tags, KEY_TAG: key, "servetune.code_version": self.code_version,
                                           "servetune.role": "study"})
        run_id = run.info.run_id
        if study_file and Path(study_file).is_file():
            self.client.log_artifact(run_id, study_file)
        study.set_user_attr(EXPERIMENT_ATTR, exp)
        study.set_user_attr(PARENT_ATTR, run_id)
        return exp, run_id

    def converge(self, study: Any, key: str) -> str:
        """Put every run of the study (``key``) under the one parent the study attr names, delete
        the parents racing workers created, and return the parent's id. Idempotent; safe while
        other workers do the same (they all read the same attr)."""
        current, exp = study.user_attrs[PARENT_ATTR], study.user_attrs[EXPERIMENT_ATTR]
        if self.client.get_run(current).info.lifecycle_stage == "deleted":  # a racer deleted it before the attr named it
            self.client.restore_run(current)
        for r in self._search(exp, f"tags.`{KEY_TAG}` = '{key}' and tags.`servetune.role` = 'study'"):
            if r.info.run_id != current:
                with contextlib.suppress(Exception):  # already gone (another worker cleaned up)
                    self.client.delete_run(r.info.run_id)
        for r in self._search(exp, f"tags.`{KEY_TAG}` = '{key}' and tags.`mlflow.parentRunId` != '{current}'"):
            self.client.set_tag(r.info.run_id, "mlflow.parentRunId", current)
        return current

    def study_runs(self, experiment_id: str, key: str) -> list[Any]:
        """Every trial run of the study, under whichever parent."""
        return self._search(experiment_id, f"tags.`{KEY_TAG}` = '{key}' and tags.`optuna.trial` != ''")

    def _search(self, experiment_id: str, filter_string: str) -> list[Any]:
        out, token = [], None
        while True:
            page = self.client.search_runs([experiment_id], filter_string=filter_string, max_results=5000,
                                           page_token=token)
            out += list(page)
            token = page.token
            if not token:
                return out

    # ------------------------------------------------------------ trials
    def log_trial(self, experiment_id: str, parent_run_id: str, number: int, *, params: Mapping[str, Any],
                  metrics: Mapping[str, float], tags: Mapping[str, str], status: str = "FINISHED",
                  run_name: str | None = None) -> str:
        """One nested run for one trial → its run id.

        Three calls straight to the tracking store (create with tags, one batch of params and
        metrics, finish): the client's per-call wrappers (context tags from git, telemetry) cost
        ~15 ms a run here and add nothing a trial needs. Keys are servetune's own, valid names."""
        from mlflow.entities import Metric, Param, RunStatus, RunTag

        now = int(time.time() * 1000)
        name = run_name or f"trial-{number:04d}"
        all_tags = {"mlflow.parentRunId": parent_run_id, "mlflow.runName": name,
                    "servetune.code_version": self.code_version, "optuna.trial": str(number), **tags}
        run = self.store.create_run(experiment_id, user_id=self.user, start_time=now,
                                    tags=[RunTag(k, str(v)[:8000]) for k, v in all_tags.items()],
                                    run_name=name)
        rid = run.info.run_id
        ms = [Metric(k, float(v), now, 0) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)]
        ps = [Param(k, _param(v)[:6000]) for k, v in params.items()]
        for i in range(0, max(len(ps), 1), 100):  # a store takes <= 100 params per batch
            self.store.log_batch(rid, metrics=ms if i == 0 else [], params=ps[i:i + 100], tags=[])
        self.store.update_run_info(rid, RunStatus.from_string(status), int(time.time() * 1000), None)
        return rid

    def log_artifacts(self, run_id: str, paths: list[Path], artifact_path: str | None = None) -> None:
        for p in paths:
            self.client.log_artifact(run_id, str(p), artifact_path)

    def finish(self, run_id: str) -> None:
        self.client.set_terminated(run_id, status="FINISHED")

    def trial_run_id(self, experiment_id: str, parent_run_id: str, number: int) -> str | None:
        """The run of trial ``number`` under the parent (the latest, if a retry logged twice)."""
        runs = self.client.search_runs([experiment_id], filter_string=(
            f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`optuna.trial` = '{number}'"),
            order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0].info.run_id if runs else None

    def child_runs(self, experiment_id: str, parent_run_id: str) -> list[Any]:
        return self.client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                       max_results=10000)


@contextlib.contextmanager
def _quiet():
    """MLflow prints migration chatter on first use of a store; keep the terminal clean."""
    _quiet_loggers()
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _quiet_loggers() -> None:
    import logging

    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
