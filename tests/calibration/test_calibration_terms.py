from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from backends.sim.costmodel import CostModel
from backends.sim.profiles import ProfileRow, load_rows
from backends.sim.terms import DEFAULT_PRIOR, FittedTerms, fit_terms, predict_terms, terms_ape
from tuner.calibration.fidelity import stats, terms_leave_out


def _row(gpu: str, tp: int, batch: tuple, measured: float = 1.0) -> ProfileRow:
    return ProfileRow("t", "llama-2-70b", gpu, tp, measured, (batch,), label="x")


def test_step_time_is_the_longer_of_work_and_floor():
    """A one-token decode at TP8 is launch-bound (the floor sets its time); an 8k-token prefill
    is work-bound; both agree with the smooth max within a few %."""
    t = FittedTerms(allreduce_hop=3e-6, layer_s=3e-4)
    decode = _row("a100-80gb", 8, (0, 0.0, 0, 1, 1, 512.0))
    prefill = _row("a100-80gb", 8, (8192, 8192 * 4096.5, 1, 0, 0, 0.0))
    floor_only = replace(t, **{k: 0.0 for k in ("gemm", "gemm_ridge", "prefill_attn", "kv_read", "decode_attn",
                                                 "elementwise", "activation_spill", "allreduce_bytes", "allreduce_hop")})
    work_only = replace(t, step_s=0.0, layer_s=0.0, seq_s=0.0, prefill_s=0.0)
    d, d_floor, d_work = (float(predict_terms([decode], x)[0]) for x in (t, floor_only, work_only))
    p, p_floor, p_work = (float(predict_terms([prefill], x)[0]) for x in (t, floor_only, work_only))
    assert d_floor > 2 * d_work and d == pytest.approx(d_floor, rel=0.05)
    assert p_work > 5 * p_floor and p == pytest.approx(p_work, rel=0.01)


def test_launch_floor_scales_with_the_gpu_memory_speed_and_host_costs_do_not():
    """The per-step and per-layer launch floor of the same launch-bound step is shorter on H100
    than on A100 by their HBM bandwidth ratio; the host's per-sequence and per-prefill costs are
    the same on both."""
    no_work = {k: 0.0 for k in ("gemm", "gemm_ridge", "prefill_attn", "kv_read", "decode_attn", "elementwise",
                                "activation_spill", "allreduce_bytes", "allreduce_hop")}
    launch = replace(FittedTerms(), seq_s=0.0, prefill_s=0.0, **no_work)
    host = replace(FittedTerms(), step_s=0.0, layer_s=0.0, **no_work)
    for b in ((0, 0.0, 0, 4, 4, 2048.0), (512, 512 * 256.5, 1, 0, 0, 0.0)):
        a100, h100 = predict_terms([_row("a100-80gb", 4, b), _row("h100-sxm", 4, b)], launch)
        assert a100 / h100 == pytest.approx(3.35e12 / 2.039e12, rel=1e-6)
        a100, h100 = predict_terms([_row("a100-80gb", 4, b), _row("h100-sxm", 4, b)], host)
        assert a100 == pytest.approx(h100, rel=1e-12) and a100 > 0.0
    seqs = [float(predict_terms([_row("h100-sxm", 4, (0, 0.0, 0, n, n, n * 512.0))], host)[0]) for n in (1, 9)]
    assert seqs[1] - seqs[0] == pytest.approx(8 * host.seq_s, rel=1e-9)


def test_fit_recovers_known_terms_on_splitwise_shapes():
    """Rows priced by known coefficients are fitted back to within 1 % on held-out shapes."""
    rows = list(load_rows("splitwise"))
    truth = FittedTerms(gemm=1.2, gemm_ridge=0.4, prefill_attn=2.5, kv_read=2.0, decode_attn=8.0, elementwise=3.0,
                        activation_spill=15.0, allreduce_bytes=1.0, allreduce_hop=3e-5, step_s=4e-3, layer_s=3e-4,
                        seq_s=3e-4, prefill_s=2e-2)
    synth = [replace(r, measured_s=float(t)) for r, t in zip(rows, predict_terms(rows, truth), strict=True)]
    train = [r for i, r in enumerate(synth) if i % 3]  # rows alternate prefill / decode
    test = synth[::3]
    assert max(terms_ape(test, fit_terms(train, prior_weight=1e-4))) < 1.0


def test_splitwise_leave_one_tp_out_meets_the_target():
    """Issue 7's per-batch target, out of sample: fitted on two TP degrees, the third is
    predicted with median <= 8 % and p90 <= 15 % (measured 4.9 / 12.0 %)."""
    rows = list(load_rows("splitwise"))
    med, p90 = stats(terms_leave_out(rows, lambda r: r.tp))
    assert med <= 8.0 and p90 <= 15.0


def test_splitwise_leave_one_gpu_out_meets_the_target():
    """Fitted on one GPU's rows (A100 or H100), the other's are predicted within the target
    (measured 4.2 / 13.0 %; 4.4 / 17.0 % while the host's per-sequence and per-prefill costs were
    scaled with the GPU like the launch floor)."""
    rows = list(load_rows("splitwise"))
    med, p90 = stats(terms_leave_out(rows, lambda r: r.gpu))
    assert med <= 8.0 and p90 <= 15.0


def test_terms_round_trip_and_validate():
    t = FittedTerms(gemm=1.1, seq_s=2e-4)
    assert FittedTerms.from_dict(t.to_dict()) == t
    with pytest.raises(ValueError, match="unknown"):
        FittedTerms.from_dict({"gemmm": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        FittedTerms(kv_read=-1.0)
    with pytest.raises(ValueError, match="operator row"):
        predict_terms([ProfileRow("v", "llama-2-7b", "h100-sxm", 1, 1e-5, op="qkv", tokens=8)], DEFAULT_PRIOR)
    assert np.isfinite(predict_terms([_row("h100-sxm", 2, (512, 512 * 256.5, 1, 0, 0, 0.0))], DEFAULT_PRIOR)).all()


def test_terms_cost_model_prices_steps_as_the_fit_and_keeps_decode_closed_forms():
    """The simulator's cost model with fitted terms: a prefill step costs exactly what the fit
    predicts; a decode step (an affine fit of the smooth max over 256-8192 tokens per sequence)
    is within 5 % of it; a closed-form decode segment equals the sum of its steps."""
    from backends.sim.catalog import get_gpu, get_model
    from backends.sim.termcost import TermsCostModel

    terms = fit_terms(load_rows("splitwise"))
    cm = TermsCostModel(get_model("llama-2-70b"), get_gpu("h100-sxm"), 4, terms=terms, ctx_per_seq=1024.0)
    pre = (2048, 2048 * 1024.5, 1, 8, 8, 8 * 3000.0)
    assert cm.iteration(2048, 2048 * 1024.5, 8, 8, 8 * 3000.0).time_s == pytest.approx(
        float(predict_terms([_row("h100-sxm", 4, pre)], terms)[0]), rel=1e-9)
    for ctx, tol in ((32 * 256.0, 0.05), (32 * 1024.0, 0.05), (32 * 4096.0, 0.05)):
        want = float(predict_terms([_row("h100-sxm", 4, (0, 0.0, 0, 32, 32, ctx))], terms)[0])
        assert cm.iteration(0, 0.0, 32, 32, ctx).time_s == pytest.approx(want, rel=tol)
    steps = sum(cm.iteration(0, 0.0, 32, 32, 32 * 700.0 + 32 * i).time_s for i in range(50))
    assert cm.decode_segment(32, 32 * 700.0, 50).time_s == pytest.approx(steps, rel=1e-9)
    assert cm.iteration(2048, 2048 * 1024.5, 0, 0, 0.0).flops == CostModel(
        get_model("llama-2-70b"), get_gpu("h100-sxm"), 4).iteration(2048, 2048 * 1024.5, 0, 0, 0.0).flops


def test_simulator_runs_on_the_terms_cost_model_chosen_by_the_deployment():
    """End to end: ``Deployment(cost_model="terms")`` runs the engine (closed-form decode segments,
    invariants checked) on a ``TermsCostModel`` fitted to the Splitwise table and says so; the
    Splitwise terms carry an eager engine's launch floor, so TPOT is longer than under the default
    (CUDA-graph vLLM V1) roofline."""
    from backends.base import Deployment
    from tests.sim.simkit import poisson_workload, run

    wl = poisson_workload(60, 4.0, (200, 600), (20, 80))
    _, base = run(wl)
    res, fitted = run(wl, Deployment("llama-3.1-8b", "h100", cost_model="terms"))
    assert fitted.tpot_p50_ms > 1.3 * base.tpot_p50_ms
    src = res.meta["cost_model"]
    assert src.startswith("fitted operator-class terms (profile:") and "splitwise: 300 batch rows" in src
    assert "llama-3.1-8b h100-sxm tp1 not measured" in src
    assert any(n == f"cost model: {src}" for n in res.notes)


def test_terms_cost_model_choice_from_a_profile():
    """``cost_model="terms"`` fits the named profile's batch rows (Sarathi: with the reference
    prior, Splitwise's work terms), says when the group was measured, rejects a profile without
    batch rows, and leaves the default path ("auto") untouched."""
    from backends.base import Deployment
    from backends.sim.catalog import get_gpu, get_model
    from backends.sim.profiled import instance_cost_model
    from backends.sim.termcost import TermsCostModel
    from backends.sim.terms import REFERENCE_PRIOR_WEIGHT, reference_prior

    m, g = get_model("yi-34b"), get_gpu("a100-80gb-pcie")
    cm = instance_cost_model(m, g, 2, profile="sarathi", cost_model="terms")
    assert isinstance(cm, TermsCostModel) and "sarathi: 32 batch rows" in cm.source and "tp2 measured" in cm.source
    want = fit_terms(load_rows("sarathi"), prior=reference_prior(), prior_weight=REFERENCE_PRIOR_WEIGHT)
    assert cm.terms == want
    with pytest.raises(ValueError, match="no batch rows"):
        instance_cost_model(m, g, 2, profile="vidur", cost_model="terms")
    with pytest.raises(ValueError, match="auto or terms"):
        Deployment("yi-34b", "a100-80gb-pcie", cost_model="roofline")
    auto = instance_cost_model(m, g, 2)
    assert type(auto) is CostModel and auto.source == "roofline (default efficiency)"


def test_sarathi_stratified_kfold_figure():
    """Sarathi (32 clean rows) with the reference prior, out of sample by a 5-fold stratified by
    batch kind, mean over 5 seeds: measured median 7.7 %, p90 13.7 % (target 8 / 15). With the
    whole Splitwise fit as prior (its engine's floor too) 8.4 / 13.8; with the 35 rows as
    published (cold-start and instrumented timings in) and that prior 8.7 / 18.9
    (docs/calibration.md). Guards the figure."""
    from backends.sim.terms import reference_prior, splitwise_terms
    from tuner.calibration.fidelity import SARATHI_PRIOR_WEIGHT, kfold_lines

    rows = list(load_rows("sarathi"))

    def mean_of(prior):
        return kfold_lines("sarathi", rows, "", lambda key: terms_leave_out(rows, key, prior, SARATHI_PRIOR_WEIGHT))[1]

    ref, whole = mean_of(reference_prior()), mean_of(splitwise_terms())
    assert ref.median <= 8.0 and ref.p90 <= 15.0
    assert ref.median < whole.median


def test_reference_prior_carries_the_gpu_work_not_the_engine_floor():
    from backends.sim.terms import DEFAULT_PRIOR, FLOOR_TERMS, WORK_TERMS, reference_prior, splitwise_terms

    ref, sw = reference_prior(), splitwise_terms()
    assert all(getattr(ref, k) == getattr(sw, k) for k in WORK_TERMS)
    assert all(getattr(ref, k) == getattr(DEFAULT_PRIOR, k) for k in FLOOR_TERMS)
    assert sw.prefill_s > 4 * ref.prefill_s  # Splitwise's engine: ~22 ms per prefill step


def test_prefill_attention_stays_in_its_physical_range_when_one_model_cannot_tell():
    """Fitted on BLOOM-176B alone (TP8 only), the long-prompt cost went into attention at 11.4x
    ideal; the physical bound keeps it a FlashAttention-class cost (<= 4x), and that fold's
    held-out Llama-2-70B prefill rows get closer (p90 21.8 % unbounded -> 17.6 %)."""
    from backends.sim.profiles import load_rows
    from backends.sim.terms import PHYSICAL_BOUNDS, fit_terms, terms_ape

    rows = list(load_rows("splitwise"))
    bloom = [r for r in rows if "bloom" in r.model]
    llama_prefill = [r for r in rows if "llama" in r.model and r.label.startswith("prefill")]
    fit = fit_terms(bloom)
    lo, hi = PHYSICAL_BOUNDS["prefill_attn"]
    assert lo <= fit.prefill_attn <= hi + 1e-9
    assert float(np.percentile(terms_ape(llama_prefill, fit), 90)) < 19.0
