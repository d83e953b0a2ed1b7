"""Flag mapping (no engine needed): every knob maps to a flag or is reported unsupported."""

from __future__ import annotations

import json

import pytest

from backends.base import Deployment
from backends.live.flags import DEFAULT_CPU_KV_BYTES, engine_args, sglang_args, vllm_args
from tuner.policy import Policy

GPU = Deployment("meta-llama/Llama-3.1-8B-Instruct", "h100-sxm", n_gpus=1)
CPU = Deployment("tiny-llama", "cpu")


def value(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def unsupported(m) -> dict:
    return {k: (v, why) for k, v, why in m.unsupported}


def test_default_policy_maps_fully_on_gpu():
    m = vllm_args(Policy(), GPU, port=8123)
    assert m.unsupported == ()
    assert m.effective == Policy()
    a = m.args
    assert value(a, "--model") == GPU.model and value(a, "--port") == "8123"
    assert "--enable-chunked-prefill" in a and "--enable-prefix-caching" in a
    assert value(a, "--max-num-seqs") == "256" and value(a, "--max-num-batched-tokens") == "2048"
    assert value(a, "--gpu-memory-utilization") == "0.9" and value(a, "--block-size") == "16"
    assert value(a, "--scheduling-policy") == "fcfs" and value(a, "--tensor-parallel-size") == "1"
    assert "--kv-cache-memory-bytes" not in a


def test_cpu_uses_kv_bytes_and_32_token_blocks():
    m = vllm_args(Policy(block_size=64), CPU, kv_cache_bytes=3 << 20)
    assert value(m.args, "--kv-cache-memory-bytes") == str(3 << 20)
    assert "--gpu-memory-utilization" not in m.args and "--enforce-eager" in m.args
    assert value(m.args, "--block-size") == "64" and m.unsupported == ()
    m16 = vllm_args(Policy(), CPU)
    assert value(m16.args, "--block-size") == "32" and m16.effective.block_size == 32
    assert value(m16.args, "--kv-cache-memory-bytes") == str(DEFAULT_CPU_KV_BYTES)
    assert "block_size" in unsupported(m16)


def test_vllm_knobs_map_to_real_flags():
    p = Policy(batching="continuous", max_num_seqs=32, long_prefill_token_threshold=256, prefix_caching=False,
               queue="priority", speculation="ngram", spec_k=3, cpu_offload_gb=8, tp=2)
    m = vllm_args(p, Deployment("m", "h100-sxm", n_gpus=4, max_model_len=4096))
    a = m.args
    assert "--no-enable-chunked-prefill" in a and "--no-enable-prefix-caching" in a
    assert value(a, "--long-prefill-token-threshold") == "256"
    assert value(a, "--scheduling-policy") == "priority"
    assert json.loads(value(a, "--speculative-config")) == {
        "method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    assert value(a, "--kv-offloading-size") == "8" and value(a, "--kv-offloading-backend") == "native"
    assert value(a, "--tensor-parallel-size") == "2" and value(a, "--data-parallel-size") == "2"
    assert value(a, "--max-model-len") == "4096"
    # without chunked prefill vLLM needs a budget >= max_model_len: raised and reported
    assert value(a, "--max-num-batched-tokens") == "4096"
    assert unsupported(m)["max_num_batched_tokens"][0] == 2048 and m.effective.max_num_batched_tokens == 4096


def test_draft_model_speculation():
    m = vllm_args(Policy(speculation="draft", spec_draft_model="org/draft-1b", spec_k=5), GPU)
    assert json.loads(value(m.args, "--speculative-config")) == {"model": "org/draft-1b", "num_speculative_tokens": 5}


@pytest.mark.parametrize("knob,val", [
    ("batching", "static"), ("batching", "decode_maximal"), ("queue", "sjf"), ("queue", "edf"), ("queue", "vtc"),
    ("preemption_mode", "swap"), ("preemption", "request"), ("kv_watermark", 0.1), ("max_queue_depth", 10),
    ("ttft_admission", True), ("routing", "least_loaded"), ("migration", True), ("spec_acceptance", 0.7),
    ("tenant_cap_tokens_s", 100.0), ("offload_threshold", 0.7), ("max_loras", 8)])
def test_vllm_unsupported_knobs_are_reported_and_reset(knob, val):
    p = Policy(**{knob: val})
    m = vllm_args(p, GPU)
    assert unsupported(m)[knob][0] == val
    assert getattr(m.effective, knob) == getattr(Policy(), knob)


def test_ssd_tier_and_dynamic_k_reported():
    m = vllm_args(Policy(cpu_offload_gb=4, ssd_offload_gb=100, speculation="ngram", spec_dynamic=True), GPU)
    u = unsupported(m)
    assert "ssd_offload_gb" in u and "spec_dynamic" in u and "cpu_offload_gb" not in u


def test_disaggregation():
    gpu = vllm_args(Policy(disaggregated=True, prefill_instances=2, decode_instances=3), GPU)
    assert json.loads(value(gpu.args, "--kv-transfer-config"))["kv_connector"] == "NixlConnector"
    assert any("2 prefill server(s) of tp=1 and 3 decode server(s) of tp=1" in n for n in gpu.notes)
    assert any("5 GPUs in all, MORE than the deployment's 1" in n for n in gpu.notes)
    cpu = vllm_args(Policy(disaggregated=True), CPU)
    assert "--kv-transfer-config" not in cpu.args and "disaggregated" in unsupported(cpu)
    assert cpu.effective.disaggregated is False


def test_every_changed_knob_is_mapped_or_reported():
    """No silent drops: a policy changing every knob yields args or unsupported entries for all."""
    p = Policy(batching="continuous", max_num_seqs=7, max_num_batched_tokens=4096, long_prefill_token_threshold=9,
               tp=2, block_size=32, gpu_memory_utilization=0.8, kv_watermark=0.2, preemption="request",
               preemption_mode="swap", prefix_caching=False, cpu_offload_gb=1, ssd_offload_gb=2,
               offload_threshold=0.8, queue="edf", max_queue_depth=3, min_kv_headroom=0.1, ttft_admission=True,
               admission_action="defer", defer_s=1.0, vtc_input_weight=2, vtc_output_weight=3,
               tenant_weights={"a": 2}, tenant_cap_tokens_s=5, speculation="ngram", spec_k=2, spec_dynamic=True,
               spec_acceptance=0.5, replicas=2, routing="prefix_affinity", migration=True, autoscale=True,
               spot_fraction=0.5, max_loras=2)
    for mapper in (vllm_args, sglang_args):
        m = mapper(p, Deployment("m", "h100-sxm", n_gpus=4))
        # the effective policy differs from the asked one only in reported knobs
        changed = {k for k, v in p.to_dict().items() if m.effective.to_dict()[k] != v}
        assert changed == set(unsupported(m)) - {"max_num_batched_tokens"}
        assert len(m.unsupported) >= 10


def test_sglang_mapping():
    p = Policy(max_num_seqs=64, max_num_batched_tokens=4096, prefix_caching=False, queue="priority",
               speculation="ngram", spec_k=6, cpu_offload_gb=16, tp=4, block_size=32)
    m = sglang_args(p, Deployment("m", "h100-sxm", n_gpus=8, max_model_len=8192), port=30001)
    a = m.args
    assert value(a, "--model-path") == "m" and value(a, "--port") == "30001"
    assert value(a, "--max-running-requests") == "64" and value(a, "--chunked-prefill-size") == "4096"
    assert value(a, "--tp-size") == "4" and value(a, "--dp-size") == "2" and value(a, "--page-size") == "32"
    assert "--disable-radix-cache" in a and "--enable-priority-scheduling" in a
    assert "--schedule-low-priority-values-first" in a  # servetune: lower value first
    assert value(a, "--speculative-algorithm") == "NGRAM" and value(a, "--speculative-num-draft-tokens") == "6"
    assert "--enable-hierarchical-cache" in a and value(a, "--hicache-size") == "16"
    assert value(a, "--context-length") == "8192"
    assert value(sglang_args(Policy(batching="continuous"), GPU).args, "--chunked-prefill-size") == "-1"


def test_sglang_queue_orders():
    sjf = sglang_args(Policy(queue="sjf"), GPU)
    assert value(sjf.args, "--schedule-policy") == "shortest-prefill-first" and sjf.unsupported == ()
    sjf_nocache = sglang_args(Policy(queue="sjf", prefix_caching=False), GPU)
    assert "queue" in unsupported(sjf_nocache) and value(sjf_nocache.args, "--schedule-policy") == "fcfs"
    for q in ("sjf_output", "edf", "vtc"):
        m = sglang_args(Policy(queue=q), GPU)
        assert "queue" in unsupported(m) and m.effective.queue == "fcfs"


def test_engine_args_dispatch():
    assert engine_args("sglang", Policy(), GPU).args[0] == "--model-path"
    assert engine_args("vllm", Policy(), GPU).command("vllm")[:3] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
    with pytest.raises(ValueError, match="engine 'trt'"):
        engine_args("trt", Policy(), GPU)


def test_replicas_become_data_parallel_ranks():
    two = Deployment("m", "h100-sxm", n_gpus=2)
    assert value(vllm_args(Policy(), two).args, "--data-parallel-size") == "2"
    assert "--data-parallel-size" not in vllm_args(Policy(replicas=1), two).args
    too_many = vllm_args(Policy(replicas=4), two)
    assert unsupported(too_many)["replicas"][0] == 4 and too_many.effective.replicas == 2
    assert value(sglang_args(Policy(tp=2), Deployment("m", "h100-sxm", n_gpus=8)).args, "--dp-size") == "4"
    assert "replicas" in unsupported(vllm_args(Policy(replicas=2), CPU))


@pytest.mark.parametrize("mapper,tp_flag,dp_flag", [(vllm_args, "--tensor-parallel-size", "--data-parallel-size"),
                                                    (sglang_args, "--tp-size", "--dp-size")])
def test_disaggregated_servers_add_up_to_the_deployments_gpus(mapper, tp_flag, dp_flag):
    """P/D servers get no data parallelism from the deployment's total and each pool its own TP:
    1 prefill x tp 2 + 2 decode x tp 2 on 8 GPUs was 3 servers x DP 4 x TP 2 = 24 GPUs before."""
    eight = Deployment("m", "h100-sxm", n_gpus=8)
    for pol, want in ((Policy(disaggregated=True, prefill_instances=1, decode_instances=2, tp=2), {"prefill": 2,
                       "decode": 2}),
                      (Policy(disaggregated=True, prefill_instances=2, decode_instances=1, tp=2, prefill_tp=1,
                              decode_tp=4, replicas=3), {"prefill": 1, "decode": 4})):
        m = mapper(pol, eight)
        assert m.unsupported == ()  # prefill_tp / decode_tp are mapped, replicas inert (as simulated)
        assert {r.name: int(value(list(r.args), tp_flag)) for r in m.roles} == want
        gpus = 0
        for r in m.roles:
            assert dp_flag not in r.args and r.args.count(tp_flag) == 1
            gpus += r.count * int(value(list(r.args), tp_flag))
            assert m.command("vllm", role=r.name)[3:] == list(r.args)
        assert gpus == pol.prefill_instances * pol.pool_tps[0] + pol.decode_instances * pol.pool_tps[1] <= 8
        assert dp_flag not in m.args and tp_flag not in m.args  # the shared flags carry no layout
        with pytest.raises(ValueError, match="role None"):
            m.command("vllm")
    sg = sglang_args(Policy(disaggregated=True), eight)
    assert [value(list(r.args), "--disaggregation-mode") for r in sg.roles] == ["prefill", "decode"]
    # without disaggregation the pools' TPs are inert and the layout is DP x TP as before
    plain = vllm_args(Policy(tp=2, prefill_tp=4), eight)
    assert plain.roles == () and plain.unsupported == () and value(plain.args, "--data-parallel-size") == "4"
