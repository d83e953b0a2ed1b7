"""Bundled trace loaders against the real files: row counts and SOURCES.md statistics."""

from __future__ import annotations

import lzma
from pathlib import Path

import numpy as np
import pytest

from workloads import load_workload
from workloads.registry import BUNDLED
from workloads.servegen import servegen_clients, servegen_member
from workloads.stats import prefix_reuse
from workloads.traces import DATA_DIR, TRACE_FILES, bundled_bytes, load_length_table

SHARED_NAMES = {
    "azure-code": "azure_llm_2023_code.csv",
    "azure-conv": "azure_llm_2023_conv.csv",
    "mooncake-conv": "mooncake_fast25_conversation_trace.jsonl",
    "mooncake-synthetic": "mooncake_fast25_synthetic_trace.jsonl",
    "vtc-lmsys": "vtc_lmsys_arena_multiclient_trace.csv",
    "sharegpt": "sarathi_sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
    "arxiv": "vidur_arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv",
}

# name: rows, (input mean, p50), output mean, span s, mean rate  (SOURCES.md)
TRACE_STATS = {
    "azure-code": (8_819, (2048, 1469), 28, 3436, 2.57),
    "azure-conv": (19_366, (1155, 1020), 211, 3502, 5.53),
    "mooncake-conv": (12_031, (12035, 6909), 343, 3537, 3.40),
    "mooncake-synthetic": (3_993, (15325, 11587), 149, 1022, 3.91),
    "vtc-lmsys": (1_500, (136, 40), 256, 600, 2.50),
}


@pytest.mark.parametrize("name", sorted(TRACE_STATS))
def test_trace_rows_and_published_statistics(name):
    rows, (in_mean, in_p50), out_mean, span, rate = TRACE_STATS[name]
    w = load_workload(name)
    assert w.n == rows
    assert w.prompt_len.mean() == pytest.approx(in_mean, abs=0.5)
    assert np.median(w.prompt_len) == in_p50
    assert w.output_len.mean() == pytest.approx(out_mean, abs=0.5)
    assert w.span_s == pytest.approx(span, abs=0.5)
    assert w.rate == pytest.approx(rate, abs=0.005)
    assert w.arrival_s[0] == 0.0 and np.all(np.diff(w.arrival_s) >= 0)
    assert np.array_equal(w.max_output, w.output_len)


def test_azure_timestamps_keep_sub_millisecond_digits():
    w = load_workload("azure-conv")
    # 2023-11-16 18:15:46.6805900 -> 18:15:50.9951690 is 4.314579 s
    assert w.arrival_s[1] == pytest.approx(4.314579, abs=1e-9)


@pytest.mark.parametrize("name, reuse", [("mooncake-conv", 0.366), ("mooncake-synthetic", 0.640)])
def test_mooncake_prefix_blocks(name, reuse):
    w = load_workload(name)
    assert w.prefix_block_tokens == 512
    assert prefix_reuse(w) == pytest.approx(reuse, abs=0.0005)
    nblk = np.diff(w.prefix_offsets)
    assert np.array_equal(nblk, -(-w.prompt_len // 512))  # one id per (partial) 512-token block
    if name == "mooncake-conv":
        assert w.blocks_of(0).tolist() == list(range(14))


def test_vtc_tenants():
    w = load_workload("vtc-lmsys")
    assert len(w.tenants) == 27
    counts = np.bincount(w.tenant)
    assert counts.sum() == 1500 and counts.max() == 296  # skewed: the busiest client sends ~20 %
    assert all(t.startswith("dummy-lora-7b-rank-8-") for t in w.tenants)


@pytest.mark.parametrize("name, rows, in_mean, out_mean", [("sharegpt", 30_731, 2340, 439), ("arxiv", 28_257, 2588, 291)])
def test_length_tables(name, rows, in_mean, out_mean):
    t = load_length_table(name)
    assert len(t.prompt_len) == len(t.output_len) == rows
    assert t.prompt_len.mean() == pytest.approx(in_mean, abs=0.5)
    assert t.output_len.mean() == pytest.approx(out_mean, abs=0.5)
    with pytest.raises(ValueError, match="length table"):
        load_workload(name)


def test_loaders_are_cached_and_immutable():
    a, b = load_workload("azure-conv"), load_workload("azure-conv")
    assert a is b
    with pytest.raises(ValueError):
        a.prompt_len[0] = 1


def test_bundle_is_small_and_complete():
    files = {p.name for p in DATA_DIR.iterdir()}
    assert {"DATA.md", "SERVEGEN_LICENSE"} <= files
    assert set(TRACE_FILES.values()) <= files
    total = sum(p.stat().st_size for p in DATA_DIR.iterdir())
    assert total < 4_000_000
    text = (DATA_DIR / "DATA.md").read_text()
    for name in BUNDLED:
        assert f"`{name}`" in text
    for licence in ("CC-BY-4.0", "Apache-2.0", "MIT"):
        assert licence in text


@pytest.mark.parametrize("name", sorted(SHARED_NAMES))
def test_bundled_copy_equals_shared_original(name, shared_traces):
    assert bundled_bytes(TRACE_FILES[name]) == (shared_traces / SHARED_NAMES[name]).read_bytes()


@pytest.mark.parametrize("category, folder", [("reason", "reason/deepseek-r1"), ("mm", "multimodal/mm-image")])
def test_bundled_servegen_equals_shared_original(category, folder, shared_traces):
    src = shared_traces / "servegen" / folder
    originals = sorted(p.name for p in src.iterdir())
    assert len(servegen_clients(category)) * 2 == len(originals)
    for fname in originals:
        assert servegen_member(category, fname) == (src / fname).read_bytes(), fname
    assert (DATA_DIR / "SERVEGEN_LICENSE").read_bytes() == (shared_traces / "servegen" / "LICENSE").read_bytes()


def test_servegen_archives_are_plain_tar_xz():
    for fname in ("servegen_reason_deepseek-r1.tar.xz", "servegen_multimodal_mm-image.tar.xz"):
        data = lzma.decompress(Path(DATA_DIR / fname).read_bytes())
        assert data[257:262] == b"ustar"  # a tar stream, readable with `tar xJf`
    assert len(servegen_clients("reason")) == 73 and len(servegen_clients("mm")) == 35
