"""Overhead of the tuning loop per trial: sampler, storage, MLflow, simulation.

Runs a 200-trial single-objective study (3 knobs, pruning off) on a tiny workload (the first
200 Azure conversation requests) in a temporary project folder, with the default journal
storage (or --storage sqlite) and the default MLflow SQLite store, in one process, and prints
trials/s and the mean / p50 / p95 milliseconds per trial of each part.

    python benchmarks/bench_tune_overhead.py [--trials 200] [--storage journal|sqlite] [--mlflow-logger process|inline]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

STUDY = {
    "schema_version": 1,
    "name": "bench-overhead",
    "workload": {"source": "azure-conv", "first_n": 200, "rate": 12.0},
    "deployment": {"model": "llama-3.1-8b", "gpu": "h100-sxm", "n_gpus": 1, "engine": "vllm-v1"},
    "slos": {"chat": {"ttft_ms": 300, "tpot_ms": 40}},
    "objectives": [{"metric": "goodput", "direction": "maximize"}],
    "constraints": ["ttft_p99_ms <= 2000"],
    "search": {"max_num_batched_tokens": {"low": 256, "high": 4096, "log": True},
               "max_num_seqs": {"low": 8, "high": 256, "log": True}, "queue": ["fcfs", "sjf", "edf"]},
    "pruning": False,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--storage", choices=("journal", "sqlite"), default="journal")
    ap.add_argument("--mlflow-logger", choices=("process", "inline"), default="process")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="servetune-bench-"))
    os.chdir(tmp)
    (tmp / "study.yaml").write_text(yaml.safe_dump(STUDY))

    from tuner.evaluate import Timings
    from tuner.study import TuneOptions, Worker, prepare
    from tuner.study_spec import load_study
    from tuner.tracking import Tracker

    spec = load_study(tmp / "study.yaml")
    storage = f"sqlite:///{tmp / 'optuna.db'}" if args.storage == "sqlite" else None
    opts = TuneOptions(trials=args.trials, storage=storage, mlflow_logger=args.mlflow_logger)
    t = time.perf_counter()
    tracker = Tracker()
    study, _ = prepare(spec, opts, tracker)
    setup_s = time.perf_counter() - t

    per: dict[str, list[float]] = {k: [] for k in ("sampler", "storage", "mlflow", "simulation", "total")}
    worker = Worker(spec, opts, tracker, study=study)
    worker.logger_stats = str(tmp / "logger_stats.json")
    last = Timings()

    def on_trial(number, outcome) -> None:
        now = worker.timings
        for k in ("sampler", "storage", "mlflow", "simulation"):
            per[k].append((getattr(now, k) - getattr(last, k)) * 1e3)
            setattr(last, k, getattr(now, k))
        per["total"].append((time.perf_counter() - on_trial.t) * 1e3)
        on_trial.t = time.perf_counter()

    on_trial.t = time.perf_counter()
    t = time.perf_counter()
    worker.run(on_trial=on_trial)
    wall = time.perf_counter() - t  # includes the final wait for the logger process
    n = len(per["total"])
    print(f"{n} trials, storage={args.storage}, MLflow=sqlite (WAL), workload 200 requests; setup {setup_s:.1f} s "
          f"(MLflow store + study creation)")
    print(f"trials/s: {n / wall:.2f}   wall {wall:.1f} s")
    print(f"{'part':<12}{'mean ms':>10}{'p50 ms':>10}{'p95 ms':>10}{'share':>8}")
    tot = sum(per["total"])
    for k, v in per.items():
        a = np.asarray(v)
        print(f"{k:<12}{a.mean():>10.1f}{np.percentile(a, 50):>10.1f}{np.percentile(a, 95):>10.1f}"
              f"{a.sum() / tot * 100:>7.0f}%")
    other = np.asarray(per["total"]) - sum(np.asarray(per[k]) for k in ("sampler", "storage", "mlflow", "simulation"))
    print(f"{'other':<12}{other.mean():>10.1f}{np.percentile(other, 50):>10.1f}{np.percentile(other, 95):>10.1f}"
          f"{other.sum() / tot * 100:>7.0f}%   (scorecard bookkeeping, progress callback)")
    import json

    stats = tmp / "logger_stats.json"
    if not stats.exists():
        print("mlflow above = logging each run inline (create run, log_batch, set terminated)")
    else:
        lt = np.asarray(json.loads(stats.read_text())["seconds"]) * 1e3
        print(f"mlflow above = handing each run to the logger process; the logger process itself spent "
              f"{lt.mean():.1f} ms per run (p50 {np.percentile(lt, 50):.1f}, p95 {np.percentile(lt, 95):.1f}) in "
              f"parallel, and the loop waited {worker.timings.mlflow_drain * 1e3:.0f} ms at the end for it to finish")
    print(f"first 20 vs last 20 trials, sampler ms: {np.mean(per['sampler'][:20]):.1f} -> "
          f"{np.mean(per['sampler'][-20:]):.1f} (TPE cost grows with the history)")


if __name__ == "__main__":
    main()
