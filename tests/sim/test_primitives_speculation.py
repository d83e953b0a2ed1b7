"""Speculative decoding: cheaper tokens at small batches, dearer at large (compute-bound) ones."""

from __future__ import annotations

import numpy as np
import pytest
from simkit import poisson_workload, run

from backends.base import Deployment
from backends.sim.speculation import expected_tokens
from tuner.policy import Policy


def test_expected_tokens_formula():
    assert expected_tokens(0.5, 4) == pytest.approx(1 + 0.5 + 0.25 + 0.125 + 0.0625)
    assert expected_tokens(0.0, 3) == pytest.approx(1.0)


def _tpot(sc):
    return sc.tpot_p50_ms


def test_ngram_lowers_tpot_at_low_load_and_hurts_at_high_load():
    low = poisson_workload(40, 0.5, (200, 600), (100, 300), seed=2)
    _, off = run(low)
    res, on = run(low, speculation="ngram", spec_k=4)
    assert _tpot(on) < 0.7 * _tpot(off)          # E(4) ≈ 1.94 tokens per (slightly dearer) step
    assert on.spec_acceptance == pytest.approx((expected_tokens(0.5, 4) - 1) / 4, rel=0.05)
    high = poisson_workload(1500, 200.0, (200, 600), (100, 300), seed=2)  # batch near 256: compute-bound
    _, off_h = run(high, check=False)
    _, on_h = run(high, check=False, speculation="ngram", spec_k=4)
    assert _tpot(on_h) > _tpot(off_h)
    assert on_h.throughput_tok_s < off_h.throughput_tok_s


def test_dynamic_k_never_loses_to_fixed_k_at_high_load_and_keeps_low_load_gain():
    high = poisson_workload(1500, 200.0, (200, 600), (100, 300), seed=2)
    _, fixed = run(high, check=False, speculation="ngram", spec_k=4)
    _, dyn = run(high, check=False, speculation="ngram", spec_k=4, spec_dynamic=True)
    _, off = run(high, check=False)
    assert dyn.throughput_tok_s > fixed.throughput_tok_s
    assert dyn.throughput_tok_s >= 0.97 * off.throughput_tok_s
    low = poisson_workload(40, 0.5, (200, 600), (100, 300), seed=2)
    _, off_l = run(low)
    _, dyn_l = run(low, speculation="ngram", spec_k=4, spec_dynamic=True)
    assert _tpot(dyn_l) < 0.7 * _tpot(off_l)


def test_draft_model_costs_its_forward_passes_and_memory():
    dep = Deployment("llama-3.1-70b", "h100", n_gpus=4)
    w = poisson_workload(30, 0.3, (200, 600), (100, 300), seed=4)
    _, off = run(w, dep, tp=4)
    res_d, d = run(w, dep, tp=4, speculation="draft", spec_draft_model="llama-3.1-8b", spec_k=4)
    _, ng = run(w, dep, tp=4, speculation="ngram", spec_k=4, spec_acceptance=0.7)
    assert _tpot(d) < _tpot(off)                 # α = 0.7 default for a draft model
    assert _tpot(ng) < _tpot(d)                  # same α, but the draft's 4 forwards cost time
    assert res_d.telemetry.counters["kv_capacity_blocks"] < run(w, dep, tp=4)[0].telemetry.counters[
        "kv_capacity_blocks"]


def test_per_tenant_acceptance_and_determinism():
    w = poisson_workload(60, 2.0, (100, 400), (20, 200), seed=5, tenant=np.repeat(["a", "b"], 30))
    res, _ = run(w, speculation="ngram", spec_acceptance_by_tenant={"a": 0.8, "b": 0.2})
    assert res.telemetry.counters["spec_alpha"] == pytest.approx(0.5)
    again, _ = run(w, speculation="ngram", spec_acceptance_by_tenant={"a": 0.8, "b": 0.2})
    assert np.array_equal(res.records["finish_s"].to_numpy(), again.records["finish_s"].to_numpy())
    assert Policy.from_dict(Policy(spec_acceptance_by_tenant={"a": 0.8}).to_dict()).spec_acceptance_by_tenant == (
        ("a", 0.8),)
    with pytest.raises(ValueError, match="spec_acceptance_by_tenant"):
        Policy(spec_acceptance_by_tenant={"a": 1.5})
