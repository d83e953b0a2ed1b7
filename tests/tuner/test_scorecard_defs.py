"""The one scorecard function, checked against hand-computed definitions."""

from __future__ import annotations

import numpy as np
import pytest

from backends.base import RunResult, Telemetry, empty_records
from tuner.policy import Policy
from tuner.scorecard import score
from workloads.workload import SLOClass, build_workload

SLO = (SLOClass("tight", ttft_ms=150, tpot_ms=60), SLOClass("loose", ttft_ms=1000, tpot_ms=200))


def _result(w, first, finish, out, rejected=None, **tel):
    rec = empty_records(w)
    rec["first_token_s"] = first
    rec["finish_s"] = finish
    rec["output_len"] = out
    if rejected is not None:
        rec["rejected"] = rejected
    t = dict(makespan_s=10.0, n_gpus=2, gpu_hour_usd=4.0, spot_gpu_hour_usd=1.0)
    t.update(tel)
    return RunResult(rec, Telemetry(**t), Policy(), "test")


def test_latency_and_goodput_definitions():
    w = build_workload("t", [0, 1, 2, 3], [100] * 4, [11, 11, 11, 1], slo_class=["tight", "tight", "loose", "tight"],
                       slo_classes=SLO)
    first = np.array([0.1, 1.3, 2.5, 3.1])     # TTFT 100, 300, 500, 100 ms
    finish = first + np.array([0.5, 0.5, 1.5, 0.0])  # TPOT 50, 50, 150 ms; last has 1 token
    sc = score(_result(w, first, finish, w.output_len), w)
    assert sc.ttft_mean_ms == pytest.approx(250)
    assert sc.tpot_mean_ms == pytest.approx((50 + 50 + 150) / 3)
    # met: req0 (100<=150, 50<=60), req2 (500<=1000, 150<=200), req3 (100<=150, no TPOT); req1 misses TTFT
    assert sc.slo_attainment == pytest.approx(0.75)
    assert sc.goodput_frac == pytest.approx((11 + 11 + 1) / 34)
    assert sc.throughput_tok_s == pytest.approx(34 / 10)
    # $/1M output tokens: 2 GPUs x 10 s at $4/h
    assert sc.usd_per_1m_tokens == pytest.approx(2 * 10 / 3600 * 4 / (34 / 1e6))


def test_rejected_requests_count_as_missed_goodput():
    w = build_workload("t", [0, 1], [10, 10], [5, 5])
    sc = score(_result(w, [0.01, np.nan], [0.05, np.nan], [5, 0], rejected=[False, True]), w)
    assert sc.n_rejected == 1 and sc.n_completed == 1
    assert sc.goodput_frac == pytest.approx(0.5)
    assert sc.slo_attainment == pytest.approx(0.5)


def test_spot_price_blends():
    w = build_workload("t", [0], [10], [5])
    sc = score(_result(w, [0.1], [0.5], [5], spot_fraction=0.5), w)
    assert sc.usd_per_1m_tokens == pytest.approx(0.5 * (4 + 1) / 4 * sc.usd_per_1m_tokens_ondemand)


def test_fairness_detects_starved_tenant():
    # two tenants backlogged all along; tenant b gets almost no service until the end
    n = 40
    arr = np.zeros(n)
    ten = ["a"] * 20 + ["b"] * 20
    first = np.r_[np.linspace(0.1, 5, 20), np.linspace(9, 9.9, 20)]
    fin = first + 0.05
    w = build_workload("t", arr, [100] * n, [10] * n, tenant=ten)
    unfair = score(_result(w, first, fin, [10] * n), w)
    inter = np.empty(n)
    inter[0::2], inter[1::2] = np.linspace(0.1, 9.9, 20), np.linspace(0.15, 9.95, 20)
    w2 = build_workload("t", arr, [100] * n, [10] * n, tenant=["a", "b"] * 20)
    fair = score(_result(w2, inter, inter + 0.05, [10] * n), w2)
    assert unfair.max_service_diff > 3 * fair.max_service_diff
    assert unfair.jain_index < fair.jain_index
    assert fair.jain_index > 0.9


def test_fairness_yardstick_ignores_the_trials_vtc_weights():
    """The fairness metrics weigh prompt 1 and output 2 (DESIGN), whatever VTC weights the trial's
    policy searched: a trial cannot improve its fairness by redefining service."""
    from dataclasses import replace

    # tenant a: long prompts, short outputs; tenant b: short prompts, long outputs
    w = build_workload("t", [0, 0, 0, 0], [400, 400, 10, 10], [10, 10, 200, 200], tenant=["a", "a", "b", "b"])
    res = _result(w, [0.1, 0.2, 0.3, 0.4], [1.0, 1.1, 9.0, 9.5], w.output_len)
    base = score(res, w)
    for weights in ({"vtc_input_weight": 0.0, "vtc_output_weight": 1.0}, {"vtc_input_weight": 5.0}):
        other = score(replace(res, policy=Policy(queue="vtc", **weights)), w)
        assert (other.service_ratio, other.max_service_diff, other.jain_index) == (
            base.service_ratio, base.max_service_diff, base.jain_index)
    # input + 2 x output: a served 2 x (400 + 2 x 10) = 840, b 2 x (10 + 2 x 200) = 820
    assert base.service_ratio == pytest.approx(840 / 820)
