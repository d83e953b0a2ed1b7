"""The simulator reproduces the known effects of serving policies (each test builds its workload)."""

from __future__ import annotations

import numpy as np
import pytest
from simkit import H100_8B, poisson_workload, run

from backends.base import Deployment
from backends.sim.catalog import get_gpu, get_model
from backends.sim.costmodel import CostModel
from backends.sim.engines import get_engine
from workloads.workload import SLOClass, build_workload

A100_40_7B = Deployment("llama-2-7b", "a100-40gb")


def cost_model(dep: Deployment = H100_8B) -> CostModel:
    return CostModel(get_model(dep.model), get_gpu(dep.gpu))


def test_ttft_at_low_load_is_the_prefill_time():
    w = build_workload("sparse", np.arange(20) * 5.0, np.full(20, 1000), np.full(20, 32))
    res, card = run(w)
    assert card.n_completed == 20
    # the engine's prefill, plus the client lag of vLLM V1 (output processing + streaming, in steps)
    rec = res.records
    step_ms = float(((rec.finish_s - rec.first_token_s) / (rec.output_len - 1)).median()) * 1e3
    expected = cost_model().prefill_time(1000) * 1e3 + get_engine("vllm-v1").client_lag_steps * step_ms
    assert card.ttft_p50_ms == pytest.approx(expected, rel=0.02)
    assert card.ttft_p99_ms == pytest.approx(expected, rel=0.02)


def test_batch1_decode_tpot_is_memory_bound():
    w = build_workload("one", [0.0], [128], [200])
    res, card = run(w)
    cm = cost_model()
    lower = cm.weight_bytes / cm.gpu.hbm_bytes_s * 1e3
    assert lower < card.tpot_mean_ms < 2.0 * lower
    assert card.mbu > 0.5  # batch-1 decode streams the weights: most of the bandwidth
    assert card.mfu < 0.02


def test_throughput_saturates_and_ttft_explodes_past_capacity():
    cards = {}
    for rate in (2.0, 8.0, 32.0, 128.0):
        w = poisson_workload(600, rate, (200, 1200), (50, 300), seed=3)
        cards[rate] = run(w, check=False)[1]
    thr = [cards[r].throughput_tok_s for r in cards]
    ttft = [cards[r].ttft_p50_ms for r in cards]
    assert thr[1] > 3 * thr[0]                  # below capacity: throughput follows the load
    assert thr[3] < 1.5 * thr[2]                # past capacity: it saturates
    assert ttft[3] > 20 * ttft[0]               # and queueing explodes TTFT
    assert all(c.n_completed == 600 for c in cards.values())


def mixed_workload():
    """Short chats decoding while long prompts keep arriving."""
    rng = np.random.default_rng(7)
    n_short, n_long = 300, 30
    arr = np.r_[np.sort(rng.uniform(0, 30, n_short)), np.sort(rng.uniform(2, 30, n_long))]
    prompt = np.r_[rng.integers(50, 200, n_short), np.full(n_long, 6000)]
    out = np.r_[rng.integers(100, 300, n_short), np.full(n_long, 20)]
    return build_workload("mixed", arr, prompt, out)


def test_chunked_prefill_cuts_tpot_tail_against_prefill_first():
    w = mixed_workload()
    _, cont = run(w, batching="continuous", max_num_batched_tokens=8192)
    _, chunk = run(w, batching="chunked", max_num_batched_tokens=512)
    assert chunk.tpot_p99_ms < 0.8 * cont.tpot_p99_ms
    assert cont.n_completed == chunk.n_completed == w.n


def test_static_batching_loses_throughput_to_continuous():
    w = poisson_workload(400, 50.0, (100, 800), (20, 400), seed=5)
    _, static = run(w, batching="static", max_num_seqs=32)
    _, cont = run(w, batching="continuous", max_num_seqs=32)
    assert static.throughput_tok_s < 0.85 * cont.throughput_tok_s
    assert static.ttft_p50_ms > cont.ttft_p50_ms


def test_small_kv_budget_preempts_under_token_level_not_request_level():
    w = poisson_workload(200, 20.0, (500, 1500), (200, 600), seed=11)
    res_t, tok = run(w, A100_40_7B, gpu_memory_utilization=0.45)
    res_r, req = run(w, A100_40_7B, gpu_memory_utilization=0.45, preemption="request")
    assert tok.preemptions > 0 and res_t.records["preemptions"].sum() > 0
    assert req.preemptions == 0 and res_r.records["preemptions"].sum() == 0
    assert tok.n_completed == req.n_completed == w.n
    # reserving max_tokens wastes slots: more fragmentation under request-level reservation
    assert req.fragmentation > tok.fragmentation


def test_swap_and_recompute_both_complete_every_request():
    w = poisson_workload(200, 20.0, (500, 1500), (200, 600), seed=11)
    res_s, swap = run(w, A100_40_7B, gpu_memory_utilization=0.45, preemption_mode="swap")
    res_c, rec = run(w, A100_40_7B, gpu_memory_utilization=0.45, preemption_mode="recompute")
    assert swap.n_completed == rec.n_completed == w.n
    assert swap.preemptions > 0 and rec.preemptions > 0
    assert res_s.telemetry.counters["swapped_blocks"] > 0
    assert res_c.telemetry.counters["swapped_blocks"] == 0
    assert swap.offload_bw_util > 0
    assert (res_s.records["output_len"].to_numpy() == w.output_len).all()


def test_sjf_lowers_mean_ttft_under_load():
    # prefill-bound: ~50k prompt tokens/s offered, about the H100's prefill capacity for 8B
    w = poisson_workload(400, 25.0, (50, 4000), (5, 20), seed=2)
    _, fcfs = run(w, queue="fcfs")
    _, sjf = run(w, queue="sjf")
    assert sjf.ttft_mean_ms < 0.7 * fcfs.ttft_mean_ms
    assert sjf.ttft_p50_ms < 0.2 * fcfs.ttft_p50_ms


def test_sjf_output_uses_a_noisy_predictor_and_still_helps():
    w = poisson_workload(400, 12.0, 300, (10, 800), seed=2)
    _, fcfs = run(w, queue="fcfs", max_num_seqs=8)
    _, sjfo = run(w, queue="sjf_output", max_num_seqs=8)
    assert sjfo.ttft_mean_ms < fcfs.ttft_mean_ms


def test_edf_raises_slo_attainment_with_mixed_slo_classes():
    classes = (SLOClass("tight", ttft_ms=1500, tpot_ms=200), SLOClass("loose", ttft_ms=60000, tpot_ms=200))
    rng = np.random.default_rng(4)
    n = 400
    cls = np.where(rng.random(n) < 0.3, "tight", "loose")
    w = poisson_workload(n, 14.0, (200, 1500), (50, 200), seed=4, slo_class=cls, slo_classes=classes)
    _, fcfs = run(w, queue="fcfs", max_num_seqs=8)
    _, edf = run(w, queue="edf", max_num_seqs=8)
    assert edf.slo_attainment > fcfs.slo_attainment + 0.05


def test_admission_control_rejects_under_overload_and_survivors_ttft_drops():
    w = poisson_workload(500, 40.0, (500, 1500), (100, 300), seed=8)
    res0, base = run(w, max_num_seqs=32)
    res1, adm = run(w, max_num_seqs=32, ttft_admission=True)
    assert base.n_rejected == 0 and adm.n_rejected > 0
    assert res1.records["rejected"].sum() == adm.n_rejected
    assert adm.ttft_p50_ms < 0.25 * base.ttft_p50_ms and adm.ttft_attainment > base.ttft_attainment
    assert adm.n_completed + adm.n_rejected == w.n
    _, depth = run(w, max_num_seqs=32, max_queue_depth=10)
    assert depth.n_rejected > 0 and depth.ttft_p50_ms < base.ttft_p50_ms
    res_d, defer = run(w, max_num_seqs=32, max_queue_depth=10, admission_action="defer", defer_s=0.5)
    assert res_d.telemetry.counters["deferrals"] > 0
    assert defer.n_completed + defer.n_rejected == w.n


def shared_prefix_workload(n: int = 300, groups: int = 6, rate: float = 6.0):
    """Each request = its group's 4-block (2048-token) system prompt + a 200..400-token question."""
    rng = np.random.default_rng(9)
    arr = np.cumsum(rng.exponential(1 / rate, n))
    g = rng.integers(0, groups, n)
    q = rng.integers(200, 400, n)
    blocks = [[int(gi) * 1000 + k for k in range(4)] + [100000 + i] for i, gi in enumerate(g)]
    return build_workload("shared", arr, 2048 + q, rng.integers(20, 80, n), prefix_blocks=blocks,
                          prefix_block_tokens=512)


def test_prefix_caching_cuts_ttft_and_hits():
    w = shared_prefix_workload()
    res_on, on = run(w, prefix_caching=True)
    res_off, off = run(w, prefix_caching=False)
    assert on.prefix_hit_rate > 0.5
    assert off.prefix_hit_rate == 0
    assert on.ttft_mean_ms < 0.6 * off.ttft_mean_ms
    cached = res_on.records["cached_tokens"].to_numpy()
    assert (cached % 512 == 0).all() and cached.max() == 2048
    assert res_off.records["cached_tokens"].sum() == 0
