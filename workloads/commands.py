"""``servetune workloads ...``: list, inspect and export workloads.

User-input errors are raised as one-line ValueError / OSError; ``cli.main`` prints them and
exits 2. matplotlib is imported only when --plot is given.
"""

from __future__ import annotations

from pathlib import Path

import typer

workloads_app = typer.Typer(
    name="workloads",
    help="Bundled traces, synthetic specs and workload files: list, inspect, export.\n\n"
    "A workload is named by a bundled short name (see `servetune workloads list`) or a file: "
    "a YAML spec (docs/workloads.md) or explicit requests (.parquet, .csv, .jsonl).",
    no_args_is_help=True,
)

FIRST_HELP = "Keep only the first N requests (before --rate, as a study's first_n)."
RATE_HELP = "Then rescale time so the mean rate of the kept requests is R req/s (as a study's rate)."
SOURCE_HELP = "A bundled name (azure-conv, mooncake-conv, servegen-reason, sharegpt, ...) or a workload file (.yaml spec, .parquet, .csv, .jsonl)."


@workloads_app.command("list")
def list_cmd() -> None:
    """List the bundled traces and length tables with one-line descriptions."""
    from workloads.registry import BUNDLED

    width = max(len(n) for n in BUNDLED)
    for b in BUNDLED.values():
        typer.echo(f"{b.name.ljust(width)}  {b.kind:<8}  {b.description}")


@workloads_app.command("inspect")
def inspect_cmd(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    plot: Path | None = typer.Option(None, "--plot", help="Save a PNG of the arrival rate over time and length histograms."),
    rate: float | None = typer.Option(None, "--rate", help=RATE_HELP),
    first: int | None = typer.Option(None, "--first", help=FIRST_HELP),
    seed: int | None = typer.Option(None, "--seed", help="Seed for generated workloads (ServeGen, synthetic specs); default: the spec's own, else 0."),
) -> None:
    """Print a workload's statistics; optionally save a plot.

    Shows the request count, span, mean and peak 1-min rate, prompt/output length mean/p50/p90/p99,
    tenants with counts, SLO classes and prefix-block reuse (infinite cache).
    """
    from workloads import stats
    from workloads.registry import BUNDLED, load_cut

    if source in BUNDLED and BUNDLED[source].kind == "lengths":
        if rate is not None or first is not None:
            raise ValueError(f"{source!r} is a length table (no arrivals): --rate/--first do not apply")
        from workloads.traces import load_length_table

        tab = load_length_table(source)
        typer.echo(stats.format_lengths(source, tab.prompt_len, tab.output_len))
        if plot is not None:
            typer.echo(f"plot: {stats.plot_lengths(source, tab.prompt_len, tab.output_len, plot)}")
        return
    w = load_cut(source, seed=seed, first=first, rate=rate)
    typer.echo(stats.format_stats(stats.workload_stats(w)))
    if plot is not None:
        typer.echo(f"plot: {stats.plot_workload(w, plot)}")


@workloads_app.command("export")
def export_cmd(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output file: .parquet (zstd), .csv or .jsonl."),
    rate: float | None = typer.Option(None, "--rate", help=RATE_HELP),
    first: int | None = typer.Option(None, "--first", help=FIRST_HELP),
    seed: int | None = typer.Option(None, "--seed", help="Seed for generated workloads; default: the spec's own, else 0."),
) -> None:
    """Materialise a workload (a spec, a bundled trace or a file) as explicit requests."""
    from workloads.files import write_workload
    from workloads.registry import load_cut

    if out.suffix.lower() not in (".parquet", ".csv", ".jsonl"):
        raise ValueError(f"--out {out}: use a .parquet, .csv or .jsonl file name")
    w = load_cut(source, seed=seed, first=first, rate=rate)
    path = write_workload(w, out)
    typer.echo(f"wrote {w.n:,} requests to {path}")


def register(app: typer.Typer) -> None:
    """Add the ``workloads`` command group to the root app."""
    app.add_typer(workloads_app, name="workloads")
