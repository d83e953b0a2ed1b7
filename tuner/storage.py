"""Where studies live: Optuna storage URLs, the project-local ``.servetune/`` folder, stale trials.

Default storage is an embedded journal file ``.servetune/optuna.journal`` (many worker processes
on one machine). ``sqlite:///path.db`` works too (WAL mode is set once on the file), and any
RDB URL (``postgresql://user:pw@host/db``) serves workers on many machines. Passwords in URLs
are masked (``mask_url``) before anything is printed or logged.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

WORKDIR = ".servetune"
JOURNAL_NAME = "optuna.journal"
HEARTBEAT_S = 30
"""RDB heartbeat interval, s; a RUNNING trial without a heartbeat for 4x this is stale."""


def workdir(base: str | Path | None = None) -> Path:
    """The project-local folder (created on first use) under ``base`` (default: cwd)."""
    d = Path(base or Path.cwd()) / WORKDIR
    d.mkdir(parents=True, exist_ok=True)
    return d


def default_storage_url() -> str:
    return str(workdir() / JOURNAL_NAME)


def mask_url(url: str) -> str:
    """``scheme://user:secret@host`` → ``scheme://user:***@host`` (also ``password=`` query args)."""
    out = re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", url)
    return re.sub(r"(?i)(password=)[^&;]*", r"\1***", out)


def is_journal(url: str) -> bool:
    return "://" not in url


def _sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    return None


def set_wal(db: Path) -> None:
    """Put a SQLite file in WAL mode (persistent on the file; done once, cheap if already set)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(str(db), timeout=30)
    try:
        if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


def sqlite_synchronous_normal(engine: Any) -> None:
    """Make every connection of a SQLAlchemy SQLite engine use ``synchronous=NORMAL``.

    In WAL mode that is still crash-safe (no corruption; a power cut may lose the last
    commits) and saves an fsync per commit: ~3 ms here, and an MLflow run makes ~10 commits."""
    if engine is None or engine.dialect.name != "sqlite":
        return
    from sqlalchemy import event

    def _on_connect(dbapi_con: Any, _record: Any) -> None:
        dbapi_con.execute("PRAGMA synchronous=NORMAL")

    event.listen(engine, "connect", _on_connect)
    engine.dispose()  # pooled connections reopen with the pragma


def open_storage(url: str | None) -> Any:
    """An Optuna storage object for a journal file path, ``sqlite:///...`` or another RDB URL."""
    import optuna
    import sqlalchemy.exc
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    url = url or default_storage_url()
    if is_journal(url):
        p = Path(url).expanduser()
        p.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(p)))
    db = _sqlite_path(url)
    if db is not None:
        try:
            # processes opening a fresh file together race to create Optuna's schema (alembic:
            # "UNIQUE constraint failed: alembic_version"): one creates it, the others wait here
            with file_lock(db.with_name(db.name + ".lock")):
                set_wal(db)
                storage = RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}},
                                     heartbeat_interval=HEARTBEAT_S, grace_period=4 * HEARTBEAT_S)
        except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError, sqlite3.Error) as e:
            raise ValueError(f"--storage {url}: cannot open ({str(e).splitlines()[0]})") from None
        sqlite_synchronous_normal(storage.engine)
        return storage
    try:
        for attempt in range(5):
            try:
                return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=4 * HEARTBEAT_S)
            except sqlalchemy.exc.IntegrityError:
                # workers starting together on an empty database race to create Optuna's
                # tables: one wins, the others see a duplicate and open what it made
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
    except (ImportError, ModuleNotFoundError) as e:
        raise ValueError(f"--storage {mask_url(url)}: database driver missing ({e}); "
                         "for PostgreSQL: pip install 'servetune[postgres]'") from None
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as e:
        raise ValueError(f"--storage {mask_url(url)}: cannot open ({mask_url(str(e).splitlines()[0])})") from None


def has_heartbeat(storage: Any) -> bool:
    """Whether an (Optuna-wrapped) storage records heartbeats (RDB storages opened here do)."""
    from optuna.storages._heartbeat import BaseHeartbeat

    return isinstance(storage, BaseHeartbeat) and bool(storage.get_heartbeat_interval())


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_stale_trials(study: Any) -> list[int]:
    """Mark RUNNING trials left by dead workers as FAIL; returns their numbers.

    RDB storages: Optuna's heartbeat (``optuna.storages.fail_stale_trials``). Journal files
    have no heartbeat: a RUNNING trial whose ``worker`` attr names this host and a process that
    no longer exists is stale (workers on other hosts cannot share a journal file anyway)."""
    import optuna
    from optuna.trial import TrialState

    storage = study._storage
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not before:
        return []
    rdb = has_heartbeat(storage)
    if rdb:
        optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = str(t.user_attrs.get("worker", ""))
        h, _, pid = w.rpartition(":")
        stale = (h == host and pid.isdigit() and not pid_alive(int(pid))) or (
            not w and not rdb)
        if stale:
            storage.set_trial_system_attr(t._trial_id, "fail_reason", "stale: worker died while running")
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            failed.append(t.number)
    gone = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    return sorted(set(failed) | (before - gone))


@contextlib.contextmanager
def study_lock(study_name: str) -> Iterator[None]:
    """An exclusive file lock (this machine) around 'count trials, then ask for one', so K local
    workers reach exactly the requested total."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", study_name)
    with file_lock(workdir() / f"{safe}.lock"):
        yield


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if missing; processes of this machine wait)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
