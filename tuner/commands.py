"""``servetune tune | export | report``: run a study, export its winner, write its HTML report.

optuna, mlflow, plotly and matplotlib are imported inside the commands (fast ``--help``).
"""

from __future__ import annotations

import math
from pathlib import Path

import typer

STUDY_HELP = ("A study file (studies/*.yaml, docs/studies.md) or a preset name: latency-critical, "
              "throughput-heavy, cost-sensitive, fairness-critical.")
STORAGE_HELP = ("Optuna storage: a journal file path (default .servetune/optuna.journal), sqlite:///FILE.db, "
                "or an RDB URL such as postgresql://user:pw@host/db (many machines).")
MAX_ROWS = 10
"""Most Pareto trials listed in the summary (spread along the first objective)."""
MLFLOW_HELP = "MLflow tracking URI (default sqlite:///.servetune/mlflow.db, artifacts in .servetune/mlartifacts)."


def _fmt(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def tune_cmd(
    study_file: str = typer.Argument(..., metavar="STUDY", help=STUDY_HELP),
    trials: int | None = typer.Option(None, "--trials", "-n", min=1,
                                      help="TOTAL finished trials the study should reach (COMPLETE + PRUNED + FAIL); "
                                           "rerunning resumes. Default: the study file's trials."),
    timeout: float | None = typer.Option(None, "--timeout", min=0, help="Start no new trial after S seconds."),
    storage: str | None = typer.Option(None, "--storage", help=STORAGE_HELP),
    mlflow_uri: str | None = typer.Option(None, "--mlflow-uri", help=MLFLOW_HELP),
    n_jobs: int = typer.Option(1, "--n-jobs", "-j", min=1, help="Worker PROCESSES on this machine, same storage."),
    backend: str = typer.Option("sim", "--backend", help="sim, vllm or sglang."),
    seed: int | None = typer.Option(None, "--seed", help="Sampler + simulation seed (default: the study file's)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Re-run trials left RUNNING by a killed worker."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    mlflow_logger: str = typer.Option("auto", "--mlflow-logger",
                                      help="inline: log each trial in the worker; process: a logger process per "
                                           "worker takes MLflow's ~50 ms/run off the loop; auto: process from 50 trials."),
    verify_top: int = typer.Option(0, "--verify-top", min=0,
                                   help="After the study, re-run the K best policies on --verify-backend and log "
                                        "simulated vs measured scorecards (with the error) to MLflow."),
    verify_backend: str = typer.Option("vllm", "--verify-backend", help="Backend for --verify-top (vllm, sglang)."),
) -> None:
    """Run (or resume) a study: search the policy space, log every trial to MLflow, print the
    best policy (or Pareto front) against the engine defaults."""
    from backends.registry import get_backend
    from tuner.space import defaults_outside
    from tuner.storage import mask_url
    from tuner.study import TuneOptions
    from tuner.study_spec import load_study
    from tuner.tracking import Tracker
    from tuner.tune import log_best_artifacts, tune

    spec = load_study(study_file)
    for note in spec.notes:  # what runnable_on: took out of the search
        typer.echo(f"runnable_on {spec.runnable_on}: {note}")
    for note in defaults_outside(spec.search, spec.base_policy()):
        typer.echo(f"note: {note}")
    if mlflow_logger not in ("auto", "inline", "process"):
        raise ValueError(f"--mlflow-logger {mlflow_logger!r}: choose auto, inline or process")
    study_backend = get_backend(backend)  # fail fast (exit 2) on an unknown or missing backend
    checker = get_backend(verify_backend) if verify_top else None  # and on a missing verify engine
    for b in (study_backend, checker):  # on a model / GPU it does not know, or an engine not installed
        if hasattr(b, "check_deployment"):
            b.check_deployment(spec.deployment)
    if any(hasattr(b, "check_workload") for b in (study_backend, checker)):  # a workload it cannot send
        w = spec.load_workload()
        for b in (study_backend, checker):
            if hasattr(b, "check_workload"):
                b.check_workload(w)
    if mlflow_uri:  # unreachable / unusable: one line before the study storage is created
        Tracker(mlflow_uri).check()
    opts = TuneOptions(trials=trials, timeout_s=timeout, storage=storage, mlflow_uri=mlflow_uri, n_jobs=n_jobs,
                       backend=backend, seed=seed, retry_failed=retry_failed,
                       mlflow_logger=mlflow_logger)
    try:
        res = tune(spec, opts, progress=progress, backend=study_backend if n_jobs <= 1 else None)
        if res.stale:
            typer.echo(f"marked {len(res.stale)} stale trial(s) as FAIL: {res.stale}"
                       + (" (retried)" if retry_failed else " (use --retry-failed to re-run them)"))
        log_best_artifacts(res, opts, backend=study_backend)
        _print_summary(res)
        if checker is not None:
            from tuner.verify import print_verifications
            from tuner.verify import verify_top as run_verify

            print_verifications(run_verify(res, opts, verify_top, checker, study_backend), verify_backend, typer.echo)
    finally:
        for b in (study_backend, checker):
            if hasattr(b, "close"):
                b.close()
    typer.echo(f"study {spec.name!r}: {res.n_finished} finished trials in storage "
               f"{mask_url(storage) if storage else '.servetune/optuna.journal'} ({res.wall_s:.1f} s this run)")
    uri = mask_url(Tracker(mlflow_uri).uri) if mlflow_uri else "sqlite:///.servetune/mlflow.db"
    typer.echo(f"MLflow: {uri} experiment {spec.name!r}; browse with `mlflow ui --backend-store-uri {uri}`"
               + ("" if mlflow_uri else " (from this folder)"))
    typer.echo(f"next: servetune export {study_file}" + (f" --storage {mask_url(storage)}" if storage else ""))


def _print_summary(res) -> None:
    from rich.console import Console
    from rich.table import Table

    from tuner.tune import gain_pct, is_feasible, trial_policy

    spec = res.spec
    table = Table(title=f"{spec.name}: " + ("best trial" if not spec.multi_objective else
                                            f"Pareto front ({len(res.best)} trials)")
                  + ("" if res.feasible else " (NO trial met the constraints)"))
    table.add_column("trial", justify="right")
    for o in spec.objectives:
        table.add_column(f"{o.name} ({o.direction[:3]})", justify="right")
        table.add_column("gain", justify="right")
    table.add_column("feasible")
    d = res.default
    best = res.best
    if spec.multi_objective and len(best) > MAX_ROWS:  # the widest spread along the first objective
        best = sorted(best, key=lambda t: t.values[0])
        best = [best[round(i * (len(best) - 1) / (MAX_ROWS - 1))] for i in range(MAX_ROWS)]
    rows = ([d] if d is not None else []) + [t for t in best if d is None or t.number != d.number]
    base = spec.base_policy()
    changes = []
    for t in rows:
        cells = [str(t.number) + (" (default)" if d is not None and t.number == d.number else "")]
        for i, o in enumerate(spec.objectives):
            v = t.values[i]
            g = gain_pct(v, d.values[i], o.direction) if d is not None else float("nan")
            cells += [_fmt(v), "-" if math.isnan(g) else f"{g:+.1f}%"]
        feas = is_feasible(t)
        cells.append("yes" if feas else "no")
        table.add_row(*cells)
        if d is None or t.number != d.number:
            diff = trial_policy(spec, t).diff(base)
            changes.append(f"trial {t.number} changes: " + (", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in diff.items()) or "nothing"))
    console = Console()
    console.print(table)
    for line in changes:
        console.print(line, highlight=False, soft_wrap=True)


def export_cmd(
    study_file: str = typer.Argument(..., metavar="STUDY", help=STUDY_HELP),
    storage: str | None = typer.Option(None, "--storage", help=STORAGE_HELP),
    trial: int | None = typer.Option(None, "--trial", help="Export this trial (e.g. a chosen Pareto point)."),
    out: Path = typer.Option(Path("servetune-export"), "--out", "-o", help="Output folder."),
) -> None:
    """Write the best trial (or --trial N) as policy.yaml plus vllm.sh and sglang.sh launch scripts.

    Each script launches the best trial its engine runs as simulated (every changed knob maps to
    a flag) and states that trial's own values and gain. When that is not the exported trial
    (it needs knobs the engine cannot express, e.g. queue=edf or kv_watermark on vLLM),
    policy.yaml says so ("servetune-only" when no engine can run it) and policy-vllm.yaml /
    policy-sglang.yaml hold the policy the script runs. With --trial N the scripts launch trial N
    and, if an engine cannot run it as simulated, say so and claim no simulated value for it.
    A disaggregated policy's script starts one server per call: vllm.sh prefill | decode."""
    from tuner.export import export
    from tuner.study import existing_study
    from tuner.study_spec import load_study

    spec = load_study(study_file)
    study = existing_study(spec, storage)
    done = export(spec, study, out, trial)
    for line in done.summary:
        typer.echo(line)
    for p in done.paths:
        typer.echo(f"wrote {p}")


def report_cmd(
    study_file: str = typer.Argument(..., metavar="STUDY", help=STUDY_HELP),
    storage: str | None = typer.Option(None, "--storage", help=STORAGE_HELP),
    mlflow_uri: str | None = typer.Option(None, "--mlflow-uri", help=MLFLOW_HELP),
    out: Path = typer.Option(Path("servetune-report"), "--out", "-o", help="Output folder."),
    backend: str = typer.Option("sim", "--backend", help="Backend to re-run best and default for the CDFs."),
) -> None:
    """Write a self-contained HTML report (Pareto front or best-so-far, history, knob importances,
    latency CDFs of best vs default, scorecards) and log it to the study's MLflow parent run."""
    from tuner.report import write_report
    from tuner.study import existing_study
    from tuner.study_spec import load_study

    spec = load_study(study_file)
    study = existing_study(spec, storage)
    path = write_report(spec, study, out, backend=backend, mlflow_uri=mlflow_uri)
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("tune")(tune_cmd)
    app.command("export")(export_cmd)
    app.command("report")(report_cmd)
