"""The roofline fitted against the GPU's achievable HBM bandwidth (opt-in) instead of its datasheet peak."""

from __future__ import annotations

import pytest

from backends.sim.catalog import get_gpu
from backends.sim.profiles import ape, fit_efficiency, load_rows, predict


@pytest.fixture(scope="module")
def a100_rows():
    """Vidur's Llama-2-7B A100 TP1 GEMM rows (every 3rd)."""
    return [r for r in load_rows("vidur_mlp") if r.gpu == "a100-80gb" and r.model == "llama-2-7b" and r.tp == 1][::3]


def test_datasheet_is_the_default_and_achievable_slows_memory_bound_rows(a100_rows):
    row = min(a100_rows, key=lambda r: r.tokens)  # one token: reading the weights dominates
    assert predict(row) == predict(row, hbm="datasheet")
    g = get_gpu("a100-80gb")
    slower = predict(row, hbm="achievable") / predict(row)
    assert 1.0 < slower <= g.hbm_bytes_s / g.hbm_bandwidth("achievable") + 1e-9
    with pytest.raises(ValueError, match="choose one of"):
        predict(row, hbm="peak")


def test_fitted_mem_multiplies_the_achievable_bandwidth(a100_rows):
    """On one GPU the normalisation cannot change what is fitted: mem x bandwidth (the bytes/s
    the GEMMs reach) and the errors stay the same, while mem itself rises by peak/achievable."""
    g = get_gpu("a100-80gb")
    peak, ach = fit_efficiency(a100_rows), fit_efficiency(a100_rows, hbm="achievable")
    assert ach.mem * g.hbm_bandwidth("achievable") == pytest.approx(peak.mem * g.hbm_bytes_s, rel=0.03)
    assert ach.mem > peak.mem
    e_peak, e_ach = ape(a100_rows, peak), ape(a100_rows, ach, hbm="achievable")
    assert sorted(e_ach)[len(e_ach) // 2] == pytest.approx(sorted(e_peak)[len(e_peak) // 2], abs=0.5)
