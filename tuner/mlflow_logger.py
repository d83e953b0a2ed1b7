"""A logger process that writes trial runs to MLflow off the trial loop.

MLflow's SQLAlchemy store spends ~50-60 ms of CPU per run (create, one ``log_batch``, set
terminated), more than the simulation of a small workload. A worker hands each trial's run to
this process as one JSON line on its stdin (~0.1 ms) and goes on; the process logs runs in order
and exits when its stdin closes, so a worker that dies still gets its last runs logged.

    python -m tuner.mlflow_logger TRACKING_URI [STATS_JSON]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

PROCESS_MIN_TRIALS = 50
"""``auto`` uses the logger process when a run has at least this many trials ahead: its start
(importing MLflow, seconds) is repaid by ~50 ms saved per trial."""
PROCESS_MIN_CPUS = 4
"""... and when the machine has this many CPUs: on 2 cores the logger only steals CPU from the
sampler and the simulation (measured: same trials/s as inline)."""


class InlineLogger:
    """Logs each run in the calling process (few trials: no process start-up to pay)."""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker

    def submit(self, experiment_id: str, parent_run_id: str, number: int, **kw: Any) -> None:
        self.tracker.log_trial(experiment_id, parent_run_id, number, **kw)

    def close(self, timeout: float | None = None) -> None:
        pass


def make_logger(mode: str, tracker: Any, trials_ahead: int, stats_path: str | None = None) -> Any:
    """``inline``, ``process`` or ``auto`` (process when ``trials_ahead >= PROCESS_MIN_TRIALS`` and the
    machine has ``PROCESS_MIN_CPUS``)."""
    if mode not in ("auto", "inline", "process"):
        raise ValueError(f"--mlflow-logger {mode!r}: choose auto, inline or process")
    import os

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if mode == "process" or (mode == "auto" and trials_ahead >= PROCESS_MIN_TRIALS and cpus >= PROCESS_MIN_CPUS):
        return BackgroundLogger(tracker.uri, stats_path)
    return InlineLogger(tracker)


class BackgroundLogger:
    """Client side: ``submit`` a run, ``close`` waits until every run is in the store."""

    def __init__(self, uri: str, stats_path: str | None = None) -> None:
        args = [sys.executable, "-m", "tuner.mlflow_logger", uri] + ([stats_path] if stats_path else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, text=True, bufsize=1)
        self.sent = 0

    def submit(self, experiment_id: str, parent_run_id: str, number: int, *, params: Mapping[str, Any],
               metrics: Mapping[str, float], tags: Mapping[str, str], status: str) -> None:
        line = json.dumps({"experiment_id": experiment_id, "parent_run_id": parent_run_id, "number": number,
                           "params": dict(params), "metrics": dict(metrics), "tags": dict(tags), "status": status},
                          default=str, allow_nan=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.sent += 1

    def close(self, timeout: float | None = 600) -> None:
        """Flush and wait; RuntimeError if the logger failed (its error is on stderr)."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        rc = self.proc.wait(timeout)
        if rc != 0:
            raise RuntimeError(f"MLflow logger process failed (exit {rc}) after {self.sent} submitted runs")


def main(argv: list[str]) -> int:
    import signal

    from tuner.tracking import Tracker

    # Ctrl-C reaches the whole process group: this process stops when its worker closes stdin,
    # after logging every run it was sent
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    tracker = Tracker(argv[0])
    times: list[float] = []
    for line in sys.stdin:
        if not line.strip():
            continue
        r = json.loads(line)
        t = time.perf_counter()
        tracker.log_trial(r["experiment_id"], r["parent_run_id"], r["number"], params=r["params"],
                          metrics=r["metrics"], tags=r["tags"], status=r["status"])
        times.append(time.perf_counter() - t)
    if len(argv) > 1:
        with open(argv[1], "w") as f:
            json.dump({"runs": len(times), "seconds": times}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
