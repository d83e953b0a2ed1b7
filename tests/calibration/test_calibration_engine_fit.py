from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backends.base import Deployment
from tuner.calibration.engine_fit import EngineCalibration
from tuner.calibration.simrun import simulate_with
from tuner.calibration.trainval import regenerate, run_metrics
from tuner.policy import Policy


def test_calibration_dict_round_trip():
    from backends.sim.costmodel import Efficiency

    c = EngineCalibration(Efficiency(mem=0.8, gemm=0.7), lag_steps=1.7, share="prompt", kv_mem=0.93)
    assert EngineCalibration.from_dict(c.to_dict()) == c


def test_lag_steps_shift_first_token_and_finish_by_steps():
    from backends.sim.profiled import cost_model_for

    w = regenerate("reasoning-lite", duration_scale=0.03, share="prompt")
    pol, dep = Policy(max_num_seqs=128), Deployment("qwen2.5-7b", "h100-sxm")
    cm = cost_model_for("qwen2.5-7b", "h100-sxm")
    a = simulate_with(cm, pol, w, dep)
    b = simulate_with(cm, pol, w, dep, lag_steps=2.0)
    ta, ea, pa = run_metrics(a.records, 1448)
    tb, eb, pb = run_metrics(b.records, 1448)
    assert pb == pytest.approx(pa, rel=1e-9)  # TPOT unchanged
    assert tb - ta == pytest.approx(2.0 * pa, rel=0.05)  # ~2 steps later
    assert eb - ea == pytest.approx(tb - ta, rel=1e-6)
    assert "cost model: roofline" in " ".join(a.notes)


def test_fidelity_summary_states_model_and_unknown_error():
    from tuner.calibration import fidelity_summary

    s = fidelity_summary("llama-3.1-8b", "l40s", 1)
    assert "roofline (default efficiency)" in s and "UNKNOWN" in s
    h = fidelity_summary("llama-3.1-8b", "h100", 1)
    assert "h100-sxm" in h and "median" in h


def test_stats_ignore_nan():
    from tuner.calibration.fidelity import stats

    med, p90 = stats([1.0, float("nan"), -3.0, 2.0])
    assert med == 2.0 and np.isfinite(p90)


def test_stored_vllm_h100_calibration_loads():
    from tuner.calibration.engine_fit import engine_calibration

    c = engine_calibration("vllm", "h100")
    assert c is not None and 0.3 < c.efficiency.mem <= 1.0 and 0.3 < c.lag_steps < 1.5  # + the scheduling step ahead
    assert engine_calibration("sglang", "h100") is None


def test_new_runs_are_predicted_without_refitting(tmp_path):
    """A runs CSV other than the bundled trainval one is predicted out of sample by the default
    simulator and by the stored calibration, with the targets (``servetune fidelity --runs``)."""
    import pandas as pd

    from tuner.calibration.fidelity import no_refit_lines
    from tuner.calibration.trainval import TRAINVAL_CSV, load_runs

    if not Path(TRAINVAL_CSV).is_file():
        pytest.skip("shared trainval runs not found")
    df = pd.read_csv(TRAINVAL_CSV)
    small = tmp_path / "two_runs.csv"
    df[df.model_hf.str.contains("Mistral-Nemo")].head(1).to_csv(small, index=False)
    lines = no_refit_lines(load_runs(small), new=True)
    assert [ln.evaluation.split(" mean, ")[1] for ln in lines][:3] == ["default sim (no refit, new runs)"] * 3
    assert all(ln.target and ln.n == 1 for ln in lines)
    ttft, e2e, tpot = lines[:3]
    assert ttft.median < 15 and e2e.median < 10 and tpot.median < 10  # Mistral-Nemo runs: +6/+8/+8 % today
