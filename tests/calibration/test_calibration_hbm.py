"""The roofline's memory terms at the simulator's bandwidth (the default: each GPU's achievable
fraction of peak relative to the H100's), at the datasheet peak or at the achievable figure."""

from __future__ import annotations

import pytest

from backends.sim.catalog import get_gpu
from backends.sim.profiles import ape, fit_efficiency, load_rows, predict


@pytest.fixture(scope="module")
def a100_rows():
    """Vidur's Llama-2-7B A100 TP1 GEMM rows (every 3rd)."""
    return [r for r in load_rows("vidur_mlp") if r.gpu == "a100-80gb" and r.model == "llama-2-7b" and r.tp == 1][::3]


def test_the_simulators_bandwidth_is_the_default_and_slows_memory_bound_a100_rows(a100_rows):
    row = min(a100_rows, key=lambda r: r.tokens)  # one token: reading the weights dominates
    assert predict(row) == predict(row, hbm="simulator")
    g = get_gpu("a100-80gb")
    slower = predict(row) / predict(row, hbm="datasheet")
    assert 1.0 < slower <= g.hbm_bytes_s / g.hbm_sim_bytes_s + 1e-9
    slower = predict(row, hbm="achievable") / predict(row, hbm="datasheet")
    assert 1.0 < slower <= g.hbm_bytes_s / g.hbm_bandwidth("achievable") + 1e-9
    with pytest.raises(ValueError, match="choose one of"):
        predict(row, hbm="peak")


@pytest.mark.parametrize("hbm", ["simulator", "achievable"])
def test_fitted_mem_multiplies_the_bandwidth(a100_rows, hbm):
    """On one GPU the normalisation cannot change what is fitted: mem x bandwidth (the bytes/s
    the GEMMs reach) and the errors stay the same, while mem itself rises by peak/bandwidth."""
    g = get_gpu("a100-80gb")
    peak, other = fit_efficiency(a100_rows, hbm="datasheet"), fit_efficiency(a100_rows, hbm=hbm)
    assert other.mem * g.hbm_bandwidth(hbm) == pytest.approx(peak.mem * g.hbm_bytes_s, rel=0.03)
    assert other.mem > peak.mem
    e_peak, e_other = ape(a100_rows, peak, hbm="datasheet"), ape(a100_rows, other, hbm=hbm)
    assert sorted(e_other)[len(e_other) // 2] == pytest.approx(sorted(e_peak)[len(e_peak) // 2], abs=0.5)
