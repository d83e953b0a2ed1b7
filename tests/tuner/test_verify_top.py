"""--verify-top: the best trials re-run on a second backend, both scorecards side by side in MLflow.

On these machines the live engine cannot serve a catalog model, so the plumbing is checked with
the simulator as the verify backend (measured == simulated: the error must be exactly 0); the
live path is the same code with ``--verify-backend vllm``."""

from __future__ import annotations


def test_verify_top_logs_sim_and_measured_side_by_side(write_study, run_cli, stored, children):
    p = write_study(name="ver", trials=4)
    code, out, err = run_cli("tune", str(p), "--no-progress", "--verify-top", "2", "--verify-backend", "sim")
    assert code == 0, err
    assert "simulator vs sim" in out
    runs = children(stored("ver"))
    ver = [r for r in runs if r.data.tags.get("servetune.verify")]
    assert len(ver) == 2 and len(runs) == 6
    best = {t.number for t in stored("ver").get_trials() if t.values}
    for r in ver:
        m = r.data.metrics
        assert int(r.data.tags["servetune.verifies_trial"]) in best
        assert m["sim.ttft_p50_ms"] == m["live.ttft_p50_ms"] > 0
        assert m["err_pct.tpot_p50_ms"] == 0.0
    # verification runs never count as trials of the study
    assert len(stored("ver").get_trials()) == 4


def test_verify_backend_missing_fails_before_the_study(write_study, run_cli, stored):
    import pytest

    p = write_study(name="ver2")
    code, _, err = run_cli("tune", str(p), "--verify-top", "1", "--verify-backend", "tensorrt")
    assert code == 2 and err.startswith("error: ")
    with pytest.raises(KeyError):
        stored("ver2")
