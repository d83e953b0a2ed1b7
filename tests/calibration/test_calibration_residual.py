"""The fitted roofline times a learned residual (``tuner.calibration.residual``) on Vidur GEMM rows."""

from __future__ import annotations

import dataclasses
import math

import pytest

from backends.sim.profiles import load_rows
from tuner.calibration.fidelity import leave_out, residual_leave_out, stats
from tuner.calibration.residual import FEATURES, features, fit_residual, gemm_shape, native_tile


@pytest.fixture(scope="module")
def rows():
    """Every 5th Vidur GEMM row (986: all four operators, both GPUs, three models, TP 1/2/4/8)."""
    return list(load_rows("vidur_mlp"))[::5]


def test_gemm_shape_splits_by_tp_and_features_are_finite(rows):
    r = next(r for r in rows if r.model == "llama-2-7b" and r.op == "mlp_up" and r.tp == 2)
    assert gemm_shape(r) == (2 * 11008 // 2, 4096)  # gate + up, column-parallel
    r = next(r for r in rows if r.model == "llama-2-7b" and r.op == "o" and r.tp == 4)
    assert gemm_shape(r) == (4096, 4096 // 4)  # row-parallel
    for r in rows[:50]:
        f = features(r)
        assert len(f) == len(FEATURES) and all(math.isfinite(x) for x in f)
        assert 0.0 < f[FEATURES.index("wave_fill_native")] <= 1.0
        assert f[FEATURES.index("log_quantized_roofline_native")] >= 0.0  # padding never speeds a GEMM up
    # The SM count comes from the GPU catalog: a GPU without one is a clear error, not a guess.
    with pytest.raises(ValueError, match="no sm_count"):
        features(dataclasses.replace(r, gpu="cpu"))


def test_native_tile_widens_with_per_sm_throughput():
    """From the catalog's peak FLOP/s per SM alone: ~2.9 TFLOP/s per SM -> 128 x 128, ~7.5 -> 128 x 256."""
    assert native_tile("a100-80gb") == (128, 128)
    assert native_tile("h100-sxm") == (128, 256)
    assert native_tile("b200") == (128, 256)  # capped: the widest one MMA computes (TILE_N_MAX)
    with pytest.raises(ValueError, match="no sm_count"):
        native_tile("cpu")


def test_fit_is_deterministic(rows):
    a, b = fit_residual(rows[:200]), fit_residual(rows[:200])
    assert a.predict(rows[200:220]) == b.predict(rows[200:220])


def test_residual_lowers_held_out_error_leave_one_tp_out(rows):
    """Both fitted on the training TP degrees only; the held-out degree's errors pooled."""
    key = lambda r: r.tp  # noqa: E731
    base_med, base_p90 = stats(leave_out(rows, key))
    med, p90 = stats(residual_leave_out(rows, key))
    assert p90 < base_p90 - 1.0
    assert med < base_med
