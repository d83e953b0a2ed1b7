"""LoRA adapters: max_loras slots in the batch, adapter memory out of the KV pool, load time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from simkit import H100_8B, poisson_workload, run

from backends.base import Deployment
from backends.sim import SimBackend, effective_policy
from backends.sim.catalog import get_model
from backends.sim.lora import AdapterSlots, adapter_bytes_per_gpu, adapter_params_per_gpu
from backends.sim.queue import FCFSQueue, KeyedQueue
from backends.sim.request_state import Req
from tuner.policy import Policy
from workloads import assign_adapters


def _many_adapters(rank: int = 16):
    """64 adapters, Zipf popularity, a moderate load that one instance serves easily without LoRA."""
    return assign_adapters(poisson_workload(1500, 15.0, (200, 800), (50, 300), seed=4), 64, zipf=1.0, rank=rank)


def _records_equal(a, b) -> None:
    for col in ("first_token_s", "finish_s", "output_len", "preemptions"):
        np.testing.assert_array_equal(a.records[col].to_numpy(), b.records[col].to_numpy())


def test_adapter_size_from_the_catalog():
    m = get_model("llama-3.1-8b")
    # q, k, v, o, gate, up, down of 32 layers at rank 16: the published ~42M parameters of such an adapter
    assert adapter_params_per_gpu(m, 16) == pytest.approx(41.9e6, rel=0.01)
    assert adapter_bytes_per_gpu(m, 64) == pytest.approx(4 * adapter_bytes_per_gpu(m, 16))
    assert adapter_bytes_per_gpu(m, 16, tp=2) < 0.75 * adapter_bytes_per_gpu(m, 16)


def test_slots_lru_and_skipping():
    s = AdapterSlots(2, load_s=0.5)
    assert s.acquire(0) == 0.5 and s.acquire(0) == 0.0 and s.acquire(1) == 0.5
    assert not s.can_run(2) and s.can_run(0) and s.can_run(-1)
    s.release(0)
    s.release(0)  # adapter 0 idle but resident: it is the least recently used slot
    assert s.can_run(2) and s.acquire(2) == 0.5 and s.resident.keys() == {1, 2}
    assert s.loads == 3 and s.load_total_s == pytest.approx(1.5)
    with pytest.raises(AssertionError):
        s.acquire(3)


def test_few_slots_make_requests_wait():
    w = _many_adapters()
    _, two = run(w, check=False, max_loras=2)
    _, sixteen = run(w, check=False, max_loras=16)
    _, base = run(w.replace(adapters=(), adapter=None), check=False)
    assert two.ttft_p50_ms > 100 * sixteen.ttft_p50_ms  # requests queue for one of two adapter slots
    assert sixteen.ttft_p50_ms < 2 * base.ttft_p50_ms
    assert sixteen.tpot_p50_ms > base.tpot_p50_ms     # SGMV/BGMV kernels and adapter weight reads
    assert two.adapter_loads > 64 and two.adapter_load_s > 0


def test_base_requests_skip_past_blocked_adapter_requests():
    w = _many_adapters()
    a = w.adapter.copy()
    a[::4] = -1  # a quarter of the requests use the base model
    res, _ = run(w.replace(adapter=a), check=False, max_loras=1)
    ttft = (res.records["first_token_s"] - res.records["arrival_s"]).to_numpy()
    base, lora = ttft[a < 0], ttft[a >= 0]
    assert np.median(base) < 0.01 * np.median(lora)


def test_many_slots_shrink_the_kv_pool_under_memory_pressure():
    w = assign_adapters(poisson_workload(600, 30.0, (1000, 3000), (400, 1200), seed=3), 16, rank=128)
    r16, s16 = run(w, check=False, max_loras=16)
    r64, s64 = run(w, check=False, max_loras=64)
    assert int(r64.meta["kv_blocks"]) < 0.5 * int(r16.meta["kv_blocks"])
    assert s64.preemptions > 3 * s16.preemptions
    assert s64.mean_batch_size < 0.5 * s16.mean_batch_size
    assert s64.throughput_tok_s < s16.throughput_tok_s
    assert s16.adapter_loads == s64.adapter_loads == 16  # every slot holds its adapter: loaded once
    assert r64.telemetry.counters["lora_kv_blocks"] > r16.telemetry.counters["lora_kv_blocks"]
    with pytest.raises(ValueError, match="max_loras"):
        run(w, check=False, max_loras=512)


def test_adapter_load_time_is_spent_in_iterations():
    w = assign_adapters(poisson_workload(40, 0.5, 300, 50, seed=5), 40, zipf=0.0, rank=64)
    w = w.replace(adapter=np.arange(40, dtype=np.int32))  # every request a new adapter
    res, sc = run(w, max_loras=4)
    load = adapter_bytes_per_gpu(get_model("llama-3.1-8b"), 64) / 64.0e9  # h100-sxm: PCIe gen5, 64 GB/s
    assert sc.adapter_loads == 40 and sc.adapter_load_s == pytest.approx(40 * load, rel=1e-6)
    _, one = run(w.replace(adapter=np.zeros(40, np.int32)), max_loras=4)  # the same adapter throughout
    assert one.adapter_loads == 1
    assert sc.ttft_mean_ms - one.ttft_mean_ms == pytest.approx(39 / 40 * load * 1e3, rel=0.05)


def test_base_model_workload_is_unaffected():
    w = poisson_workload(400, 20.0, (200, 800), (50, 300), seed=6)
    a, sa = run(w, max_loras=1)
    b, sb = run(w, max_loras=64)
    _records_equal(a, b)
    assert a.meta["kv_blocks"] == b.meta["kv_blocks"] and sa.adapter_loads == 0
    assert effective_policy(Policy(max_loras=8), w)[0].max_loras == 8  # no longer reset
    assert not [n for n in a.notes if "LoRA" in n]


@pytest.mark.parametrize("knobs", [
    {}, {"queue": "priority"}, {"batching": "continuous"}, {"batching": "static"},
    {"preemption_mode": "swap"}, {"preemption": "request"}])
def test_deterministic_and_invariants_hold(knobs):
    w = assign_adapters(poisson_workload(300, 20.0, (500, 2000), (100, 600), seed=7, priority=np.arange(300) % 3),
                        24, rank=64)
    dep = Deployment("llama-3.1-8b", "a100-40gb")  # small KV pool: preemptions with adapters in flight
    a, sa = run(w, dep, max_loras=6, **knobs)     # check=True: full recount (LoRA slots too) every step
    b, _ = run(w, dep, max_loras=6, **knobs)
    _records_equal(a, b)
    assert sa.n_completed + sa.n_failed == w.n and sa.adapter_loads >= 24


def test_cluster_replicas_each_hold_slots():
    w = _many_adapters()
    res = SimBackend().run(Policy(max_loras=8, replicas=2), w, Deployment("llama-3.1-8b", "h100-sxm", n_gpus=2))
    assert res.telemetry.counters["lora_loads"] >= 64
    one = SimBackend().run(Policy(max_loras=8), w, H100_8B)
    assert res.telemetry.counters["lora_kv_blocks"] == 2 * one.telemetry.counters["lora_kv_blocks"]


def test_max_loras_searched_only_for_adapter_workloads():
    from tuner.space import for_workload
    from tuner.study_spec import load_study

    spec = load_study(Path(__file__).parents[2] / "studies" / "full-checklist.yaml")
    assert "max_loras" in {r.knob for r in spec.search}
    w = spec.load_workload()  # its workload.transforms name 8 adapters
    assert "max_loras" in {r.knob for r in for_workload(spec.search, w)}
    plain = w.replace(adapter=np.full(w.n, -1, dtype=w.adapter.dtype), adapters=())
    assert "max_loras" not in {r.knob for r in for_workload(spec.search, plain)}


def test_live_flags_enable_lora_for_adapter_workloads():
    from backends.live.flags import lora_setup, sglang_args, vllm_args

    kw = lora_setup(_many_adapters(rank=24))
    assert kw == {"lora_adapters": 64, "lora_rank": 24}
    v = vllm_args(Policy(max_loras=8), H100_8B, **kw)
    assert v.args[v.args.index("--enable-lora") + 1:][:6] == ["--max-loras", "8", "--max-lora-rank", "32",
                                                             "--max-cpu-loras", "64"]
    assert v.effective.max_loras == 8 and not v.unsupported
    s = sglang_args(Policy(max_loras=8), H100_8B, **kw)
    assert {"--enable-lora", "--max-loras-per-batch", "--max-loaded-loras"} <= set(s.args)
    assert lora_setup(poisson_workload(10, 1.0, 10, 10)) == {}
    assert "max_loras" in {k for k, _, _ in vllm_args(Policy(max_loras=8), H100_8B).unsupported}


def test_assign_adapters_transform_in_a_workload_spec():
    from workloads.adapters import adapter_rank
    from workloads.spec import apply_transform

    w = poisson_workload(2000, 10.0, 100, 10)
    a = apply_transform(w, {"assign_adapters": {"n": 8, "zipf": 1.5, "share": 0.5, "rank": 32}}, "t")
    assert a.adapters == tuple(f"lora-{i}" for i in range(8)) and adapter_rank(a) == 32
    share = (a.adapter >= 0).mean()
    counts = np.bincount(a.adapter[a.adapter >= 0], minlength=8)
    assert 0.45 < share < 0.55 and counts[0] > 2 * counts[1] > 0 and counts[0] > 8 * counts[7]
    np.testing.assert_array_equal(a.adapter, apply_transform(w, {"assign_adapters": {"n": 8, "zipf": 1.5,
                                                                 "share": 0.5, "rank": 32}}, "t").adapter)
    with pytest.raises(ValueError, match="assign_adapters"):
        apply_transform(w, {"assign_adapters": {"n": 0}}, "t")


@pytest.mark.parametrize("make", [lambda: FCFSQueue(), lambda: KeyedQueue(lambda r: (r.prio, r.arrival))])
def test_set_aside_moves_blocked_heads_out_in_order_and_restore_puts_them_back(make):
    q = make()
    reqs = [Req(i, float(i), 100, 10, 10, 0, (), 0) for i in range(6)]
    for r, a in zip(reqs, (3, 3, -1, 1, 3, 2), strict=True):
        r.adapter = a
        q.push(r)
    out: list = []
    assert q.set_aside({1: 1}, out) is reqs[2]      # base model: may always run
    assert len(out) == 2 and len(q) == 4
    q.pop()
    assert q.set_aside({1: 1}, out) is reqs[3]      # adapter 1 runs
    q.pop()
    assert q.set_aside({1: 1}, out) is None and len(out) == 4 and not q  # adapters 3 and 2 wait
    q.restore(out)
    assert [q.pop().rid for _ in range(4)] == [0, 1, 4, 5]  # back in their places
