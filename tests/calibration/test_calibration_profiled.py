from __future__ import annotations

import pytest

from backends.sim.catalog import get_gpu, get_model
from backends.sim.costmodel import CostModel
from backends.sim.profiled import ProfiledCostModel, cost_model_for
from tuner.calibration.fit import ProfileFit
from tuner.calibration.profile import make_profile


def _profile():
    """Synthetic per-layer operator and attention rows for llama-2-7b on h100-sxm tp1."""
    rows = []
    for n in (1, 16, 64, 256, 1024, 4096):
        for op, w, s in (("qkv_proj", 0.03, 2.0e-5), ("o_proj", 0.012, 0.7e-5), ("mlp_up", 0.07, 4.5e-5),
                         ("mlp_down", 0.035, 2.3e-5)):
            rows.append({"source": "calibrate", "device": "h100-sxm", "model": "llama-2-7b", "tp": 1, "op": op,
                         "tokens": n, "time_ms": 0.004 + max(w, s * n)})
    for b, c in ((1, 512), (8, 1024), (32, 2048), (64, 512), (16, 4096)):
        rows.append({"source": "calibrate", "device": "h100-sxm", "model": "llama-2-7b", "tp": 1, "op": "attn_decode",
                     "batch": b, "context": c, "time_ms": 0.005 + 1.7e-7 * b * c + 1e-4 * b})
    for ch, c in ((128, 0), (512, 0), (512, 1024), (1024, 0), (2048, 2048)):
        pairs = ch * (c + (ch + 1) / 2)
        rows.append({"source": "calibrate", "device": "h100-sxm", "model": "llama-2-7b", "tp": 1, "op": "attn_prefill",
                     "batch": 1, "chunk": ch, "context": c, "time_ms": 0.01 + 2e-9 * pairs + 1e-6 * ch})
    return ProfileFit(make_profile(rows))


@pytest.fixture(scope="module")
def cm():
    return cost_model_for("llama-2-7b", "h100", 1, profile=_profile())


def test_source_says_profile_or_roofline(cm):
    assert cm.source.startswith("profile:") and "llama-2-7b tp1" in cm.source and "attn_decode" in cm.source
    plain = cost_model_for("llama-2-7b", "h100", 1)
    assert plain.source == "roofline (default efficiency)"
    other = cost_model_for("llama-3.1-8b", "h100", 1, profile=_profile())
    assert other.source.startswith("roofline")


def test_plain_profiled_model_equals_cost_model():
    base = CostModel(get_model("llama-3.1-8b"), get_gpu("h100"), 1)
    plain = ProfiledCostModel(get_model("llama-3.1-8b"), get_gpu("h100"), 1)
    for args in ((512, 512 * 700.0, 32, 32, 32_000.0), (0, 0.0, 16, 16, 9_000.0)):
        assert plain.iteration(*args).time_s == pytest.approx(base.iteration(*args).time_s, rel=1e-12)


def test_profiled_ops_replace_the_roofline(cm):
    lin = cm.linear_op_times(4096)
    assert lin["mlp_up"] / cm.model.layers == pytest.approx((0.004 + 4.5e-5 * 4096) / 1e3, rel=0.1)
    # decode step: affine in context with the fitted per-context slope (32 layers)
    base, per_ctx = cm.decode_affine(16)
    assert per_ctx.time_s == pytest.approx(32 * 1.7e-10, rel=0.05)
    assert base.time_s > 0


@pytest.mark.parametrize("seqs,ctx,n", [(1, 100.0, 1), (16, 9000.0, 37), (64, 50_000.0, 200)])
def test_decode_segment_equals_summed_iterations(cm, seqs, ctx, n):
    seg = cm.decode_segment(seqs, ctx, n)
    total = sum(cm.iteration(0, 0.0, seqs, seqs, ctx + seqs * i).time_s for i in range(n))
    assert seg.time_s == pytest.approx(total, rel=1e-9)
    k = cm.iters_within(seqs, ctx, seg.time_s)
    assert k == n


def test_prefill_time_grows_with_prompt(cm):
    assert 0 < cm.prefill_time(128) < cm.prefill_time(1024) < cm.prefill_time(4096)
