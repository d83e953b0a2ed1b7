from __future__ import annotations

import pytest

from backends.sim.catalog import get_gpu, get_model
from backends.sim.costmodel import CostModel, Efficiency
from backends.sim.engines import get_engine


def cm(model="llama-3.1-8b", gpu="h100", **kw):
    return CostModel(get_model(model), get_gpu(gpu), **kw)


def test_batch1_decode_is_memory_bound():
    c = cm("yi-34b")
    t = c.iteration(0, 0.0, 1, 1, 512).time_s
    lower = c.weight_bytes / c.gpu.hbm_bytes_s
    assert lower < t < 1.2 * c.weight_bytes / (c.gpu.hbm_bytes_s * c.eff.mem)
    small = cm()
    t8 = small.iteration(0, 0.0, 1, 1, 512).time_s
    assert small.weight_bytes / small.gpu.hbm_bytes_s < t8 < 2.0 * small.weight_bytes / small.gpu.hbm_bytes_s


def test_long_prefill_compute_bound_and_linear():
    c = cm(engine=get_engine("vllm-v1"))
    t4, t8 = c.prefill_time(4096), c.prefill_time(8192)
    flops = c.iteration(8192, 8192 * 8193 / 2, 0, 0, 0.0).flops
    assert t8 > 1.9 * t4  # linear (+ quadratic attention)
    assert t8 == pytest.approx(flops / (c.peak_flops * c.eff.gemm), rel=0.35)
    assert c.prefill_time(0) == 0.0


@pytest.mark.parametrize("model,tp,tps", [("llama-3.1-8b", 1, 1), ("mixtral-8x7b", 2, 1), ("llama-2-70b", 4, 3)])
def test_decode_segment_equals_sum_of_iterations(model, tp, tps):
    c = cm(model, tp=tp)
    seqs, ctx, n = 37, 37 * 900.0, 250
    total_t = total_f = total_b = 0.0
    for i in range(n):
        it = c.iteration(0, 0.0, seqs, seqs * tps, ctx + i * seqs * tps)
        total_t += it.time_s
        total_f += it.flops
        total_b += it.hbm_bytes
    seg = c.decode_segment(seqs, ctx, n, tokens_per_seq=tps)
    assert seg.time_s == pytest.approx(total_t, rel=1e-9)
    assert seg.flops == pytest.approx(total_f, rel=1e-9)
    assert seg.hbm_bytes == pytest.approx(total_b, rel=1e-9)
    assert c.decode_segment(seqs, ctx, 0).time_s == 0.0


@pytest.mark.parametrize("budget", [0.0, 1e-4, 0.01, 0.5, 7.3, 60.0])
def test_iters_within_consistent(budget):
    c = cm()
    seqs, ctx = 64, 64 * 2000.0
    n = c.iters_within(seqs, ctx, budget)
    assert c.decode_segment(seqs, ctx, n).time_s <= budget
    assert c.decode_segment(seqs, ctx, n + 1).time_s > budget


def test_tp_reduces_time_and_adds_allreduce():
    t1 = cm("llama-2-70b", tp=1).iteration(0, 0.0, 32, 32, 32 * 1000.0)
    c4 = cm("llama-2-70b", tp=4)
    t4 = c4.iteration(0, 0.0, 32, 32, 32 * 1000.0)
    assert t4.time_s < t1.time_s / 2
    noar = CostModel(c4.model, c4.gpu, tp=4, efficiency=Efficiency(allreduce_latency_s=0.0, comm=1.5))
    assert noar.iteration(0, 0.0, 32, 32, 32 * 1000.0).time_s < t4.time_s
    assert cm("llama-2-70b", gpu="l40s", tp=4).iteration(4096, 4096 * 2048.5, 0, 0, 0).time_s > \
        cm("llama-2-70b", gpu="l40s", tp=1).iteration(4096, 4096 * 2048.5, 0, 0, 0).time_s / 4  # PCIe


def test_fp8_weights_halve_weight_bytes():
    from backends.sim.costmodel import linear_weight_params
    m = get_model("llama-3.1-70b")
    b16, b8 = cm("llama-3.1-70b").weight_bytes, cm("llama-3.1-70b", weight_dtype="fp8").weight_bytes
    assert b16 - b8 == pytest.approx(linear_weight_params(m), rel=1e-12)  # block linears: 2 → 1 byte
    assert 0.5 < b8 / b16 < 0.52
    assert cm(kv_dtype="fp8").kv_bytes_per_token == cm().kv_bytes_per_token / 2


def test_moe_touches_more_experts_with_larger_batches():
    c = cm("mixtral-8x7b", tp=2)
    b1 = c.iteration(0, 0.0, 1, 1, 100.0).hbm_bytes
    b8 = c.iteration(0, 0.0, 8, 8, 800.0).hbm_bytes
    b64 = c.iteration(0, 0.0, 64, 64, 6400.0).hbm_bytes
    assert b1 < b8 < b64
    assert b1 < 0.45 * c.weight_bytes  # 2 of 8 experts at batch 1
    assert b64 > 0.95 * c.weight_bytes  # every expert


def test_fp8_llama4_keeps_attention_16bit():
    from backends.sim.costmodel import quantized_params
    m = get_model("llama-4-scout-17b-16e")
    attn = m.layers * m.attn_params_per_layer
    b8 = cm("llama-4-scout-17b-16e", weight_dtype="fp8", tp=2).weight_bytes
    assert b8 == pytest.approx((quantized_params(m, "fp8") + 2.0 * (m.params - quantized_params(m, "fp8"))) / 2)
    assert quantized_params(m, "bf16") - quantized_params(m, "fp8") == attn  # self_attn stays bf16
    assert quantized_params(get_model("llama-3.1-70b"), "fp8") == quantized_params(get_model("llama-3.1-70b"), "bf16")


def test_cuda_graph_padding_sizes_and_moe_cost():
    from backends.sim.costmodel import cuda_graph_size
    assert [cuda_graph_size(n) for n in (1, 2, 3, 5, 8, 9, 256, 257, 512, 513)] == \
        [1, 2, 4, 8, 8, 16, 256, 272, 512, 513]
    # a padded MoE decode step routes the padding rows too: 9 sequences touch as many experts as 16
    c = cm("mixtral-8x7b", tp=2)
    t9, t16, t17 = (c.iteration(0, 0.0, n, n, 0.0).time_s for n in (9, 16, 17))
    assert t9 == pytest.approx(t16, rel=0.02) and t17 > t16


def test_engine_overheads_and_bad_inputs():
    assert cm(engine=get_engine("vllm-v0")).iteration(0, 0, 8, 8, 800).time_s > \
        cm(engine=get_engine("tensorrt-llm")).iteration(0, 0, 8, 8, 800).time_s
    assert cm().iteration(0, 0.0, 0, 0, 0.0).time_s == 0.0
    with pytest.raises(ValueError):
        Efficiency(gemm=0.0)
    with pytest.raises(ValueError):
        cm(tp=0)
    with pytest.raises(ValueError):
        cm(weight_dtype="int4")


def test_profiles_load_predict_and_fit():
    from backends.sim.profiles import TABLES, ape, fit_efficiency, load_rows

    for t in TABLES:
        rows = load_rows(t)
        assert len(rows) > 30 and all(r.measured_s > 0 for r in rows)
    with pytest.raises(ValueError, match="unknown profile table"):
        load_rows("nope")
    rows = load_rows("sarathi")
    before = sorted(ape(rows))[len(rows) // 2]
    eff = fit_efficiency(rows)
    after = sorted(ape(rows, eff))[len(rows) // 2]
    assert after < before and after < 15.0
    assert eff.comm <= 1.0 and eff.gemm <= 1.0
    with pytest.raises(ValueError, match="no profile rows"):
        fit_efficiency([])


def test_for_deployment_and_efficiency_dict():
    from backends.base import Deployment
    from backends.sim.costmodel import efficiency_from_dict, efficiency_to_dict

    c = CostModel.for_deployment(Deployment(model="meta-llama/Llama-3.1-70B-Instruct", gpu="h100", n_gpus=4,
                                            engine="sglang", weight_dtype="fp8"), tp=4)
    assert c.model.name == "llama-3.1-70b" and c.tp == 4 and c.engine.name == "sglang" and c.weight_dtype == "fp8"
    e = Efficiency(gemm=0.5, layer_overhead_s=2e-5)
    assert efficiency_from_dict(efficiency_to_dict(e)) == e
    with pytest.raises(ValueError, match="unknown keys"):
        efficiency_from_dict({"gemmm": 0.5})


def test_smooth_roofline_near_ridge():
    hard = cm(efficiency=Efficiency(roofline_p=64.0))
    soft = cm(efficiency=Efficiency(roofline_p=2.0))
    ridge = 300  # tokens near the H100 ridge for bf16 GEMMs
    assert soft.iteration(ridge, ridge * 150.5, 0, 0, 0.0).time_s > 1.2 * hard.iteration(ridge, ridge * 150.5, 0, 0, 0.0).time_s
    far = 16384
    assert soft.prefill_time(far) == pytest.approx(hard.prefill_time(far), rel=0.05)
    with pytest.raises(ValueError, match="roofline_p"):
        Efficiency(roofline_p=0.5)


def test_profile_row_like_a_live_calibration():
    from backends.sim.profiles import ProfileRow, predict

    row = ProfileRow("live", "llama-3.1-70b", "h100", 4, 0.021, ((0, 0.0, 0, 32, 32, 40_000.0),))
    fp8 = ProfileRow("live", "llama-3.1-70b", "h100", 4, 0.021, ((0, 0.0, 0, 32, 32, 40_000.0),), weight_dtype="fp8")
    direct = cm("llama-3.1-70b", tp=4).iteration(0, 0.0, 32, 32, 40_000.0).time_s
    assert predict(row) == pytest.approx(direct, rel=1e-12)
    assert predict(fp8) < 0.75 * predict(row)  # decode reads half the weight bytes


def test_swap_and_kv_transfer_times():
    c = cm("llama-3.1-8b")
    assert c.swap_time(1000) == pytest.approx(1000 * 131072 / 64e9)
    nvlink = c.kv_transfer_time(4096)
    ib = c.kv_transfer_time(4096, link_bytes_s=50e9)
    assert 0 < nvlink < ib
    assert cm("llama-3.1-8b", tp=2).swap_time(1000) == pytest.approx(c.swap_time(1000) / 2)


def test_decode_affine_matches_iteration():
    c = cm("mixtral-8x7b", tp=2)
    base, per = c.decode_affine(24)
    it = c.iteration(0, 0.0, 24, 24, 30_000.0)
    assert base.time_s + per.time_s * 30_000.0 == pytest.approx(it.time_s, rel=1e-12)
    assert base.hbm_bytes + per.hbm_bytes * 30_000.0 == pytest.approx(it.hbm_bytes, rel=1e-12)
    assert per.time_s > 0 and c.decode_affine(0)[0].time_s == 0.0
