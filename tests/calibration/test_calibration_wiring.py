"""The simulator picks its cost model from ``Deployment.profile`` (``instance_cost_model``)."""

from __future__ import annotations

import numpy as np
import pytest

from backends.base import Deployment
from backends.sim import simulate
from backends.sim.catalog import get_gpu, get_model
from backends.sim.costmodel import CostModel
from backends.sim.profiled import ProfiledCostModel, instance_cost_model, profile_fit
from tests.sim.simkit import poisson_workload
from tuner.calibration.profile import make_profile, write_profile
from tuner.policy import Policy


def _slow_profile(path, scale: float = 1.0):
    """Per-layer linear-op rows for llama-3.1-8b on h100-sxm tp1, ``scale`` x about 3x the roofline."""
    rows = [{"source": "calibrate", "device": "h100-sxm", "model": "llama-3.1-8b", "tp": 1, "op": op,
             "tokens": n, "time_ms": scale * (0.01 + max(w, s * n))}
            for n in (1, 16, 64, 256, 1024, 4096)
            for op, w, s in (("qkv_proj", 0.06, 4e-5), ("o_proj", 0.03, 1.4e-5), ("mlp_up", 0.2, 9e-5),
                             ("mlp_down", 0.1, 4.6e-5))]
    return write_profile(make_profile(rows), path)


def _ends(res):
    return res.records[["first_token_s", "finish_s"]].to_numpy()


def test_unprofiled_deployment_runs_the_plain_roofline_and_says_so():
    w = poisson_workload(60, 6.0, (100, 1500), (20, 200))
    dep = Deployment("llama-3.1-8b", "h100")  # the shared tables measured no llama-3.1-8b on H100
    res = simulate(Policy(), w, dep)
    assert res.meta["cost_model"].startswith("roofline (default efficiency)")
    assert any(n.startswith("cost model: roofline") for n in res.notes)
    plain = simulate(Policy(), w, Deployment("llama-3.1-8b", "h100", profile="none"))
    assert plain.meta["cost_model"] == "roofline (default efficiency)"
    np.testing.assert_array_equal(_ends(res), _ends(plain))  # bit for bit


def test_profile_covering_the_group_is_used_and_slows_the_run(tmp_path):
    prof = _slow_profile(tmp_path / "p.csv")
    w = poisson_workload(60, 6.0, (100, 1500), (20, 200))
    res = simulate(Policy(), w, Deployment("llama-3.1-8b", "h100", profile=str(prof)))
    assert res.meta["cost_model"].startswith("profile:") and "default efficiency" in res.meta["cost_model"]
    plain = simulate(Policy(), w, Deployment("llama-3.1-8b", "h100", profile="none"))
    tpot = (res.records.finish_s - res.records.first_token_s).sum()
    assert tpot > 1.5 * (plain.records.finish_s - plain.records.first_token_s).sum()
    # another TP degree is not covered: the roofline, unchanged
    other = instance_cost_model(get_model("llama-3.1-8b"), get_gpu("h100"), 2, profile=str(prof))
    assert type(other) is CostModel and "has no llama-3.1-8b h100-sxm tp2 rows" in other.source


def test_profile_fit_is_cached_per_file_version(tmp_path):
    prof = _slow_profile(tmp_path / "p.csv")
    a = profile_fit(str(prof))
    assert profile_fit(str(prof)) is a and profile_fit("none") is None
    _slow_profile(prof, scale=2.0)  # rewritten: another content hash
    b = profile_fit(str(prof))
    assert b is not a and b.key != a.key
    cm = instance_cost_model(get_model("llama-3.1-8b"), get_gpu("h100"), 1, profile=str(prof))
    assert isinstance(cm, ProfiledCostModel) and b.key in cm.source


def test_draft_model_uses_the_same_selection():
    w = poisson_workload(30, 4.0, (100, 800), (50, 150))
    pol = Policy(speculation="draft", spec_draft_model="tiny-llama")
    a = simulate(pol, w, Deployment("llama-3.1-8b", "h100"))
    b = simulate(pol, w, Deployment("llama-3.1-8b", "h100", profile="none"))
    np.testing.assert_array_equal(_ends(a), _ends(b))


def test_unknown_profile_file_is_an_error():
    with pytest.raises((OSError, ValueError)):
        simulate(Policy(), poisson_workload(5, 1.0, 100, 10), Deployment("llama-3.1-8b", "h100", profile="nope.csv"))
