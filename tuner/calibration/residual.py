"""A learned correction on top of the fitted roofline for per-operator GEMM rows (fidelity only).

The roofline (``backends.sim.profiles.predict`` with efficiencies from ``fit_efficiency``) gets
the shape of a linear operator's time right but not the ridge: around the point where compute
and weight reads take equally long, its smooth max and cuBLAS's kernel choice leave errors of
10-20 %. ``fit_residual`` fits the roofline first, then a gradient-boosted tree regressor on the
log residual ``log(measured / roofline)`` from features that do not name the GPU or the model:

* ``log2 tokens`` (the GEMM's M);
* ``log2(arithmetic intensity / ridge)``: FLOPs per HBM byte of the GEMM over the GPU's peak
  FLOP/s per byte/s (below 0: memory-bound, above: compute-bound);
* ``log2 N`` and ``log2 K``: the per-GPU GEMM shape after the TP split (weights are K x N);
* ``(tokens mod 64) / 64`` and ``(tokens mod 128) / 128``: tile alignment of M;
* wave quantization: a GEMM runs in waves of one output tile per SM, so the last wave may run
  part-empty. With the GPU's native tile (``native_tile``: 128 rows by the narrowest power-of-two
  width whose main-loop stage keeps one SM busy for ``STAGE_S``, so faster SMs get wider tiles),
  the filled fraction of the last wave, ``(tiles / SMs) / ceil(tiles / SMs)``, ``log2
  ceil(tiles / SMs)``, and the log of the quantized roofline over the plain one: ``max(padded x
  compute, memory) / max(compute, memory)`` with ``padded`` the tile area issued over the useful
  M x N (0 when memory-bound, near 0 over many waves, largest for a part-empty single wave).
  SMs: the GPU catalog's ``sm_count``; peak FLOP/s and HBM bandwidth also from the catalog.

A prediction is ``roofline × exp(residual)``. Hyper-parameters are fixed (``HGB_PARAMS``), chosen
before any held-out error was measured. Not used by the simulator (``CostModel``): a tree goes flat
outside the shapes it saw, which is acceptable for scoring a table, not for extrapolating.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from backends.sim.catalog import get_gpu, get_model
from backends.sim.costmodel import ACT_BYTES, Efficiency
from backends.sim.profiles import ProfileRow, fit_efficiency, predict

HGB_PARAMS = {"learning_rate": 0.05, "max_iter": 200, "max_leaf_nodes": 15, "min_samples_leaf": 40,
              "l2_regularization": 1.0, "early_stopping": False, "random_state": 0}
"""``sklearn.ensemble.HistGradientBoostingRegressor`` settings (fixed, deterministic)."""
FEATURES = ("log2_tokens", "log2_intensity_over_ridge", "log2_n", "log2_k", "tokens_mod64", "tokens_mod128",
            "wave_fill_native", "log2_waves_native", "log_quantized_roofline_native")
TILE_M = 128
"""M extent of the output tile, rows (one 128-row tile: two 64-row MMA warp groups)."""
TILE_K_STEP = 64
"""K depth of one main-loop stage of a 16-bit tile (128-byte operand rows), elements."""
TILE_N_MAX = 256
"""Widest tile N, columns: the widest one warp-group MMA computes (Hopper's wgmma, N <= 256); a
wider tile's accumulators would not fit the SM's registers."""
STAGE_S = 0.5e-6
"""Shortest time one main-loop stage of a tile must keep an SM's tensor cores busy to hide the
latency of the next stage's global loads, s (a few hundred ns of HBM latency, ~2x)."""


def native_tile(gpu: str, dtype: str = "bf16") -> tuple[int, int]:
    """Output tile (M x N) a GEMM library picks on ``gpu``: ``TILE_M`` rows and the narrowest
    power-of-two N >= 128 (at most ``TILE_N_MAX``) whose ``TILE_K_STEP``-deep stage takes at least ``STAGE_S`` at the
    SM's peak (peak FLOP/s / ``sm_count``). Faster SMs need wider tiles to hide the same load
    latency (e.g. 312 TFLOP/s over 108 SMs -> 128 x 128; 989 TFLOP/s over 132 SMs -> 128 x 256)."""
    g = get_gpu(gpu)
    if g.sm_count <= 0:
        raise ValueError(f"native_tile: gpu {gpu!r} has no sm_count in the GPU catalog")
    need = STAGE_S * g.peak_flops(dtype) / g.sm_count / (2.0 * TILE_M * TILE_K_STEP)
    return TILE_M, min(2 ** max(7, math.ceil(math.log2(need))), TILE_N_MAX)


def gemm_shape(row: ProfileRow) -> tuple[int, int]:
    """(N, K) of the row's operator on one GPU: output and input width after the TP split
    (column-parallel qkv / mlp_up split N, row-parallel o / mlp_down split K)."""
    m, tp = get_model(row.model), row.tp
    q, kv, h = m.heads * m.head_dim, m.kv_heads * m.head_dim, m.hidden
    shapes = {"qkv": ((q + 2 * kv) // tp, h), "o": (h, q // tp),
              "mlp_up": ((m.mlp_mats - 1) * m.ffn // tp, h), "mlp_down": (h, m.ffn // tp)}
    if row.op not in shapes:
        raise ValueError(f"gemm_shape: {row.op!r} is not a linear operator ({', '.join(shapes)})")
    return shapes[row.op]


def features(row: ProfileRow, hbm: str = "simulator") -> list[float]:
    """The ``FEATURES`` of one operator row (``hbm``: the bandwidth of the ridge point)."""
    n, k = gemm_shape(row)
    t = max(row.tokens, 1)
    flops = 2.0 * t * n * k
    nbytes = n * k * 2.0 + t * (n + k) * ACT_BYTES  # weights (16-bit) + activations in and out
    g = get_gpu(row.gpu)
    if g.sm_count <= 0:
        raise ValueError(f"features: gpu {row.gpu!r} has no sm_count in the GPU catalog")
    t_compute, t_memory = flops / g.peak_flops(row.weight_dtype), nbytes / g.hbm_bandwidth(hbm)  # s
    tm, tn = native_tile(row.gpu, row.weight_dtype)
    tiles = math.ceil(t / tm) * math.ceil(n / tn)
    waves = tiles / g.sm_count
    padded = math.ceil(waves) * g.sm_count * tm * tn / (t * n)  # issued over useful tile area, >= 1
    quantized = max(padded * t_compute, t_memory) / max(t_compute, t_memory)
    return [math.log2(t), math.log2(t_compute / t_memory), math.log2(n), math.log2(k), (t % 64) / 64.0,
            (t % 128) / 128.0, waves / math.ceil(waves), math.log2(math.ceil(waves)), math.log(quantized)]


@dataclass(frozen=True, slots=True)
class ResidualModel:
    """The fitted roofline (``eff`` at HBM bandwidth ``hbm``) times a learned correction.
    ``regressor`` is a fitted ``HistGradientBoostingRegressor`` (read-only after fitting)
    mapping ``features`` to log(measured / roofline)."""

    eff: Efficiency
    hbm: str
    regressor: object

    def predict(self, rows: Sequence[ProfileRow]) -> list[float]:
        """Predicted time of each operator row, s."""
        if not rows:
            return []
        base = np.array([predict(r, self.eff, hbm=self.hbm) for r in rows])
        corr = self.regressor.predict(np.array([features(r, self.hbm) for r in rows]))
        return list(base * np.exp(corr))

    def ape(self, rows: Sequence[ProfileRow]) -> list[float]:
        """Absolute percentage errors on ``rows``, %."""
        return [abs(p / r.measured_s - 1.0) * 100.0 for p, r in zip(self.predict(rows), rows, strict=True)]


def fit_residual(rows: Sequence[ProfileRow], hbm: str = "simulator", eff: Efficiency | None = None) -> ResidualModel:
    """Fit the roofline efficiencies on ``rows`` (unless ``eff`` is given), then the residual
    regressor on the same rows' log residuals."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    rows = list(rows)
    if not rows:
        raise ValueError("fit_residual: no rows")
    eff = eff or fit_efficiency(rows, hbm=hbm)
    x = np.array([features(r, hbm) for r in rows])
    y = np.log([r.measured_s / predict(r, eff, hbm=hbm) for r in rows])
    return ResidualModel(eff, hbm, HistGradientBoostingRegressor(**HGB_PARAMS).fit(x, y))


__all__ = ["FEATURES", "HGB_PARAMS", "STAGE_S", "TILE_K_STEP", "TILE_M", "TILE_N_MAX", "ResidualModel", "features", "fit_residual",
           "gemm_shape", "native_tile"]
