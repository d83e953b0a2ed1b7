"""The per-tenant table: it adds up to the trial scorecard, and tune/report publish it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tuner.tenants import TENANT_COLUMNS, tenant_table

MULTI = {"source": "vtc-lmsys", "rate": 8.0, "first_n": 300}


@pytest.fixture(scope="module")
def lmsys_run():
    from backends.base import Deployment
    from backends.sim import SimBackend
    from tuner.policy import Policy
    from tuner.scorecard import score
    from workloads import SLOClass, first_n, load_workload, scale_to_rate, set_slo_classes

    w = set_slo_classes(scale_to_rate(first_n(load_workload("vtc-lmsys"), 300), 8.0), [SLOClass("std", 1000, 80)])
    res = SimBackend().run(Policy(max_num_seqs=16, max_num_batched_tokens=512, max_queue_depth=32),
                           w, Deployment("llama-3.1-8b", "h100-sxm"), seed=0)
    return res, score(res, w)


def test_the_table_adds_up_to_the_scorecard(lmsys_run):
    res, sc = lmsys_run
    t = tenant_table(res.records)
    assert tuple(t.columns) == TENANT_COLUMNS
    assert len(t) == res.records["tenant"].nunique() >= 2
    assert t["requests"].sum() == sc.n_requests
    assert t["completed"].sum() == sc.n_completed and t["rejected"].sum() == sc.n_rejected
    assert t["service_share"].sum() == pytest.approx(1.0)
    assert np.average(t["slo_attainment"], weights=t["requests"]) == pytest.approx(sc.slo_attainment)
    # service_ratio of the scorecard is max/min of the same per-tenant service
    share = t["service_share"][t["service_share"] > 0]
    assert share.max() / share.min() == pytest.approx(sc.service_ratio)
    served = t[t["completed"] > 0]
    assert (served["ttft_p99_ms"] >= served["ttft_p50_ms"]).all()


def test_a_tenant_with_nothing_served_has_no_latencies():
    rec = pd.DataFrame({"arrival_s": [0.0, 0.0], "first_token_s": [0.1, np.nan], "finish_s": [0.5, np.nan],
                        "output_len": [5, 0], "prompt_len": [10, 10], "rejected": [False, True],
                        "failed": [False, False], "tenant": ["a", "b"], "ttft_slo_ms": [1e3, 1e3],
                        "tpot_slo_ms": [1e3, 1e3]})
    t = tenant_table(rec).set_index("tenant")
    assert t.loc["a", "service_share"] == 1.0 and t.loc["b", "service_share"] == 0.0
    assert t.loc["b", "rejected"] == 1 and np.isnan(t.loc["b", "ttft_p50_ms"])
    assert t.loc["a", "ttft_p50_ms"] == pytest.approx(100.0) and t.loc["a", "tpot_p50_ms"] == pytest.approx(100.0)
    assert t.loc["a", "slo_attainment"] == 1.0 and t.loc["b", "slo_attainment"] == 0.0


def test_tune_logs_the_table_and_report_shows_it(project, write_study, run_cli, stored):
    from mlflow import MlflowClient

    p = write_study(name="mt", workload=MULTI, slos={"std": {"ttft_ms": 1000, "tpot_ms": 80}}, trials=3)
    code, _, err = run_cli("tune", str(p), "--no-progress")
    assert code == 0, err
    study = stored("mt")
    best = max((t for t in study.get_trials() if t.values), key=lambda t: t.values[0])
    c = MlflowClient(tracking_uri=f"sqlite:///{project / '.servetune' / 'mlflow.db'}")
    run = c.search_runs([study.user_attrs["mlflow_experiment_id"]],
                        filter_string=f"tags.`optuna.trial` = '{best.number}'")[0]
    assert "tenants.csv" in {a.path for a in c.list_artifacts(run.info.run_id)}
    table = pd.read_csv(c.download_artifacts(run.info.run_id, "tenants.csv", str(project)))
    assert tuple(table.columns) == TENANT_COLUMNS and table["service_share"].sum() == pytest.approx(1.0)
    code, _, err = run_cli("report", str(p), "--out", str(project / "rep"))
    assert code == 0, err
    page = (project / "rep" / "report.html").read_text()
    assert "<h2>Per tenant</h2>" in page and page.count("<tr><td>") >= len(table)
