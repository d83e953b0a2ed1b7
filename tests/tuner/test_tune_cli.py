"""``servetune tune`` end to end on the real simulator, Optuna journal storage and MLflow store."""

from __future__ import annotations

import socket

import pytest
from optuna.trial import TrialState


def test_tune_resume_reaches_the_total_without_duplicates(write_study, run_cli, stored, children):
    p = write_study()
    code, out, err = run_cli("tune", str(p), "--trials", "3", "--no-progress")
    assert code == 0, err
    assert "tiny: best trial" in out and "(default)" in out
    code, out, err = run_cli("tune", str(p), "--trials", "5", "--no-progress")
    assert code == 0, err
    study = stored()
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    # the default policy is trial 0, enqueued once (not again on resume)
    assert trials[0].user_attrs["servetune_default"] and not any(t.user_attrs.get("servetune_default") for t in trials[1:])
    assert trials[0].params == {"max_num_batched_tokens": 8192, "max_num_seqs": 1024, "queue": "fcfs"}  # vLLM on H100
    runs = children(study)
    assert len(runs) == 5
    assert sorted(int(r.data.tags["optuna.trial"]) for r in runs) == [0, 1, 2, 3, 4]
    r0 = next(r for r in runs if r.data.tags["optuna.trial"] == "0")
    assert r0.data.params["queue"] == "fcfs" and r0.data.params["max_num_seqs"] == "1024"
    assert r0.data.metrics["goodput_tok_s"] == pytest.approx(trials[0].values[0])
    assert r0.data.tags["servetune.backend"] == "sim" and len(r0.data.tags["servetune.workload_hash"]) == 16
    assert r0.data.tags["servetune.code_version"].startswith("0.1.0")
    # asking again for 5 runs nothing
    code, out, _ = run_cli("tune", str(p), "--trials", "5", "--no-progress")
    assert code == 0 and len(stored().get_trials()) == 5


@pytest.mark.slow  # starts a logger process (imports MLflow: ~10 s on 2 shared cores)
def test_mlflow_logger_process_logs_every_trial(write_study, run_cli, stored, children):
    p = write_study(name="bg")
    code, _, err = run_cli("tune", str(p), "--trials", "3", "--mlflow-logger", "process", "--no-progress")
    assert code == 0, err
    study = stored("bg")
    runs = children(study)
    assert sorted(int(r.data.tags["optuna.trial"]) for r in runs) == [0, 1, 2]
    assert all(r.info.status == "FINISHED" and "goodput_tok_s" in r.data.metrics for r in runs)


def test_constraints_mark_infeasible_trials(write_study, run_cli, stored):
    p = write_study(name="strict", constraints=["ttft_p99_ms <= 1", "slo_attainment >= 0.5"])
    code, out, err = run_cli("tune", str(p), "--trials", "2", "--no-progress")
    assert code == 0, err
    assert "NO trial met the constraints" in out
    for t in stored("strict").get_trials():
        assert t.constraints["ttft_p99_ms_le_1"] > 0  # infeasible
        assert t.constraints["slo_attainment_ge_0.5"] <= 0


def test_multi_objective_gives_a_pareto_front(write_study, run_cli, stored):
    p = write_study(name="mo", objectives=[{"metric": "goodput"}, {"metric": "usd_per_1m_tokens"}],
                    pruning=True)
    code, out, err = run_cli("tune", str(p), "--trials", "4", "--no-progress")
    assert code == 0, err
    study = stored("mo")
    assert len(study.directions) == 2
    front = study.best_trials
    assert front and "Pareto front" in out
    assert all(t.state != TrialState.PRUNED for t in study.get_trials())  # no pruning with 2 objectives


def test_pruning_reports_intermediate_values(write_study, run_cli, stored):
    p = write_study(name="pr", pruning=[0.5, 1.0])
    code, _, err = run_cli("tune", str(p), "--trials", "3", "--no-progress")
    assert code == 0, err
    t = stored("pr").get_trials()[1]
    assert list(t.intermediate_values) == [0]


def test_stale_running_trial_is_failed_and_retried(write_study, run_cli, stored, children):
    p = write_study(name="crash")
    assert run_cli("tune", str(p), "--trials", "2", "--no-progress")[0] == 0
    study = stored("crash")
    dead = study.ask({"queue": __import__("optuna").distributions.CategoricalDistribution(["fcfs", "sjf"])})
    dead.set_user_attr("worker", f"{socket.gethostname()}:999999999")  # a process that does not exist
    code, out, err = run_cli("tune", str(p), "--trials", "4", "--retry-failed", "--no-progress")
    assert code == 0, err
    assert "marked 1 stale trial(s) as FAIL: [2]" in out
    trials = stored("crash").get_trials()
    assert trials[2].state == TrialState.FAIL
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 2]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params["queue"] == dead.params["queue"]
    # the retried FAIL does not count: 4 finished = 0, 1, retry, one more
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4


@pytest.mark.slow  # two fresh Python processes importing optuna + mlflow: ~30 s on 2 shared cores
def test_n_jobs_2_on_a_journal_file(write_study, run_cli, stored, children):
    p = write_study(name="par")
    code, _, err = run_cli("tune", str(p), "--trials", "6", "--n-jobs", "2", "--no-progress")
    assert code == 0, err
    study = stored("par")
    nums = [t.number for t in study.get_trials()]
    assert nums == list(range(6))
    assert all(t.state == TrialState.COMPLETE for t in study.get_trials())
    workers = {t.user_attrs["worker"] for t in study.get_trials()}
    assert len(workers) == 2  # two processes shared the work
    assert len(children(study)) == 6


def test_max_rate_objective(write_study, run_cli, stored):
    p = write_study(name="rate", objectives=[{"metric": "max_rate", "low": 2.0, "high": 64.0, "iters": 4,
                                              "target": 0.8}], constraints=[])
    code, _, err = run_cli("tune", str(p), "--trials", "2", "--no-progress")
    assert code == 0, err
    for t in stored("rate").get_trials():
        rate = t.user_attrs["result"]["rate"]
        assert t.values[0] == rate and 2.0 <= rate < 64.0
        assert t.user_attrs["result"]["scorecard"]["slo_attainment"] >= 0.8


def test_sqlite_storage_is_separate_from_mlflow_and_password_masked(write_study, run_cli, project, stored):
    from tuner.storage import mask_url

    p = write_study(name="sq")
    url = f"sqlite:///{project / 'optuna.db'}"
    code, out, err = run_cli("tune", str(p), "--trials", "2", "--storage", url, "--no-progress")
    assert code == 0, err
    import sqlite3

    assert sqlite3.connect(project / "optuna.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert len(stored("sq", url).get_trials()) == 2
    assert mask_url("postgresql://bob:s3cret@db:5432/optuna") == "postgresql://bob:***@db:5432/optuna"
    assert "s3cret" not in mask_url("postgresql://db/optuna?user=bob&password=s3cret")


def test_unknown_backend_exits_2(write_study, run_cli):
    code, _, err = run_cli("tune", str(write_study()), "--backend", "trt", "--no-progress")
    assert code == 2 and "backend 'trt'" in err


@pytest.mark.slow  # a real `servetune tune` process killed with SIGKILL mid-study, then resumed
def test_killed_process_resumes_without_losing_or_duplicating(write_study, project, stored, children):
    import os
    import signal
    import subprocess
    import sys
    import time

    p = write_study(name="kill", trials=40)
    cmd = [sys.executable, "-c", "import cli; cli.main()", "tune", str(p), "--no-progress", "--mlflow-logger", "inline"]
    proc = subprocess.Popen(cmd, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until 3 trials are done, then kill it hard mid-trial
        time.sleep(0.3)
        try:
            if sum(t.state == TrialState.COMPLETE for t in stored("kill").get_trials()) >= 3:
                break
        except KeyError:  # study not created yet
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = stored("kill").get_trials()
    running = [t.number for t in before if t.state == TrialState.RUNNING]
    n_done = sum(t.state.is_finished() for t in before)
    target = n_done + 3
    r = subprocess.run([*cmd[:-2], "--trials", str(target), "--retry-failed"], cwd=project, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    trials = stored("kill").get_trials()
    assert [t.number for t in trials] == list(range(len(trials)))  # no duplicates, no gaps
    assert not any(t.state == TrialState.RUNNING for t in trials)
    for n in running:  # the trial killed mid-run is FAIL and was retried once
        assert trials[n].state == TrialState.FAIL
        assert sum(t.user_attrs.get("retry_of") == n for t in trials) == 1
    counted = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) or
                  (t.state == TrialState.FAIL and t.number not in running) for t in trials)
    assert counted == target
    # one MLflow run per finished trial: the killed one (FAIL) and any trial whose worker died
    # before logging it are logged by the next `tune`
    runs = children(stored("kill"))
    assert sorted(int(r.data.tags["optuna.trial"]) for r in runs) == [t.number for t in trials]
    for n in running:
        r = next(r for r in runs if r.data.tags["optuna.trial"] == str(n))
        assert r.info.status == "FAILED" and r.data.tags["servetune.repaired"] == "true"


@pytest.mark.postgres  # SERVETUNE_TEST_PG_URL from scripts/start_postgres.sh
def test_postgres_storage_two_workers_and_masked_password(write_study, run_cli, project, children):
    import os
    import uuid

    import optuna

    url = os.environ.get("SERVETUNE_TEST_PG_URL")
    if not url:
        pytest.skip("SERVETUNE_TEST_PG_URL not set (scripts/start_postgres.sh prints one)")
    name = f"pg-{uuid.uuid4().hex[:8]}"
    p = write_study(name=name)
    code, out, err = run_cli("tune", str(p), "--trials", "4", "--storage", url, "--n-jobs", "2", "--no-progress")
    assert code == 0, err
    password = ":" + url.split("://", 1)[1].split("@")[0].split(":")[1] + "@"
    assert password not in out + err and ":***@" in out
    study = optuna.load_study(study_name=name, storage=url)
    assert sorted(t.number for t in study.get_trials()) == [0, 1, 2, 3]
    runs = children(study)
    assert len(runs) == 4
    from mlflow import MlflowClient

    parent = MlflowClient(tracking_uri=f"sqlite:///{project / '.servetune' / 'mlflow.db'}").get_run(
        study.user_attrs["mlflow_parent_run_id"])
    assert "***" in parent.data.tags["servetune.storage"] and password not in str(parent.data.tags)
    assert all(password not in str(r.data.params) + str(r.data.tags) for r in runs)


def test_timeout_stops_starting_trials(write_study, run_cli, stored):
    p = write_study(name="to")
    code, out, err = run_cli("tune", str(p), "--trials", "500", "--timeout", "1", "--no-progress")
    assert code == 0, err
    n = len(stored("to").get_trials())
    assert 1 <= n < 500 and f"{n} finished trials" in out
