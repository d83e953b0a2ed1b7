"""The engine preset's client lag (vLLM V1: output processing + streaming) in the simulator's records."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from simkit import H100_8B, poisson_workload

from backends.base import Deployment
from backends.sim import SimBackend, simulate
from backends.sim.client_lag import with_client_lag
from backends.sim.engines import get_engine
from tuner.calibration.simrun import simulate_with
from tuner.policy import Policy


def test_vllm_v1_records_carry_the_client_lag_once():
    w = poisson_workload(200, 8.0, (100, 1500), (10, 200), seed=2)
    lag = get_engine("vllm-v1").client_lag_steps
    assert 0.3 <= lag <= 1.2  # fitted on 13 real vLLM v0.15.1 runs: 0.64 (with the scheduling step ahead)
    raw = simulate_with(None, Policy(), w, H100_8B).records  # the engine's own times
    got = simulate(Policy(), w, H100_8B).records
    step = (raw.finish_s - raw.first_token_s) / (raw.output_len - 1)
    step = step.where(raw.output_len >= 2, step.median())
    np.testing.assert_allclose(got.first_token_s, raw.first_token_s + lag * step, rtol=1e-12)
    np.testing.assert_allclose(got.finish_s, raw.finish_s + lag * step, rtol=1e-12)
    assert (got.first_token_s > raw.first_token_s).all()


@pytest.mark.parametrize("knobs", [{"replicas": 2}, {"disaggregated": True, "prefill_instances": 1, "decode_instances": 1}])
def test_cluster_runs_add_it_once(knobs):
    w = poisson_workload(100, 8.0, (100, 1500), (10, 100), seed=3)
    res = SimBackend().run(Policy(**knobs), w, Deployment("llama-3.1-8b", "h100", n_gpus=2))
    assert sum(n.startswith("client lag") for n in res.notes) == 1


def test_the_given_result_is_left_as_it_was():
    w = poisson_workload(50, 5.0, (100, 800), (10, 60), seed=6)
    res = simulate_with(None, Policy(), w, H100_8B)
    before = res.records.copy()
    lagged = with_client_lag(res, 1.5, 0.002)
    pd.testing.assert_frame_equal(res.records, before)
    assert (lagged.records.finish_s > res.records.finish_s).all()


def test_it_can_be_left_out_for_engine_side_times():
    w = poisson_workload(50, 5.0, (100, 800), (10, 60), seed=5)
    raw = simulate_with(None, Policy(), w, H100_8B).records
    for res in (simulate(Policy(), w, H100_8B, client_lag=False), SimBackend(client_lag=False).run(Policy(), w, H100_8B)):
        np.testing.assert_array_equal(res.records.first_token_s, raw.first_token_s)
        assert not any(n.startswith("client lag") for n in res.notes)
