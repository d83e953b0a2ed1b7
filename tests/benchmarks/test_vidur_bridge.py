"""The servetune <-> Vidur bridge of benchmarks/bench_vidur.py.

Fast tests check what servetune writes for Vidur (trace CSV, offline profile datasets, CLI
flags); the slow test runs Vidur itself (needs scripts/setup_vidur.sh; skipped without it).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
VIDUR_PY = ROOT / ".venv-vidur/bin/python"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_vidur", ROOT / "benchmarks/bench_vidur.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_vidur"] = mod
    spec.loader.exec_module(mod)
    return mod


bv = _load_bench()
needs_profiles = pytest.mark.skipif(not (bv.PROFILES / "compute_h100_meta-llama_Llama-2-7b-hf_mlp.csv.gz").exists(),
                                    reason=f"Vidur MLP profiles not in {bv.PROFILES}")


def test_trace_csv_matches_workload(tmp_path):
    w = bv.build_workload(50, 2.0)
    df = pd.read_csv(bv.write_vidur_trace(w, tmp_path / "t.csv"))
    assert list(df.columns) == ["Date", "Time", "PromptTokenCount", "CompletionTokenCount"]
    assert (df["Date"] == bv.TRACE_DATE).all()
    np.testing.assert_allclose(df["Time"], w.arrival_s)
    assert np.array_equal(df["PromptTokenCount"], w.prompt_len)
    assert np.array_equal(df["CompletionTokenCount"], w.output_len)
    assert (df["PromptTokenCount"] + df["CompletionTokenCount"]).max() <= bv.MAX_LEN
    assert df["CompletionTokenCount"].min() >= 1
    assert abs(w.rate - 2.0) < 1e-9


def test_attention_profile_grid_and_physics():
    df = bv.attention_profile(max_batch=32)
    pre, dec = df[df["is_prefill"]], df[~df["is_prefill"]]
    assert (pre["batch_size"] == 1).all() and (pre["prefill_chunk_size"] + pre["kv_cache_size"] <= bv.MAX_LEN).all()
    assert (dec["prefill_chunk_size"] == 0).all() and dec["batch_size"].max() == 32
    assert (df[["n_embd", "n_q_head", "n_kv_head", "block_size", "num_tensor_parallel_workers"]].nunique() == 1).all()
    # decode attention grows with batch and context; a longer chunk over more context costs more
    d = dec.set_index(["batch_size", "kv_cache_size"])["time_stats.attn_decode.median"]
    assert d[(32, 2048)] > d[(8, 2048)] > d[(8, 512)] > 0
    p = pre.set_index(["prefill_chunk_size", "kv_cache_size"])["time_stats.attn_prefill.median"]
    assert p[(512, 2048)] > p[(512, 0)] > p[(256, 0)] > 0


@needs_profiles
def test_profile_datasets_are_offline_hf_snapshots(tmp_path):
    compute, network = bv.write_profile_datasets(tmp_path)
    base = tmp_path / "vidur_cache/profiling_data/compute" / ("datasets--" + compute.replace("/", "--"))
    assert (base / "refs/main").read_text() == bv.HF_REV
    snap = base / "snapshots" / bv.HF_REV
    assert json.loads((snap / "config.json").read_text()) == {"model": bv.VIDUR_MODEL, "device_sku": "h100"}
    mlp = pd.read_csv(snap / "mlp.csv.xz")
    assert {"num_tokens", "time_stats.mlp_up_proj.median", "num_tensor_parallel_workers"} <= set(mlp.columns)
    assert len(pd.read_csv(snap / "attention.csv.xz")) > 100
    net = tmp_path / "vidur_cache/profiling_data/network" / ("datasets--" + network.replace("/", "--"))
    assert json.loads((net / "snapshots" / bv.HF_REV / "config.json").read_text()) == {"sku": "h100_dgx"}


def test_vidur_flags_mirror_the_policy(tmp_path):
    for sched, batching in (("vllm", "continuous"), ("sarathi", "chunked")):
        s = bv.Setup(sched, batch_cap=64, chunk=256)
        p = s.policy()
        assert p.batching == batching and p.max_num_seqs == 64 and not p.prefix_caching
        args = s.vidur_args(tmp_path / "t.csv", tmp_path, ("a/b", "c/d"), "tiny")
        flags = dict(a[2:].split("=", 1) for a in args if "=" in a)
        assert flags["replica_scheduler_config_type"] == sched
        assert flags[f"{sched}_scheduler_config_batch_size_cap"] == "64"
        assert int(flags["cache_config_num_blocks"]) == s.kv_blocks() > 0
        if sched == "sarathi":
            assert flags["sarathi_scheduler_config_chunk_size"] == "256" and p.max_num_batched_tokens == 256
        else:
            assert flags["vllm_scheduler_config_max_tokens_in_batch"] == str(p.max_num_batched_tokens)


@pytest.mark.slow
@needs_profiles
@pytest.mark.skipif(not VIDUR_PY.exists(), reason="Vidur venv missing: run scripts/setup_vidur.sh")
def test_vidur_runs_the_same_requests(tmp_path):
    w = bv.build_workload(60, 2.0)
    trace = bv.write_vidur_trace(w, tmp_path / "trace.csv")
    s = bv.Setup("sarathi", batch_cap=32, chunk=512)
    repos = bv.write_profile_datasets(tmp_path, max_batch=s.batch_cap)
    vd = bv.run_vidur(str(VIDUR_PY), s.vidur_args(trace, tmp_path, repos, "tiny"), w, timeout_s=900)
    st = bv.run_servetune(s, w)
    assert vd.finished == st.finished == w.n
    assert {"import_s", "init_s", "loop_s", "output_s"} <= set(vd.detail)
    assert np.all(vd.ttft_s > 0) and np.all(np.isfinite(vd.ttft_s))
    # same requests, same physics for attention: medians agree to within a factor of two
    for a, b in ((st.ttft_s, vd.ttft_s), (st.tpot_s, vd.tpot_s)):
        ra, rb = np.nanmedian(a), np.nanmedian(b)
        assert 0.5 < ra / rb < 2.0, (ra, rb)
