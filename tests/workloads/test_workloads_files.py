"""Workload files: Parquet/CSV/JSONL round trips, Mooncake JSONL, validation of bad rows."""

from __future__ import annotations

import numpy as np
import pytest

from workloads import SLOClass, assign_slo, first_n, load_workload, read_requests, write_workload


def _sample():
    w = first_n(load_workload("mooncake-conv"), 300)
    return assign_slo(w, "prompt_len", classes=(SLOClass("fast", 300, 30), SLOClass("slow", 9000, 300)),
                      threshold=8000, below="fast", above="slow")


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_round_trip(tmp_path, suffix):
    w = _sample()
    back = read_requests(write_workload(w, tmp_path / f"w{suffix}"))
    assert back.content_hash() == w.content_hash()
    assert back.name == w.name and back.slo_classes == w.slo_classes


def test_round_trip_with_tenants_and_adapters(tmp_path):
    w = first_n(load_workload("vtc-lmsys"), 200)
    w = w.replace(adapters=("lora-a", "lora-b"), adapter=np.resize(np.array([-1, 0, 1], np.int32), w.n))
    for suffix in (".parquet", ".csv"):
        back = read_requests(write_workload(w, tmp_path / f"v{suffix}"))
        assert back.content_hash() == w.content_hash()


def test_hand_written_csv_defaults_and_sorting(tmp_path):
    p = tmp_path / "mine.csv"
    p.write_text("arrival_s,prompt_len,output_len,prefix_ids\n2.5,100,10,1 2\n0.5,50,5,\n1.0,70,7,1\n")
    w = read_requests(p)
    assert w.arrival_s.tolist() == [0.5, 1.0, 2.5]  # unsorted rows are sorted by arrival
    assert w.blocks_of(2).tolist() == [1, 2] and w.blocks_of(0).tolist() == []
    assert w.max_output.tolist() == [5, 7, 10] and w.tenants == ("default",)


def test_mooncake_format_jsonl_is_read(tmp_path, shared_traces):
    w = read_requests(shared_traces / "mooncake_fast25_synthetic_trace.jsonl")
    assert w.content_hash() == load_workload("mooncake-synthetic").content_hash()


def test_azure_trace_csv_as_published_is_read(shared_traces):
    w = read_requests(shared_traces / "azure_llm_2023_conv.csv")
    assert w.content_hash() == load_workload("azure-conv").content_hash()


def test_burstgpt_csv_as_published_is_read(tmp_path):
    p = tmp_path / "BurstGPT_1.csv"
    p.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                 "5,ChatGPT,472,18,490,Conversation log\n45,ChatGPT,1087,0,1087,Conversation log\n"
                 "118,GPT-4,417,276,693,API log\n")
    w = read_requests(p)
    assert w.arrival_s.tolist() == [0.0, 40.0, 113.0]
    assert w.prompt_len.tolist() == [472, 1087, 417]
    assert w.output_len.tolist() == [18, 1, 276]  # a failed (0-token) response still ran its prefill
    assert [w.tenants[t] for t in w.tenant] == ["ChatGPT", "ChatGPT", "GPT-4"]


@pytest.mark.parametrize(
    "text, msg",
    [
        ("prompt_len,output_len\n1,1\n", "missing column 'arrival_s'"),
        ("arrival_s,prompt_len,output_len\n0,10,1\n1,abc,1\n", "row 2: prompt_len='abc' is not a number"),
        ("arrival_s,prompt_len,output_len\n0,10,-4\n", "row 1: output_len=-4 must be >= 1"),
        ("arrival_s,prompt_len,output_len,max_output\n0,10,50,20\n", "row 1: max_output=20 is below output_len"),
        ("arrival_s,prompt_len,output_len,slo_class\n0,10,5,platinum\n", "row 1: slo_class='platinum' is not a defined"),
        ("arrival_s,prompt_len,output_len\n-1,10,5\n", "row 1: arrival_s=-1 is negative"),
        ("arrival_s,prompt_len,output_len\n0,10.5,5\n", "row 1: prompt_len=10.5 is not an integer"),
        ("arrival_s,prompt_len,output_len,colour\n0,10,5,red\n", "unknown column 'colour'"),
        ("arrival_s,prompt_len,output_len,prefix_ids\n0,10,5,1 x\n", "row 1: prefix_ids"),
        ("# schema_version: 2\narrival_s,prompt_len,output_len\n0,10,5\n", "schema_version '2'"),
        ("arrival_s,prompt_len,output_len\n", "no requests"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\nyesterday,396,109\n",
         "row 2: TIMESTAMP='yesterday' is not a date and time"),
        ("Timestamp,Model,Request tokens,Response tokens\n5,ChatGPT,abc,18\n", "row 1: Request tokens='abc' is not a number"),
    ],
)
def test_bad_csv_names_row_and_field(tmp_path, text, msg):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(ValueError, match=msg) as e:
        read_requests(p)
    assert "\n" not in str(e.value)


def test_bad_parquet_and_jsonl(tmp_path):
    p = tmp_path / "x.parquet"
    p.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        read_requests(p)
    j = tmp_path / "x.jsonl"
    j.write_text('{"arrival_s": 0, "prompt_len": 5, "output_len": 1}\n{"arrival_s": 1, "prompt_len": 5\n')
    with pytest.raises(ValueError, match="line 2: not JSON"):
        read_requests(j)
