"""Fitted operator curves from a calibration profile (``tuner.calibration.profile``).

Parametric, roofline-shaped fits rather than generic regressors, because the simulator asks for
shapes the profile never measured (a 6,000-token step, a context of 30k tokens) and these forms
extrapolate the way the hardware behaves; a tree ensemble goes flat past the last sample and a
polynomial bends away:

* linear operators (per layer): ``t(n) = lat + (w^p + (s·n)^p)^(1/p)``: a fixed kernel latency,
  a memory-bound floor ``w`` (reading the weights), a compute slope ``s`` per token, joined by a
  smooth max (``p`` fitted per curve in [1.5, 16]). Linear in ``n`` for large ``n``.
* ``attn_prefill`` (per layer): ``t = lat + a·pairs + b·tokens`` (query-key pairs are the FLOPs,
  tokens the KV write), non-negative least squares;
* ``attn_decode`` (per layer): ``t = lat + a·(batch·context) + b·batch``: AFFINE in the summed
  context, which keeps the simulator's closed-form decode segments exact.

``ProfileFit`` holds a profile and memoises every fit on the object, keyed by the group
(model, device, tp); its ``key`` is the profile's content hash (no module-level state).
Times are per layer in SECONDS here (the profile stores ms).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tuner.calibration.profile import ATTN_OPS, BATCH_OPS, LINEAR_OPS, content_hash, normalise, read_profile


@dataclass(frozen=True, slots=True)
class LinearCurve:
    """Per-layer time of one linear operator vs tokens, s (see module doc)."""

    lat: float
    w: float
    s: float
    p: float
    n_min: int
    n_max: int

    def __call__(self, n: float) -> float:
        if n <= 0:
            return 0.0
        return self.lat + (self.w ** self.p + (self.s * n) ** self.p) ** (1.0 / self.p)


@dataclass(frozen=True, slots=True)
class AffineCurve:
    """``lat + a·x + b·y``, s (attention: x = pairs or batch·context, y = tokens or batch)."""

    lat: float
    a: float
    b: float

    def __call__(self, x: float, y: float) -> float:
        return self.lat + self.a * x + self.b * y


def fit_linear_curve(tokens: np.ndarray, time_s: np.ndarray) -> LinearCurve:
    """Least squares on log time (relative error) of the smooth-roofline form."""
    from scipy.optimize import least_squares

    n = np.asarray(tokens, float)
    t = np.asarray(time_s, float)
    if n.size < 3:
        raise ValueError(f"linear curve: need >= 3 points, got {n.size}")
    big = n >= np.percentile(n, 75)
    s0 = max(float(np.median(t[big] / n[big])), 1e-15)
    w0 = max(float(np.min(t)) * 0.7, 1e-9)
    x0 = np.log([w0 * 0.3, w0, s0, 4.0])
    lo = np.log([1e-9, 1e-10, 1e-16, 1.5])
    hi = np.log([1e-2, 1.0, 1e-3, 16.0])

    def model(x, n):
        lat, w, s, p = np.exp(x)
        return lat + (w ** p + (s * n) ** p) ** (1.0 / p)

    sol = least_squares(lambda x: np.log(model(x, n)) - np.log(t), np.clip(x0, lo + 1e-9, hi - 1e-9),
                        bounds=(lo, hi), loss="soft_l1", f_scale=0.05)
    lat, w, s, p = (float(v) for v in np.exp(sol.x))
    return LinearCurve(lat, w, s, p, int(n.min()), int(n.max()))


def fit_affine(x: np.ndarray, y: np.ndarray, t: np.ndarray) -> AffineCurve:
    """Non-negative fit of ``t = lat + a·x + b·y`` weighted for relative error."""
    from scipy.optimize import nnls

    x, y, t = (np.asarray(v, float) for v in (x, y, t))
    if t.size < 3:
        raise ValueError(f"attention curve: need >= 3 points, got {t.size}")
    A = np.stack([np.ones_like(t), x, y], axis=1) / t[:, None]
    coef, _ = nnls(A, np.ones_like(t))
    return AffineCurve(*(float(c) for c in coef))


class ProfileFit:
    """A profile and its fits, memoised on this object (safe to share across simulations:
    fits are pure functions of the profile)."""

    def __init__(self, profile: pd.DataFrame | str | Path) -> None:
        self.df = normalise(profile) if isinstance(profile, pd.DataFrame) else read_profile(profile)
        self.key = content_hash(self.df)
        """Content hash of the profile (12 hex digits)."""
        self._memo: dict[tuple, object] = {}

    def _rows(self, model: str, device: str, tp: int, ops: tuple[str, ...]) -> pd.DataFrame:
        d = self.df
        return d[(d.model == model) & (d.device == device) & (d.tp == tp) & d.op.isin(ops)]

    def groups(self) -> list[tuple[str, str, int]]:
        """(model, device, tp) groups that hold operator or batch rows."""
        if ("groups",) not in self._memo:
            d = self.df[self.df.op != "all_reduce"]
            self._memo[("groups",)] = sorted({(m, g, int(t)) for m, g, t in zip(d.model, d.device, d.tp, strict=True)})
        return list(self._memo[("groups",)])  # type: ignore[arg-type]

    def covers(self, model: str, device: str, tp: int) -> bool:
        """Whether this profile measured (model, device, tp): operator or batch rows."""
        if ("covers",) not in self._memo:
            self._memo[("covers",)] = frozenset(self.groups())
        return (model, device, tp) in self._memo[("covers",)]  # type: ignore[operator]

    def sources(self, model: str, device: str, tp: int) -> list[str]:
        d = self._rows(model, device, tp, (*LINEAR_OPS, *ATTN_OPS, *BATCH_OPS))
        return sorted(set(d.source))

    def linear_curves(self, model: str, device: str, tp: int) -> dict[str, LinearCurve]:
        """Fitted per-layer curves of the linear ops this group measured (>= 3 token counts)."""
        key = ("lin", model, device, tp)
        if key not in self._memo:
            out = {}
            rows = self._rows(model, device, tp, LINEAR_OPS)
            for op, g in rows.groupby("op"):
                g = g.groupby("tokens", as_index=False).time_ms.median()
                if len(g) >= 3:
                    out[str(op)] = fit_linear_curve(g.tokens.to_numpy(), g.time_ms.to_numpy() / 1e3)
            self._memo[key] = out
        return self._memo[key]  # type: ignore[return-value]

    def attention_curves(self, model: str, device: str, tp: int) -> dict[str, AffineCurve]:
        """``attn_prefill`` (x = pairs, y = tokens) and ``attn_decode`` (x = batch·context,
        y = batch) curves, where measured."""
        key = ("attn", model, device, tp)
        if key not in self._memo:
            out = {}
            pre = self._rows(model, device, tp, ("attn_prefill",))
            if len(pre) >= 3:
                tok = pre.batch * pre.chunk
                pairs = tok * (pre.context + (pre.chunk + 1) / 2.0)
                out["attn_prefill"] = fit_affine(pairs.to_numpy(), tok.to_numpy(), pre.time_ms.to_numpy() / 1e3)
            dec = self._rows(model, device, tp, ("attn_decode",))
            if len(dec) >= 3:
                out["attn_decode"] = fit_affine((dec.batch * dec.context).to_numpy(), dec.batch.to_numpy(),
                                                dec.time_ms.to_numpy() / 1e3)
            self._memo[key] = out
        return self._memo[key]  # type: ignore[return-value]

    def efficiency(self, model: str, device: str, tp: int, engine=None):
        """Roofline efficiency fitted to this group's batch rows, else to every row measured on
        ``device`` (batch rows first, then linear-op and all-reduce rows); ``(Efficiency, scope)``
        with scope ``group``, ``device`` or ``none`` (defaults)."""
        from backends.sim.costmodel import Efficiency
        from backends.sim.profiles import fit_efficiency
        from tuner.calibration.profile import to_profile_rows

        key = ("eff", model, device, tp, getattr(engine, "name", None))
        if key in self._memo:
            return self._memo[key]
        d = self.df
        grp = d[(d.model == model) & (d.device == device) & (d.tp == tp) & d.op.isin(BATCH_OPS)]
        dev = d[(d.device == device) & d.op.isin(BATCH_OPS)]
        res: tuple = (Efficiency(), "none")
        for rows, scope in ((grp, "group"), (dev, "device")):
            pr = [r for r in to_profile_rows(rows) if _known(r.model, r.gpu)]
            if len(pr) >= 4:
                res = (fit_efficiency(pr, engine=engine), scope)
                break
        else:
            ops = d[(d.device == device) & d.op.isin(LINEAR_OPS)]
            pr = [r for r in to_profile_rows(ops) if _known(r.model, r.gpu)]
            if len(pr) >= 4:
                eff = fit_efficiency(pr[:: max(1, len(pr) // 400)])
                ar = [r for r in to_profile_rows(d[(d.device == device) & (d.op == "all_reduce")])]
                if len(ar) >= 4:
                    from dataclasses import replace

                    e2 = fit_efficiency(ar, start=eff)
                    eff = replace(eff, comm=e2.comm, allreduce_base_s=e2.allreduce_base_s,
                                  allreduce_latency_s=e2.allreduce_latency_s)
                res = (eff, "device")
        self._memo[key] = res
        return res

    def terms(self):
        """Operator-class terms (``backends.sim.terms``) fitted to every batch row of this profile
        (all groups together: the terms are per operator class and carry across GPUs, models and
        TP degrees), the number of rows and their sources: ``(FittedTerms | None, n, sources)``.
        The bundled Splitwise table's rows give ``splitwise_terms()``; any other profile is fitted
        with ``reference_prior()`` (Splitwise's work terms, default floor) as its prior
        (``REFERENCE_PRIOR_WEIGHT``)."""
        if ("terms",) not in self._memo:
            from backends.sim.terms import REFERENCE_PRIOR_WEIGHT, fit_terms, reference_prior, splitwise_terms
            from tuner.calibration.profile import to_profile_rows

            d = self.df[self.df.op.isin(BATCH_OPS)]
            rows = [r for r in to_profile_rows(d) if _known(r.model, r.gpu)]
            srcs = tuple(sorted(set(d.source)))
            if not rows:
                res: tuple = (None, 0, srcs)
            elif srcs == ("splitwise",) and len(rows) == len(d):
                res = (splitwise_terms(), len(rows), srcs)
            else:
                res = (fit_terms(rows, prior=reference_prior(), prior_weight=REFERENCE_PRIOR_WEIGHT), len(rows), srcs)
            self._memo[("terms",)] = res
        return self._memo[("terms",)]


def _known(model: str, gpu: str) -> bool:
    from backends.sim.catalog import get_gpu, get_model

    try:
        get_model(model)
        get_gpu(gpu)
    except (ValueError, OSError):
        return False
    return True


def curve_ape(curve: LinearCurve, tokens: np.ndarray, time_s: np.ndarray) -> np.ndarray:
    """Absolute percentage errors of ``curve`` on points, %."""
    pred = np.array([curve(float(n)) for n in tokens])
    return np.abs(pred / np.asarray(time_s, float) - 1.0) * 100.0


__all__ = ["AffineCurve", "LinearCurve", "ProfileFit", "curve_ape", "fit_affine", "fit_linear_curve"]
