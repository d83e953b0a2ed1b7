"""Shared fixtures for the tuner tests: a project folder with a ready MLflow store, tiny studies,
and the real CLI (cli.main error handling) in-process."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

TINY_WORKLOAD = {"source": "azure-conv", "first_n": 200, "rate": 12.0}
TINY_STUDY = {
    "schema_version": 1,
    "name": "tiny",
    "workload": TINY_WORKLOAD,
    "deployment": {"model": "llama-3.1-8b", "gpu": "h100-sxm", "n_gpus": 1, "engine": "vllm-v1"},
    "slos": {"chat": {"ttft_ms": 300, "tpot_ms": 40}},
    "objectives": [{"metric": "goodput", "direction": "maximize"}],
    "constraints": ["ttft_p99_ms <= 5000"],
    "search": {
        "max_num_batched_tokens": {"low": 256, "high": 4096, "log": True},
        "max_num_seqs": {"low": 8, "high": 256, "log": True},
        "queue": ["fcfs", "sjf"],
    },
    "seed": 0,
    "trials": 4,
    "pruning": False,
}


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An initialised MLflow SQLite store, created once per session (MLflow's schema migrations
    take several seconds) and copied into each test project."""
    d = tmp_path_factory.mktemp("mlflow-template")
    db = d / "mlflow.db"
    code = ("from mlflow import MlflowClient; import sys; "
            f"MlflowClient(tracking_uri='sqlite:///{db}').search_experiments()")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return db


@pytest.fixture
def project(tmp_path, monkeypatch, mlflow_template) -> Path:
    """A fresh project folder (cwd) whose .servetune/ holds an initialised, empty MLflow store."""
    (tmp_path / ".servetune").mkdir()
    shutil.copy(mlflow_template, tmp_path / ".servetune" / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def write_study(project):
    """write_study(name=..., **overrides) -> path of a study YAML built from TINY_STUDY."""

    def write(name: str = "tiny", **over) -> Path:
        doc = {**TINY_STUDY, "name": name, **over}
        p = project / f"{name}.yaml"
        p.write_text(yaml.safe_dump(doc, sort_keys=False))
        return p

    return write


@pytest.fixture
def run_cli(run_cli_full):
    """Run ``servetune ARGS`` through cli.main (exit codes and one-line errors as a user sees
    them); returns (exit code, stdout, stderr)."""
    return run_cli_full


@pytest.fixture
def tiny() -> dict:
    """A copy of the tiny study document (200 requests, 3 knobs, 4 trials, no pruning)."""
    import copy

    return copy.deepcopy(TINY_STUDY)


@pytest.fixture
def stored(project):
    """stored(name) -> the Optuna study of the test project (journal file)."""
    return lambda name="tiny", storage=None: _load(project, name, storage)


@pytest.fixture
def children(project):
    """children(study) -> the MLflow child runs under the study's parent run."""
    return lambda study: _child_runs(project, study)


def _load(project: Path, name: str = "tiny", storage=None):
    """The stored Optuna study of a test project."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    st = storage or JournalStorage(JournalFileBackend(str(project / ".servetune" / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=st)


def _child_runs(project: Path, study) -> list:
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=f"sqlite:///{project / '.servetune' / 'mlflow.db'}")
    exp = c.get_experiment_by_name(study.study_name)
    return c.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = "
                         f"'{study.user_attrs['mlflow_parent_run_id']}'", max_results=1000)
