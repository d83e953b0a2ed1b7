"""Summary statistics of a workload (``servetune workloads inspect``) and its plot.

Rates in req/s, times in s, lengths in tokens. Prefix reuse is the share of prefix-block
references that hit a block seen earlier (an infinite cache, in arrival order).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workloads.workload import Workload, session_roots

TOP_TENANTS = 12


@dataclass(frozen=True, slots=True)
class LengthStats:
    mean: float
    p50: float
    p90: float
    p99: float
    max: int

    @classmethod
    def of(cls, x: np.ndarray) -> LengthStats:
        if not len(x):
            return cls(0.0, 0.0, 0.0, 0.0, 0)
        p50, p90, p99 = np.percentile(x, [50, 90, 99])
        return cls(float(np.mean(x)), float(p50), float(p90), float(p99), int(np.max(x)))


@dataclass(frozen=True, slots=True)
class WorkloadStats:
    name: str
    n: int
    span_s: float
    mean_rate: float
    peak_1min_rate: float
    prompt: LengthStats
    output: LengthStats
    max_output: LengthStats
    tenants: tuple[tuple[str, int], ...]
    slo_classes: tuple[tuple[str, float, float, int], ...]
    prefix_reuse: float | None
    sessions: tuple[int, float, int, float] | None = None
    """Multi-turn sessions: (conversations, mean turns, most turns, mean think time s); None without."""


def session_stats(w: Workload) -> tuple[int, float, int, float] | None:
    """(conversations, mean turns, most turns, mean think s of later turns) of ``w``'s sessions."""
    if not w.has_sessions:
        return None
    turns = np.bincount(session_roots(w.parent), minlength=w.n)[w.parent < 0]  # type: ignore[arg-type,operator]
    later = w.parent >= 0  # type: ignore[operator]
    return len(turns), float(turns.mean()), int(turns.max()), float(w.think_s[later].mean())  # type: ignore[index]


def peak_rate(arrival_s: np.ndarray, window_s: float = 60.0) -> float:
    """Most arrivals in any ``window_s``-second window [t_i, t_i + window_s), divided by window_s."""
    if not len(arrival_s):
        return 0.0
    ends = np.searchsorted(arrival_s, arrival_s + window_s, side="left")
    return float((ends - np.arange(len(arrival_s))).max()) / window_s


def prefix_reuse(w: Workload) -> float | None:
    """Share of block references that hit an earlier block (infinite cache); None without blocks."""
    if w.prefix_ids is None or not len(w.prefix_ids):
        return None
    return 1.0 - len(np.unique(w.prefix_ids)) / len(w.prefix_ids)


def workload_stats(w: Workload) -> WorkloadStats:
    t_counts = np.bincount(w.tenant, minlength=len(w.tenants))
    s_counts = np.bincount(w.slo_class, minlength=len(w.slo_classes))
    order = np.argsort(-t_counts, kind="stable")
    return WorkloadStats(
        name=w.name,
        n=w.n,
        span_s=w.span_s,
        mean_rate=w.rate,
        peak_1min_rate=peak_rate(w.arrival_s),
        prompt=LengthStats.of(w.prompt_len),
        output=LengthStats.of(w.output_len),
        max_output=LengthStats.of(w.max_output),
        tenants=tuple((w.tenants[i], int(t_counts[i])) for i in order if t_counts[i] > 0),
        slo_classes=tuple((c.name, c.ttft_ms, c.tpot_ms, int(s_counts[i])) for i, c in enumerate(w.slo_classes)),
        prefix_reuse=prefix_reuse(w),
        sessions=session_stats(w),
    )


def _len_rows(label: str, s: LengthStats) -> list[tuple[str, str]]:
    return [(label, f"mean {s.mean:,.0f}   p50 {s.p50:,.0f}   p90 {s.p90:,.0f}   p99 {s.p99:,.0f}   max {s.max:,}")]


def format_lengths(name: str, prompt: np.ndarray, output: np.ndarray) -> str:
    """Aligned text for a length table (no arrivals)."""
    rows = [("length table", name), ("pairs", f"{len(prompt):,}")]
    rows += _len_rows("prompt tokens", LengthStats.of(prompt)) + _len_rows("output tokens", LengthStats.of(output))
    return _align(rows)


def _align(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def format_stats(s: WorkloadStats) -> str:
    """Plain aligned text (one fact per line) for the terminal."""
    rows = [
        ("workload", s.name),
        ("requests", f"{s.n:,}"),
        ("span", f"{s.span_s:,.1f} s"),
        ("mean rate", f"{s.mean_rate:,.3f} req/s"),
        ("peak 1-min rate", f"{s.peak_1min_rate:,.3f} req/s"),
    ]
    rows += _len_rows("prompt tokens", s.prompt) + _len_rows("output tokens", s.output)
    rows += _len_rows("max_output", s.max_output)
    shown = ", ".join(f"{name} {count:,}" for name, count in s.tenants[:TOP_TENANTS])
    more = f", ... (+{len(s.tenants) - TOP_TENANTS} more)" if len(s.tenants) > TOP_TENANTS else ""
    rows.append((f"tenants ({len(s.tenants)})", shown + more))
    for name, ttft, tpot, count in s.slo_classes:
        rows.append((f"slo {name}", f"{count:,} req   TTFT <= {ttft:g} ms   TPOT <= {tpot:g} ms"))
    rows.append(("prefix reuse", "no prefix blocks" if s.prefix_reuse is None else f"{s.prefix_reuse:.3f} of block references"))
    if s.sessions is not None:
        conv, mean, most, think = s.sessions
        rows.append(("sessions", f"{conv:,} conversations   turns mean {mean:.1f}  max {most}   think mean {think:.1f} s"))
        rows.append(("", "(a later turn is sent when the previous answer has been read: the rates above count "
                         "it at its conversation's start)"))
    return _align(rows)


def plot_workload(w: Workload, path: str | Path) -> Path:
    """Save a PNG: arrival rate over time (10 s and 60 s bins) and prompt/output length histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax_rate, ax_p, ax_o) = plt.subplots(1, 3, figsize=(15, 4))
    span = max(w.arrival_s[-1] if w.n else 0.0, 1.0)
    for bin_s, style in ((10.0, dict(alpha=0.4, lw=0.8)), (60.0, dict(lw=1.8))):
        edges = np.arange(0.0, span + bin_s, bin_s)
        counts, _ = np.histogram(w.arrival_s, bins=edges)
        ax_rate.stairs(counts / bin_s, edges, label=f"{bin_s:g} s bins", **style)
    ax_rate.set(title=f"{w.name}: arrival rate", xlabel="time (s)", ylabel="req/s")
    ax_rate.legend()
    _hist(ax_p, w.prompt_len, "prompt tokens")
    _hist(ax_o, w.output_len, "output tokens")
    fig.tight_layout()
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p


def plot_lengths(name: str, prompt: np.ndarray, output: np.ndarray, path: str | Path) -> Path:
    """Save a PNG with the prompt and output length histograms of a length table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax_p, ax_o) = plt.subplots(1, 2, figsize=(10, 4))
    _hist(ax_p, prompt, f"{name}: prompt tokens")
    _hist(ax_o, output, f"{name}: output tokens")
    fig.tight_layout()
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return p


def _hist(ax, x: np.ndarray, label: str) -> None:
    ax.hist(x, bins=60, color="tab:blue", alpha=0.8)
    if len(x):
        ax.axvline(float(np.mean(x)), color="k", ls="--", lw=1, label=f"mean {np.mean(x):,.0f}")
        ax.legend()
    ax.set(title=label, xlabel="tokens", ylabel="requests")
