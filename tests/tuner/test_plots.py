"""The latency CDF figure: TTFT and TPOT over requests, ITL over tokens (from the ITL histogram)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from backends.base import Deployment
from backends.sim import SimBackend
from tuner.plots import latency_cdf_png
from tuner.policy import Policy
from workloads.workload import build_workload


@pytest.fixture(scope="module")
def result():
    rng = np.random.default_rng(0)
    w = build_workload("cdf", np.cumsum(rng.exponential(0.2, 60)), rng.integers(100, 2000, 60), rng.integers(5, 80, 60))
    return SimBackend().run(Policy(), w, Deployment("llama-3.1-8b", "h100"))


def test_itl_panel_is_the_histograms_cdf(result, tmp_path, monkeypatch):
    """The third panel steps through the histogram's cumulative counts up to 1; without an ITL
    histogram (a backend that saw no gaps) the figure is still written, the panel left empty."""
    import matplotlib.axes

    drawn: list[tuple[np.ndarray, np.ndarray]] = []
    step = matplotlib.axes.Axes.step

    def spy(ax, x, y, *a, **k):
        drawn.append((np.asarray(x), np.asarray(y)))
        return step(ax, x, y, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "step", spy)
    png = latency_cdf_png({"run": result}, tmp_path / "cdf.png", title="t")
    assert png.stat().st_size > 5000 and len(drawn) == 3
    x, y = drawn[2]  # ITL: ms on x, fraction of tokens on y
    itl = result.telemetry.itl
    assert y[-1] == pytest.approx(1.0) and np.all(np.diff(y) >= 0) and np.all(np.diff(x) > 0)
    assert x[0] <= itl.percentile_ms(1) * 1.03 and x[-1] >= itl.percentile_ms(100)  # (upper bin edges)
    drawn.clear()
    none = dataclasses.replace(result, telemetry=dataclasses.replace(result.telemetry, itl=None))
    assert latency_cdf_png({"run": none}, tmp_path / "none.png").is_file() and len(drawn) == 2
