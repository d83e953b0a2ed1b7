"""Static plots (matplotlib, Agg backend): TTFT/TPOT/ITL CDFs and optimisation history as PNG.

kaleido is not installed, so PNGs never come from plotly; the HTML report embeds these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from backends.base import RunResult


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(ax) -> None:
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # (an empty panel: no legend, no warning)
        ax.legend(fontsize=8)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plain_log_ticks(ax) -> None:
    """Log x axis labelled 10, 20, 50, 100, ... (not 2 x 10^1, which overlap on a narrow range)."""
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))


def latency_cdf_png(runs: Mapping[str, RunResult], path: Path, title: str = "") -> Path:
    """CDFs per labelled run, side by side, saved as PNG: TTFT and TPOT (ms) over requests, and
    ITL (ms) over tokens (from the run's ITL histogram, ``backends.itl``; panel empty without one)."""
    from tuner.scorecard import latencies_ms

    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for label, res in runs.items():
        ttft, tpot, _ = latencies_ms(res.records)
        for ax, x in zip(axes, (ttft, tpot), strict=False):
            x = np.sort(x[np.isfinite(x)])
            if len(x):
                ax.step(x, np.arange(1, len(x) + 1) / len(x), where="post", label=label)
        itl = res.telemetry.itl
        if itl is not None and itl.n > 0:
            bins = itl.to_frame()  # the non-empty bins: share at or below each upper edge
            axes[2].step(bins["hi_ms"], bins["cum_frac"], where="post", label=label)
    for ax, name, of in zip(axes, ("TTFT (ms)", "TPOT (ms)", "ITL (ms)"), ("requests", "requests", "tokens"),
                            strict=True):
        ax.set_xscale("log")
        _plain_log_ticks(ax)
        ax.set_xlabel(name)
        ax.set_ylabel(f"fraction of {of}")
        _style(ax)
    if title:
        fig.suptitle(title)
    return _save(plt, fig, path)


def history_png(numbers: Sequence[int], values: Sequence[float], direction: str, path: Path,
                name: str = "objective") -> Path:
    """Objective value per trial and the best so far."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    v = np.asarray(values, float)
    ax.scatter(numbers, v, s=12, label=name)
    best = np.maximum.accumulate(v) if direction == "maximize" else np.minimum.accumulate(v)
    ax.step(numbers, best, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(name)
    _style(ax)
    return _save(plt, fig, path)


def pareto_png(points: Sequence[Sequence[float]], front: Sequence[Sequence[float]], names: Sequence[str],
               path: Path) -> Path:
    """The first two objectives of every trial, with the Pareto front highlighted."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    p = np.asarray(points, float).reshape(-1, len(names))
    f = np.asarray(front, float).reshape(-1, len(names))
    ax.scatter(p[:, 0], p[:, 1], s=12, alpha=0.5, label="trials")
    ax.scatter(f[:, 0], f[:, 1], s=30, color="C3", label="Pareto front")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    _style(ax)
    return _save(plt, fig, path)
