"""Workers on several machines that open a new study at once may each create an MLflow parent
run (Optuna attrs have no compare-and-set). ``Tracker.converge`` leaves one parent with every
trial run under it, whichever worker stops last, and brings back a parent a racer deleted."""

from __future__ import annotations

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from tuner.tracking import KEY_TAG, PARENT_ATTR, Tracker, study_key


@pytest.fixture
def setup(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "j.log")))
    study = optuna.create_study(study_name="race", storage=storage)
    key = study_key(study, f"journal:{tmp_path / 'j.log'}")
    return study, key, Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _racing_parents(study, key, tracker, n=3):
    """n workers that each saw no parent, created one and wrote the attr (the last one wins)."""
    ids = []
    exp = tracker.experiment_id(study.study_name)
    for _ in range(n):
        run = tracker.client.create_run(exp, tags={KEY_TAG: key, "servetune.role": "study"})
        ids.append(run.info.run_id)
        study.set_user_attr("mlflow_experiment_id", exp)
        study.set_user_attr(PARENT_ATTR, run.info.run_id)
    return exp, ids


def test_converge_moves_every_trial_under_the_winning_parent(setup):
    study, key, tracker = setup
    exp, parents = _racing_parents(study, key, tracker)
    for n in range(9):  # each worker logged its trials under the parent it saw
        tracker.log_trial(exp, parents[n % 3], n, params={"x": n}, metrics={"m": n}, tags={KEY_TAG: key})
    tracker.log_trial(exp, parents[0], 99, params={}, metrics={}, tags={KEY_TAG: "another-study"})

    for _ in range(2):  # every worker converges when it stops; doing it again changes nothing
        assert tracker.converge(study, key) == parents[-1]

    kids = tracker.child_runs(exp, parents[-1])
    assert sorted(int(r.data.tags["optuna.trial"]) for r in kids) == list(range(9))
    alive = {r.info.run_id for r in tracker.client.search_runs([exp], filter_string="tags.`servetune.role` = 'study'")}
    assert alive == {parents[-1]}
    other = tracker.client.search_runs([exp], filter_string=f"tags.`{KEY_TAG}` = 'another-study'")
    assert [r.data.tags["mlflow.parentRunId"] for r in other] == [parents[0]]  # another study's run is left alone


def test_converge_restores_a_winner_a_racer_deleted(setup):
    study, key, tracker = setup
    exp, parents = _racing_parents(study, key, tracker, n=2)
    tracker.log_trial(exp, parents[0], 0, params={}, metrics={"m": 1.0}, tags={KEY_TAG: key})
    tracker.client.delete_run(parents[-1])  # a worker that read the older attr cleaned it up
    assert tracker.converge(study, key) == parents[-1]
    assert tracker.client.get_run(parents[-1]).info.lifecycle_stage == "active"
    assert [r.data.tags["optuna.trial"] for r in tracker.child_runs(exp, parents[-1])] == ["0"]
