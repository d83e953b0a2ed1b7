"""Static plots (matplotlib, Agg backend): TTFT/TPOT CDFs and optimisation history as PNG.

kaleido is not installed, so PNGs never come from plotly; the HTML report embeds these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _style(ax) -> None:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def latency_cdf_png(records: Mapping[str, pd.DataFrame], path: Path, title: str = "") -> Path:
    """Empirical CDFs of TTFT and TPOT (ms) per labelled run, side by side, saved as PNG."""
    from tuner.scorecard import latencies_ms

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, rec in records.items():
        ttft, tpot, _ = latencies_ms(rec)
        for ax, x in zip(axes, (ttft, tpot), strict=True):
            x = np.sort(x[np.isfinite(x)])
            if len(x):
                ax.step(x, np.arange(1, len(x) + 1) / len(x), where="post", label=label)
    for ax, name in zip(axes, ("TTFT (ms)", "TPOT (ms)"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("fraction of requests")
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
