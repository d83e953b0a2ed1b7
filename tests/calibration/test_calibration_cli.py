from __future__ import annotations

from pathlib import Path

import pytest

from tuner.calibration.profile import read_profile

CPU_HOST = Path(__file__).resolve().parents[2] / "tuner" / "calibration" / "data" / "cpu-host.yaml"


def test_calibrate_quick_tiny_model_writes_a_valid_profile(tiny_config, tmp_path, run_cli_full):
    pytest.importorskip("torch")
    out = tmp_path / "tiny.csv"
    code, stdout, _ = run_cli_full("calibrate", "--model", tiny_config, "--device", "cpu", "--quick", "--out", out)
    assert code == 0
    df = read_profile(out)
    assert set(df.op) == {"qkv_proj", "o_proj", "mlp_up", "mlp_down", "attn_prefill", "attn_decode"}
    assert (df.device == "cpu-host").all() and (df.model == "tiny-llama").all()
    assert "all_reduce skipped" in stdout
    # the profile drives a cost model on the cpu-host entry
    from backends.sim.catalog import get_gpu, get_model
    from backends.sim.profiled import cost_model_for

    cm = cost_model_for(get_model(tiny_config), get_gpu(CPU_HOST), 1, profile=df)
    assert cm.source.startswith("profile:") and "tiny-llama" in cm.source
    seg = cm.decode_segment(4, 300.0, 10)
    assert seg.time_s == pytest.approx(sum(cm.iteration(0, 0.0, 4, 4, 300.0 + 4 * i).time_s for i in range(10)))


def test_calibrate_bad_out_suffix(tiny_config, tmp_path, run_cli_full):
    code, _, err = run_cli_full("calibrate", "--model", tiny_config, "--out", tmp_path / "p.txt")
    assert code == 2
    assert "suffix" in err


def test_calibrate_without_torch_names_the_extra(monkeypatch, tiny_config, tmp_path, run_cli_full):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)
    code, _, err = run_cli_full("calibrate", "--model", tiny_config, "--out", tmp_path / "p.csv")
    assert code != 0
    assert "torch extra" in err


def test_fidelity_rejects_unknown_table(run_cli_full):
    code, _, err = run_cli_full("fidelity", "--table", "nope")
    assert code == 2
    assert "--table 'nope'" in err


def test_fidelity_summary_names_a_per_kind_line_with_its_evaluation():
    from tuner.calibration.fidelity import FidelityLine, missed_summary

    lines = [FidelityLine("splitwise", "OOS leave-one-GPU-out", 300, 4.0, 13.0, "8/15"),
             FidelityLine("splitwise", "  prefill rows", 150, 5.0, 19.5, "8/15"),
             FidelityLine("splitwise", "OOS leave-one-TP-out", 300, 4.9, 12.0, "8/15"),
             FidelityLine("splitwise", "  prefill rows", 150, 5.0, 18.8, "8/15"),
             FidelityLine("splitwise", "fitted, in sample", 300, 3.8, 10.8)]
    assert missed_summary(lines) == ("targets missed on 2 line(s): splitwise OOS leave-one-GPU-out, prefill rows; "
                                     "splitwise OOS leave-one-TP-out, prefill rows")
    assert missed_summary(lines[2:3]) == ""


def test_fidelity_sarathi_prints_the_table_and_what_missed(run_cli_full):
    code, out, _ = run_cli_full("fidelity", "--table", "sarathi")
    assert code == 0
    kfold = next(ln for ln in out.splitlines() if "terms: OOS stratified 5-fold x5 seeds (mean)" in ln)
    assert kfold.split()[-1] == "met" and " 32 " in kfold
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("targets missed on") and "terms: OOS stratified 5-fold (seed 0)" in summary
    assert "terms: OOS stratified 5-fold x5" not in summary
