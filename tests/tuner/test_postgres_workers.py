"""Three independent `servetune tune` workers share one study through PostgreSQL (issue 8): every
trial runs once, none is lost or duplicated, and each has its MLflow run under the one parent."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest


@pytest.mark.postgres  # SERVETUNE_TEST_PG_URL from scripts/start_postgres.sh
def test_three_worker_processes_share_one_study(write_study, project, children):
    import optuna
    from optuna.trial import TrialState

    url = os.environ.get("SERVETUNE_TEST_PG_URL")
    if not url:
        pytest.skip("SERVETUNE_TEST_PG_URL not set (scripts/start_postgres.sh prints one)")
    name = f"pg3-{uuid.uuid4().hex[:8]}"
    p = write_study(name=name, trials=9)
    cmd = [sys.executable, "-c", "import cli; cli.main()", "tune", str(p), "--storage", url, "--no-progress",
           "--mlflow-logger", "inline"]
    # the first worker creates the study and its MLflow parent run; two more join while it runs
    procs = [subprocess.Popen(cmd, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    procs += [subprocess.Popen(cmd, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    outs = [pr.communicate(timeout=600) for pr in procs]
    for pr, (out, err) in zip(procs, outs, strict=True):
        assert pr.returncode == 0, err[-2000:]
        assert "servetune:servetune@" not in out + err  # the password is masked
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))  # no duplicates, no gaps
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert 9 <= len(trials) <= 9 + 2  # workers on several machines may overshoot by < their count
    runs = children(study)
    assert sorted(int(r.data.tags["optuna.trial"]) for r in runs) == sorted(numbers)  # one run per trial
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert parents == {study.user_attrs["mlflow_parent_run_id"]}
