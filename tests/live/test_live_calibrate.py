"""``servetune calibrate --live --run`` on the real vLLM (CPU build) serving the tiny Llama: one
short run (24 requests at 6 req/s; the server start-up dominates, ~30-50 s on a 2-core host)."""

from __future__ import annotations

import pandas as pd
import pytest

from tuner.calibration.calfile import read_calibration
from tuner.calibration.live import metrics

pytestmark = pytest.mark.live

WORKLOAD = """schema_version: 1
name: live-cal
synthetic:
  num_requests: 24
  rate: 6.0
  arrival: poisson
  prompt: {dist: lognormal, mean: 160, sigma: 0.4, max: 400}
  output: {dist: lognormal, mean: 32, sigma: 0.3, max: 64}
"""
TOL_PCT = 10.0
"""In sample, each of mean TTFT, E2E, TPOT: 3 fitted parameters for 3 means (the fit reaches ~0.3 %
unless a parameter sits at its bound)."""


def test_calibrate_live_run_fits_the_measured_means(vllm_python, tiny_model, tmp_path, monkeypatch, run_cli_full):
    monkeypatch.setenv("SERVETUNE_VLLM_PYTHON", vllm_python)
    (tmp_path / "w.yaml").write_text(WORKLOAD)
    out = tmp_path / "cal" / "tiny.yaml"
    code, stdout, err = run_cli_full("calibrate", "--live", "--run", "-m", tiny_model, "-g", "cpu",
                                     "-w", tmp_path / "w.yaml", "--kv-cache-bytes", 64 << 20, "-o", out)
    print(stdout)
    assert code == 0, err
    records = out.with_name("tiny.records.parquet")
    assert records.is_file() and "run (in sample)" in stdout
    cf = read_calibration(out)
    assert cf.records == "tiny.records.parquet" and cf.gpu_name == "cpu" and cf.workload["n"] == 24
    measured = metrics(pd.read_parquet(records))
    assert list(cf.fit["measured_ms"].values()) == pytest.approx(measured, rel=1e-12)
    assert all(abs(e) < TOL_PCT for e in cf.fit["error_pct"].values()), cf.fit

    # simulate --calibration reproduces the calibrated means; the catalog's tiny-llama (same
    # architecture, another name) is accepted too
    for model, name in ((tiny_model, "sim"), ("tiny-llama", "catalog")):
        code, stdout, err = run_cli_full("simulate", "-m", model, "-g", "cpu", "--calibration", out,
                                         "-w", tmp_path / "w.yaml", "--max-model-len", 2048,
                                         "-o", tmp_path / f"{name}.json")
        assert code == 0, err
        assert "calibration tiny.yaml" in " ".join(stdout.split())
    sim = metrics(pd.read_parquet(tmp_path / "sim.records.parquet"))
    assert sim == pytest.approx(list(cf.fit["simulated_ms"].values()), rel=1e-9)
