"""The simulator's inter-token-latency accumulator (compiled with the event loop: see setup.py).

The engine adds each decode step's gap (``add``) and each closed-form decode segment's linearly
growing gaps (``add_steps``) straight into the log-spaced bins of ``backends.itl``; a segment's
gaps, which differ by a few per cent, spread evenly over the bins from its first gap's to its
last's. Steady decoding repeats a gap's bin, so each entry point remembers its last bin's edges
and takes a logarithm only when a gap leaves them. Counts and sums are exact. Times in seconds.
"""

from __future__ import annotations

import math

import numpy as np

from backends.itl import EDGES_S, LOW_S, N_BINS, PER_DECADE, ITLHistogram

_LOG_LOW = math.log10(LOW_S)
_EDGES: list[float] = [float(e) for e in EDGES_S]


def _bin(gap_s: float) -> int:
    """The bin of a gap of ``gap_s`` seconds (clamped to the first and last bin)."""
    if gap_s <= LOW_S:
        return 0
    i = int((math.log10(gap_s) - _LOG_LOW) * PER_DECADE)
    return i if i < N_BINS else N_BINS - 1


def _edges(b: int) -> tuple[float, float]:
    """The gaps bin ``b`` holds, s: [lo, hi) (the end bins open-ended, as ``_bin`` clamps)."""
    return (_EDGES[b] if b else 0.0), (_EDGES[b + 1] if b < N_BINS - 1 else math.inf)


class ITLCounter:
    """Accumulates ITL samples during one run (mutable; ``freeze`` gives the record)."""

    def __init__(self) -> None:
        self.counts: list[float] = [0.0] * N_BINS
        self.total_s = 0.0
        self._lo = self._hi = 0.0  # edges of the last single gap's bin
        self._b = 0
        self._slo = self._shi = 0.0  # edges of the last segment's first bin
        self._sb = 0

    def add(self, gap_s: float, weight: float) -> None:
        """``weight`` samples of ``gap_s`` seconds each (a step's gap for each of its decoding
        requests that had a token at its start)."""
        if weight > 0:
            if not self._lo <= gap_s < self._hi:
                self._b = _bin(gap_s)
                self._lo, self._hi = _edges(self._b)
            self.counts[self._b] += weight
            self.total_s += gap_s * weight

    def add_steps(self, first_s: float, last_s: float, steps: float, weight: float, wait_s: float = 0.0) -> None:
        """``steps`` consecutive steps whose gaps grow linearly from ``first_s`` to ``last_s``
        (a decode segment: each step reads one more token of context per request), the first one
        ``wait_s`` longer (a stall before it), ``weight`` samples per step."""
        if wait_s > 0:
            if steps <= 1:
                self.add(first_s + wait_s, steps * weight)
                return
            self.add(first_s + wait_s, weight)
            first_s += (last_s - first_s) / (steps - 1)
            steps -= 1
        w = steps * weight
        if w <= 0:
            return
        if first_s > last_s:
            first_s, last_s = last_s, first_s
        if not self._slo <= first_s < self._shi:
            self._sb = _bin(first_s)
            self._slo, self._shi = _edges(self._sb)
        b0 = self._sb
        if last_s < self._shi:
            self.counts[b0] += w
        else:
            b1 = _bin(last_s)
            share = w / (b1 - b0 + 1)
            for b in range(b0, b1 + 1):
                self.counts[b] += share
        self.total_s += 0.5 * (first_s + last_s) * w

    def freeze(self) -> ITLHistogram | None:
        """The record of what was added (None when nothing was)."""
        if not any(self.counts):  # (every sample adds a positive weight to a bin)
            return None
        return ITLHistogram(np.asarray(self.counts, dtype=float), self.total_s)


__all__ = ["ITLCounter"]
