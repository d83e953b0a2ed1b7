"""Backend registry (lazy, clear errors) and the margin pruner."""

from __future__ import annotations

import optuna
import pytest

from backends.registry import get_backend
from tuner.pruning import MarginPruner


def test_sim_backend_by_name():
    b = get_backend("sim")
    assert b.name == "sim" and hasattr(b, "run")


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match=r"backend 'tgi': unknown \(choose one of sim, vllm, sglang\)"):
        get_backend("tgi")


@pytest.mark.parametrize("name", ["vllm", "sglang"])
def test_live_backend_missing_is_a_clear_value_error(name):
    try:
        b = get_backend(name)
    except ValueError as e:
        assert f"backend {name!r} is not available" in str(e) and "\n" not in str(e)
    else:  # the live engine and its servetune module are installed here
        assert hasattr(b, "run")


def _study_with(values_at_step0: list[float], direction: str = "maximize"):
    study = optuna.create_study(direction=direction, pruner=MarginPruner(percentile=50, margin=0.1, n_startup_trials=3))
    for v in values_at_step0:
        t = study.ask()
        t.report(v, 0)
        study.tell(t, v)
    return study


def test_margin_pruner_keeps_near_ties_and_prunes_clear_losers():
    study = _study_with([100.0, 101.0, 99.0, 100.5])
    t = study.ask()
    t.report(95.0, 0)  # 5 % below the median: a near tie, kept
    assert not t.should_prune()
    t2 = study.ask()
    t2.report(80.0, 0)  # 20 % below: pruned
    assert t2.should_prune()


def test_margin_pruner_minimize_and_startup():
    study = _study_with([10.0, 10.0, 10.0], direction="minimize")
    t = study.ask()
    t.report(12.0, 0)
    assert t.should_prune()
    young = _study_with([10.0, 10.0])
    t = young.ask()
    t.report(0.0, 0)
    assert not t.should_prune()  # fewer finished trials than n_startup_trials
