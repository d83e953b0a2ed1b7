"""Data-parallel ranks of an MoE model sharing its expert layers (vLLM V1 ``--data-parallel-size``):
weights, KV room, step prices, and which replicas the cluster couples."""

from __future__ import annotations

import numpy as np
import pytest
from simkit import poisson_workload

from backends.base import Deployment
from backends.sim.catalog import get_gpu, get_model, kv_budget
from backends.sim.cluster import expert_sharing_ranks, simulate_cluster
from backends.sim.costmodel import CostModel, expert_weight_bytes, weight_bytes_per_gpu
from backends.sim.engine import Simulation
from tuner.policy import Policy

MIXTRAL4 = Deployment("mixtral-8x7b", "h100", n_gpus=4)


def test_experts_split_over_dp_times_tp_gpus():
    m = get_model("mixtral-8x7b")
    alone, shared = weight_bytes_per_gpu(m, 2), weight_bytes_per_gpu(m, 2, "bf16", 2)
    assert alone - shared == pytest.approx(expert_weight_bytes(m) / 4)  # 1/2 of the experts, now 1/4
    # fp8 experts: 1 byte a parameter
    s = get_model("llama-4-scout-17b-16e")
    assert weight_bytes_per_gpu(s, 2, "fp8") - weight_bytes_per_gpu(s, 2, "fp8", 4) == \
        pytest.approx(expert_weight_bytes(s, "fp8") / 2 * 0.75)
    dense = get_model("llama-3.1-8b")
    assert weight_bytes_per_gpu(dense, 1, "bf16", 4) == weight_bytes_per_gpu(dense, 1)
    with pytest.raises(ValueError, match="expert_shards=0"):
        weight_bytes_per_gpu(m, 2, "bf16", 0)
    # the freed memory holds KV: Mixtral TP2 on H100 has ~21 GiB more per GPU for it
    g = get_gpu("h100")
    assert kv_budget(m, g, 2, expert_shards=2) > 1.7 * kv_budget(m, g, 2)


def test_shared_experts_halve_decode_weight_reads_not_prefill_compute():
    m, g = get_model("mixtral-8x7b"), get_gpu("h100")
    cm = CostModel(m, g, 2)
    two = cm.sharing_experts(2)
    assert cm.sharing_experts(1) is cm and CostModel(get_model("llama-3.1-8b"), g).sharing_experts(4).expert_dp == 1
    assert (cm.expert_dp, two.expert_dp) == (1, 2) and "shared by 2 data-parallel ranks" in two.source
    assert two.weight_bytes == pytest.approx(weight_bytes_per_gpu(m, 2, "bf16", 2))
    # decode of 64 sequences: every expert is touched either way, each GPU reads half the bytes
    a, b = cm.iteration(0, 0, 64, 64, 64 * 1000), two.iteration(0, 0, 64, 64, 64 * 1000)
    assert b.hbm_bytes < 0.65 * a.hbm_bytes and b.time_s < 0.8 * a.time_s
    assert b.flops == pytest.approx(a.flops)  # twice the rows on half of each expert
    # a 4096-token prefill is compute-bound: the same FLOPs, plus the gather and reduce-scatter
    pa, pb = cm.iteration(4096, 4096 * 4097 / 2, 0, 0, 0), two.iteration(4096, 4096 * 4097 / 2, 0, 0, 0)
    assert pa.time_s < pb.time_s < 1.15 * pa.time_s
    # one decode row per rank: two rows reach the experts, touching more of them than one does
    one_row = cm.iteration(0, 0, 1, 1, 1000)
    assert two.iteration(0, 0, 1, 1, 1000).hbm_bytes > 0.5 * one_row.hbm_bytes
    with pytest.raises(ValueError, match="already shared"):
        two.sharing_experts(2)
    with pytest.raises(ValueError, match="dp=0"):
        cm.sharing_experts(0)
    # the original is untouched (its memo is its own)
    assert cm.iteration(0, 0, 64, 64, 64 * 1000).time_s == a.time_s


@pytest.mark.parametrize("knobs,engine,want", [
    ({}, "vllm-v1", 2),
    ({"migration": True}, "vllm-v1", 1),      # separate servers
    ({"spot_fraction": 0.5}, "vllm-v1", 1),
    ({"autoscale": True, "autoscale_max_replicas": 2}, "vllm-v1", 1),
    ({}, "sglang", 1),                         # --dp-size: independent workers
])
def test_which_replicas_share_experts(knobs, engine, want):
    dep = Deployment("mixtral-8x7b", "h100", n_gpus=4, engine=engine)
    assert expert_sharing_ranks(Policy(tp=2, replicas=2, **knobs), dep) == want
    assert expert_sharing_ranks(Policy(tp=2, replicas=1), dep) == 1
    assert expert_sharing_ranks(Policy(tp=2, replicas=2), Deployment("llama-3.1-8b", "h100", n_gpus=4,
                                                                   engine=engine)) == 1


def test_a_rank_sharing_experts_decodes_faster_with_more_kv():
    """The same requests on one rank of a two-rank group and on a lone instance: the rank reads
    half the expert weights each decode step and holds more KV blocks; a dense model ignores it."""
    w = poisson_workload(120, 3.0, (200, 1200), (100, 300), seed=4)
    pol = Policy(tp=2)
    dep = Deployment("mixtral-8x7b", "h100", n_gpus=2)
    lone, rank = Simulation(pol, w, dep).run(), Simulation(pol, w, dep, expert_dp=2).run()
    assert rank.mem.total > 1.7 * lone.mem.total
    tpot = [np.nanmean((s.finish - s.first_tok) / np.maximum(w.output_len - 1, 1)) for s in (lone, rank)]
    assert tpot[1] < 0.85 * tpot[0]
    d = Deployment("llama-3.1-8b", "h100")
    a, b = Simulation(Policy(), w, d).run(), Simulation(Policy(), w, d, expert_dp=2).run()
    assert b.expert_dp == 1 and np.array_equal(a.finish, b.finish)
    with pytest.raises(ValueError, match="expert_dp=0"):
        Simulation(pol, w, dep, expert_dp=0)


def test_cluster_runs_vllm_data_parallel_ranks_sharing_experts():
    w = poisson_workload(200, 6.0, (200, 1200), (50, 200), seed=5)
    res = simulate_cluster(Policy(tp=2, replicas=2), w, MIXTRAL4)
    assert any("share the MoE expert layers" in n for n in res.notes)
    m, g = get_model("mixtral-8x7b"), get_gpu("h100")
    per_rank = kv_budget(m, g, 2, expert_shards=2, activation_reserve=None) * 16
    assert res.telemetry.kv_capacity_tokens == pytest.approx(2 * per_rank, rel=0.02)
    apart = simulate_cluster(Policy(tp=2, replicas=2, migration=True), w, MIXTRAL4)
    assert not any("share the MoE" in n for n in apart.notes)
    assert apart.telemetry.kv_capacity_tokens < 0.6 * res.telemetry.kv_capacity_tokens


def test_lockstep_wait_is_the_chance_another_rank_prefills_times_its_longer_step():
    w = poisson_workload(10, 1.0, 300, 20, seed=2)
    dep = Deployment("mixtral-8x7b", "h100", n_gpus=2)
    sim = Simulation(Policy(tp=2), w, dep, expert_dp=3)
    assert sim._lockstep_wait(0.01) == 0.0  # no prefill step seen yet
    sim.steps, sim._pf_steps, sim._pf_time = 10, 2, 0.1  # q = 0.2, mean prefill step 50 ms
    assert sim._lockstep_wait(0.01) == pytest.approx((1 - 0.8 ** 2) * 0.04)
    assert sim._lockstep_wait(0.06) == 0.0  # a decode step longer than a prefill step waits for nothing
    # a rank counts its prefill steps; a lone instance does not (it waits for no one)
    runs = {dp: Simulation(Policy(tp=2), poisson_workload(120, 3.0, (200, 1200), (100, 300), seed=4), dep,
                           expert_dp=dp).run() for dp in (1, 2)}
    assert runs[1]._pf_steps == 0 and runs[2]._pf_steps > 0


def test_fitted_terms_price_shared_experts_with_their_own_memo():
    """``cost_model: terms`` reads the shared copy's expert bytes, experts touched and gather; the
    copy's memo tables are its own, so neither model answers with the other's prices."""
    from backends.sim.profiled import instance_cost_model

    m, g = get_model("mixtral-8x7b"), get_gpu("h100")
    terms = instance_cost_model(m, g, 2, cost_model="terms")
    a = terms.iteration(0, 0, 64, 64, 64 * 1000).time_s  # fills the original's memo first
    two = terms.sharing_experts(2)
    b = two.iteration(0, 0, 64, 64, 64 * 1000).time_s
    assert b < 0.97 * a and two._dense_terms is not terms._dense_terms  # (its fitted launch floor stays)
    assert terms.iteration(0, 0, 64, 64, 64 * 1000).time_s == a
    p = 4096 * 4097 / 2
    assert two.iteration(4096, p, 0, 0, 0).time_s > terms.iteration(4096, p, 0, 0, 0).time_s  # + the gather
