"""``servetune calibrate`` and ``servetune fidelity``."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_cmd)
    app.command("fidelity")(fidelity_cmd)


def calibrate_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Catalog model name, or a config.json / model YAML."),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel degree: shapes are divided by it."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda."),
    out: Path = typer.Option(Path("profile.parquet"), "--out", "-o", help="Profile file (.parquet or .csv)."),
    quick: bool = typer.Option(False, "--quick", help="Fewer shapes and repeats (1-2 min for an 8B layer on a 2-core CPU)."),
    device_name: str = typer.Option(None, "--device-name", help="Tag the rows with this GPU (a catalog name or "
                                    "alias, e.g. h100-sxm; default: the device that ran them, as the catalog "
                                    "names it: torch's CUDA name resolved to e.g. h100-sxm, cpu-host on CPU). "
                                    "simulate --profile uses the rows for the --gpu that resolves to it."),
) -> None:
    """Time a model's operators (GEMMs, attention prefill/decode, all-reduce) on this machine
    with torch and write a calibration profile (schema: docs/calibration.md)."""
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
