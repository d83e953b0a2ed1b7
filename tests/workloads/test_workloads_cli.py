"""`servetune workloads list|inspect|export`: output, plots, and exit 2 with one line on bad input."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from workloads import load_workload


def test_list_names_every_bundled_set(run_cli):
    code, out, _ = run_cli("list")
    assert code == 0
    for name in ("azure-conv", "azure-code", "mooncake-conv", "mooncake-synthetic", "vtc-lmsys",
                 "servegen-reason", "servegen-mm", "sharegpt", "arxiv"):
        assert name in out


def test_inspect_prints_stats_and_saves_plot(run_cli, tmp_path):
    png = tmp_path / "m.png"
    code, out, err = run_cli("inspect", "mooncake-synthetic", "--plot", png)
    assert code == 0, err
    assert "3,993" in out and "prefix reuse" in out and "0.640" in out and "peak 1-min rate" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_inspect_rate_and_first(run_cli):
    code, out, _ = run_cli("inspect", "azure-conv", "--rate", "20", "--first", "500")
    assert code == 0
    assert "requests         500" in out


def test_inspect_length_table(run_cli):
    code, out, _ = run_cli("inspect", "sharegpt")
    assert code == 0 and "30,731" in out and "mean 2,340" in out


def test_export_then_inspect_file(run_cli, tmp_path):
    out_file = tmp_path / "vtc.parquet"
    code, out, _ = run_cli("export", "vtc-lmsys", "--out", out_file, "--first", "300")
    assert code == 0 and "300" in out
    assert load_workload(out_file).n == 300
    code, out, _ = run_cli("inspect", out_file)
    assert code == 0 and "tenants (" in out


@pytest.mark.parametrize(
    "csv, msg",
    [
        ("prompt_len,output_len\n1,1\n", "missing column 'arrival_s'"),
        ("arrival_s,prompt_len,output_len\n0,10,1\n1,x,1\n", "row 2: prompt_len='x' is not a number"),
        ("arrival_s,prompt_len,output_len\n0,-10,1\n", "row 1: prompt_len=-10 must be >= 1"),
        ("arrival_s,prompt_len,output_len,max_output\n0,10,9,3\n", "row 1: max_output=3 is below output_len"),
        ("arrival_s,prompt_len,output_len,slo_class\n0,10,9,vip\n", "row 1: slo_class='vip' is not a defined SLO class"),
    ],
)
def test_bad_request_file_exits_2_with_one_line(run_cli, tmp_path, csv, msg):
    p = tmp_path / "bad.csv"
    p.write_text(csv)
    code, out, err = run_cli("inspect", p)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and msg in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "spec, msg",
    [
        ("schema_version: 1\nsource: [azure-conv\n", "line 3: YAML syntax error"),
        ("schema_version: 1\nsource: azure-conv\nextra_key: 1\n", "unknown key 'extra_key'"),
        ("schema_version: 1\nsynthetic: {duration_s: 60, rate: -5}\n", "must be > 0"),
        ("schema_version: 1\nsynthetic: {duration_s: 60, rate: 2000000}\n", "<= 1e+06 req/s"),
    ],
)
def test_bad_spec_exits_2_with_one_line(run_cli, tmp_path, spec, msg):
    p = tmp_path / "bad.yaml"
    p.write_text(spec)
    code, _, err = run_cli("export", p, "--out", tmp_path / "x.parquet")
    assert code == 2 and msg in err and err.count("\n") == 1
    assert not (tmp_path / "x.parquet").exists()


@pytest.mark.parametrize(
    "args, msg",
    [
        (("inspect", "azure-chat"), "unknown workload 'azure-chat'"),
        (("inspect", "azure-conv", "--rate", "-1"), "must be > 0"),
        (("inspect", "azure-conv", "--rate", "1e7"), "<= 1e+06 req/s"),
        (("inspect", "missing.csv"), "missing.csv: no such file"),
        (("export", "azure-conv", "--out", "x.txt"), "use a .parquet, .csv or .jsonl"),
        (("inspect", "sharegpt", "--rate", "3"), "length table"),
    ],
)
def test_bad_arguments_exit_2(run_cli, args, msg):
    code, _, err = run_cli(*args)
    assert code == 2 and msg in err and err.count("\n") == 1


@pytest.mark.skipif(shutil.which("servetune") is None, reason="servetune console script not installed")
def test_console_script_end_to_end(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("arrival_s,prompt_len,output_len\n0,10,1\n1,abc,1\n")
    r = subprocess.run(["servetune", "workloads", "inspect", str(p)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {p} row 2: prompt_len='abc' is not a number"]
