"""``servetune simulate`` end to end (CliRunner on the real app, real files in tmp_path)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import cli
from tuner.policy import Policy


@pytest.fixture
def workload_file(tmp_path):
    rng = np.random.default_rng(0)
    n = 80
    df = pd.DataFrame({"arrival_s": np.cumsum(rng.exponential(0.2, n)), "prompt_len": rng.integers(100, 1500, n),
                       "output_len": rng.integers(5, 200, n)})
    path = tmp_path / "w.csv"
    df.to_csv(path, index=False)
    return path


def test_simulate_prints_scorecard_and_writes_out_and_trace(tmp_path, workload_file):
    out, trace = tmp_path / "res" / "run.json", tmp_path / "run.trace.json"
    r = CliRunner().invoke(cli.app, ["simulate", "-w", str(workload_file), "--model", "llama-2-7b", "--gpu", "a100",
                                     "--batching", "continuous", "--max-batched-tokens", "4096", "--queue", "sjf",
                                     "--no-prefix-caching", "--out", str(out), "--trace", str(trace)])
    assert r.exit_code == 0, r.output
    assert "TTFT p50/p90/p99 ms" in r.output and "ITL p50/p90/p99 ms" in r.output and "throughput tok/s" in r.output
    doc = json.loads(out.read_text())
    assert doc["scorecard"]["n_completed"] == 80
    assert doc["policy"]["batching"] == "continuous" and doc["policy"]["max_num_batched_tokens"] == 4096
    assert doc["policy"]["queue"] == "sjf" and doc["policy"]["prefix_caching"] is False
    rec = pd.read_parquet(out.with_name("run.records.parquet"))
    assert len(rec) == 80 and rec["finish_s"].notna().all()
    pol = Policy.from_yaml(out.with_name("run.policy.yaml"))
    assert pol.batching == "continuous"
    itl = pd.read_csv(out.with_name("run.itl.csv"))  # the ITL histogram's non-empty bins
    assert itl["count"].sum() == pytest.approx((rec["output_len"] - 1).sum())
    assert (itl["lo_ms"] < itl["hi_ms"]).all() and itl["cum_frac"].is_monotonic_increasing
    assert itl["cum_frac"].iloc[-1] == pytest.approx(1.0)
    tr = json.loads(trace.read_text())
    names = {e["name"] for e in tr["traceEvents"] if e.get("ph") == "X"}
    assert names & {"prefill", "decode", "prefill+decode"} and any(e.get("ph") == "b" for e in tr["traceEvents"])


def test_simulate_shows_and_writes_the_per_tenant_table(tmp_path):
    out = tmp_path / "mt.json"
    r = CliRunner().invoke(cli.app, ["simulate", "-w", "vtc-lmsys", "--first", "200", "--rate", "8",
                                     "--max-num-seqs", "16", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "per tenant" in r.output and "mt.tenants.csv" in r.output
    t = pd.read_csv(out.with_name("mt.tenants.csv"))
    rec = pd.read_parquet(out.with_name("mt.records.parquet"))
    assert len(t) == rec["tenant"].nunique() >= 2 and t["requests"].sum() == 200
    assert t["service_share"].sum() == pytest.approx(1.0, rel=1e-5)
    r1 = CliRunner().invoke(cli.app, ["simulate", "-w", "azure-conv", "--first", "50", "--out", str(tmp_path / "one.json")])
    assert r1.exit_code == 0 and "per tenant" not in r1.output  # one tenant: no table, no file
    assert not (tmp_path / "one.tenants.csv").exists()


def test_simulate_policy_file_with_flag_override_and_rate_first(tmp_path, workload_file):
    pfile = tmp_path / "p.yaml"
    Policy(max_num_seqs=4, speculation="ngram").to_yaml(pfile)
    out = tmp_path / "o.json"
    r = CliRunner().invoke(cli.app, ["simulate", "-w", str(workload_file), "--policy", str(pfile), "--max-num-seqs", "8",
                                     "--rate", "20", "--first", "30", "-o", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["policy"]["max_num_seqs"] == 8 and doc["policy"]["speculation"] == "ngram"  # simulated (issue 5)
    assert doc["workload"]["n"] == 30
    assert not any("speculation" in n for n in doc["notes"])


@pytest.mark.parametrize("args,msg", [
    (["--model", "no-such-model"], "unknown model"),
    (["--batching", "bogus"], "batching"),
    (["--model", "llama-3.1-70b"], "infeasible"),
    (["--cost-model", "bogus"], "cost_model"),
    (["--profile", "no-such-table"], "no-such-table"),
])
def test_simulate_user_errors_are_one_line(workload_file, args, msg, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["simulate", "-w", str(workload_file), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and msg in err and err.count("\n") == 1


def test_bundled_workload_name_resolves():
    r = CliRunner().invoke(cli.app, ["simulate", "-w", "azure-conv", "--first", "50"])
    assert r.exit_code == 0, r.output
    assert "azure-conv" in r.output


def test_cost_model_and_profile_flags_change_the_pricing_and_are_stated(tmp_path, workload_file):
    """--cost-model terms prices steps with the fitted operator-class terms (Splitwise rows) and
    says so; --profile splitwise on a measured (model, GPU, TP) uses that profile's rows."""
    docs = {}
    for name, args in {"auto": [], "terms": ["--cost-model", "terms"],
                       "profile": ["--profile", "splitwise", "--model", "llama-2-70b", "--tp", "4"]}.items():
        out = tmp_path / f"{name}.json"
        model = [] if "--model" in args else ["--model", "llama-2-7b", "--gpu", "a100"]
        r = CliRunner().invoke(cli.app, ["simulate", "-w", str(workload_file), *model, *args, "--out", str(out)])
        assert r.exit_code == 0, r.output
        docs[name] = json.loads(out.read_text())
    assert docs["auto"]["deployment"]["cost_model"] == "auto"
    assert docs["terms"]["deployment"]["cost_model"] == "terms"
    assert "operator-class terms" in docs["terms"]["meta"]["cost_model"]
    assert "terms" not in docs["auto"]["meta"]["cost_model"]
    assert docs["terms"]["scorecard"]["tpot_p50_ms"] != docs["auto"]["scorecard"]["tpot_p50_ms"]
    assert docs["profile"]["deployment"]["profile"] == "splitwise"
    assert "llama-2-70b" in docs["profile"]["meta"]["cost_model"]
