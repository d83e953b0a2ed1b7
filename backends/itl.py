"""Inter-token latency (ITL): the gaps between a request's successive streamed outputs, as a histogram.

An ITL sample is the time between two successive deliveries of output tokens on one request's
stream; the first token's wait is TTFT, not an ITL sample. The tokens an engine step produces for
one request (several with speculative decoding) arrive together: one sample per step in which the
request produced tokens, as a streaming client (``vllm bench serve``, inference-perf) measures it.
Where TPOT averages a request's gaps, the ITL percentiles show the stalls: a decode step that also
runs a prefill chunk, a preempted or paged-out request waiting to run again.

The histogram has ``PER_DECADE`` log-spaced bins per decade from ``LOW_S`` to ``HIGH_S`` (gaps
outside are counted in the end bins), weighted counts and the exact weighted sum of the gaps, so a
run of millions of tokens costs a few kB, its mean is exact, its percentiles are within a bin
(about 2.3 %), and instances merge by adding counts. The simulator fills one through
``backends.sim.itl_counter.ITLCounter``, a live replay from its measured gaps (``from_gaps``).
All times in seconds unless a name says ms.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

LOW_S = 1e-5
"""Lower edge of the first bin, s (10 µs)."""
DECADES = 8
"""Decades covered: ``LOW_S`` to ``HIGH_S`` (1000 s)."""
PER_DECADE = 100
"""Bins per decade: each bin spans a factor 10**(1/100) ≈ 1.023."""
N_BINS = DECADES * PER_DECADE
HIGH_S = LOW_S * 10.0**DECADES
EDGES_S = LOW_S * 10.0 ** (np.arange(N_BINS + 1) / PER_DECADE)
"""Bin edges, s (``N_BINS`` + 1)."""
_LOG_LOW = math.log10(LOW_S)


def bins_of(gaps_s: np.ndarray) -> np.ndarray:
    """The bin of each gap, s (clamped to the first and last bin)."""
    return np.clip(((np.log10(np.maximum(gaps_s, LOW_S)) - _LOG_LOW) * PER_DECADE).astype(np.int64), 0, N_BINS - 1)


@dataclass(frozen=True, slots=True)
class ITLHistogram:
    """ITL samples of one run: weighted counts per bin (``EDGES_S``) and their exact sum, s."""

    counts: np.ndarray
    total_s: float

    def __post_init__(self) -> None:
        if self.counts.shape != (N_BINS,) or (self.counts < 0).any():
            raise ValueError(f"ITLHistogram: counts must be {N_BINS} non-negative weights")
        self.counts.setflags(write=False)

    @property
    def n(self) -> float:
        """Samples (weighted)."""
        return float(self.counts.sum())

    def mean_ms(self) -> float:
        n = self.n
        return self.total_s / n * 1e3 if n > 0 else float("nan")

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile (0-100), ms: linear within the bin, in log space."""
        n = self.n
        if n <= 0:
            return float("nan")
        cum = np.cumsum(self.counts)
        target = q / 100.0 * n
        i = int(np.searchsorted(cum, target, side="left"))
        i = min(i, N_BINS - 1)
        below = cum[i - 1] if i else 0.0
        frac = (target - below) / self.counts[i] if self.counts[i] > 0 else 0.5
        frac = min(max(frac, 0.0), 1.0)
        return float(LOW_S * 10.0 ** ((i + frac) / PER_DECADE) * 1e3)

    def to_frame(self):
        """The non-empty bins as a table: ``lo_ms``, ``hi_ms`` (bin edges), ``count`` (weighted
        samples) and ``cum_frac`` (share of samples at or below ``hi_ms``)."""
        import pandas as pd

        nz = np.flatnonzero(self.counts)
        cum = np.cumsum(self.counts)[nz] / self.n
        return pd.DataFrame({"lo_ms": EDGES_S[nz] * 1e3, "hi_ms": EDGES_S[nz + 1] * 1e3,
                             "count": self.counts[nz], "cum_frac": cum})

    @classmethod
    def from_gaps(cls, gaps_s: Iterable[float]) -> ITLHistogram | None:
        """The histogram of measured gaps, s (None when there are none)."""
        g = np.asarray(list(gaps_s), dtype=float)
        g = g[np.isfinite(g)]
        if g.size == 0:
            return None
        return cls(np.bincount(bins_of(g), minlength=N_BINS).astype(float), float(g.sum()))

    @classmethod
    def merge(cls, hists: Iterable[ITLHistogram | None]) -> ITLHistogram | None:
        """The samples of several instances together (None when none has any)."""
        hs = [h for h in hists if h is not None]
        if not hs:
            return None
        return cls(np.sum([h.counts for h in hs], axis=0), float(sum(h.total_s for h in hs)))


def write_itl_csv(itl: ITLHistogram | None, path) -> bool:
    """Write ``itl.to_frame()`` to ``path`` (CSV) when the run has an ITL histogram; whether it did."""
    if itl is None:
        return False
    itl.to_frame().to_csv(path, index=False, float_format="%.6g")
    return True


__all__ = ["DECADES", "EDGES_S", "HIGH_S", "ITLHistogram", "LOW_S", "N_BINS", "PER_DECADE",
           "bins_of", "write_itl_csv"]
