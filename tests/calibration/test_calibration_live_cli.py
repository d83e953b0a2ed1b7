"""``calibrate --live --records`` → calibration file → ``simulate --calibration`` / a study's
``deployment.calibration``, on records the simulator made under a known calibration."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from backends.sim.costmodel import Efficiency
from tuner.calibration.calfile import CalibrationFile, model_shape, read_calibration, write_calibration
from tuner.calibration.engine_fit import EngineCalibration
from tuner.calibration.live import metrics

KNOWN = EngineCalibration(Efficiency(overhead_scale=3.0, seq_overhead_s=5e-5), lag_steps=0.5, share="as-given",
                          lag_s=0.02)
"""The 'engine' the records come from: the simulator under this calibration."""
RUN = ("-w", "azure-conv", "--first", "40", "--rate", "4")
CHECK = ("--first", "40", "--rate", "6")
FIT_TOL_PCT = 2.0
"""In sample: 3 fitted parameters, 3 means; the fit reproduces them to within this."""
CHECK_TOL_PCT = 5.0
"""Out of sample (another rate and max_num_seqs): the per-sequence cost is not identified by one
steady run (docs/calibration.md), so the fitted parameters differ from KNOWN; the means still
transfer to within this."""


@pytest.fixture
def runs(tmp_path, run_cli_full):
    """Records of two simulated runs under KNOWN (fit run and check run), via simulate --out."""
    from backends.sim.catalog import get_model

    m = get_model("tiny-llama")
    known = write_calibration(CalibrationFile(KNOWN, "tiny-llama", m.name, model_shape(m), "cpu", "cpu", "vllm-v1"),
                              tmp_path / "known.yaml")
    for name, args in (("run", RUN), ("check", ("-w", "azure-conv", *CHECK, "--max-num-seqs", "4"))):
        code, _, err = run_cli_full("simulate", "-m", "tiny-llama", "-g", "cpu", "--calibration", known, *args,
                                    "-o", tmp_path / f"{name}.json")
        assert code == 0, err
    return tmp_path


def calibrate(run_cli_full, d, *extra):
    return run_cli_full("calibrate", "--live", "-m", "tiny-llama", "-g", "cpu", *RUN, "--records",
                        d / "run.records.parquet", *extra)


def test_calibrate_live_fits_the_records_and_simulate_uses_it(runs, run_cli_full):
    d = runs
    check_pol = d / "check_policy.yaml"
    check_pol.write_text("max_num_seqs: 4\n")
    code, out, err = calibrate(run_cli_full, d, "--check", d / "check.records.parquet", "--check-rate", "6",
                               "--check-policy", check_pol, "-o", d / "fit.yaml")
    assert code == 0, err
    assert "run (in sample)" in out and "check (out of sample)" in out and "wrote " in out
    cf = read_calibration(d / "fit.yaml")
    measured = metrics(pd.read_parquet(d / "run.records.parquet"))
    assert list(cf.fit["measured_ms"].values()) == pytest.approx(measured, rel=1e-12)
    assert all(abs(e) < FIT_TOL_PCT for e in cf.fit["error_pct"].values()), cf.fit["error_pct"]
    assert all(abs(e) > 20 for e in cf.fit["default_error_pct"].values())  # the uncalibrated simulator is far off
    assert all(abs(e) < CHECK_TOL_PCT for e in cf.check["error_pct"].values()), cf.check["error_pct"]
    assert cf.params == ("overhead_scale", "seq_overhead_s", "lag_s")
    assert (cf.model_name, cf.gpu_name, cf.engine, cf.records) == ("tiny-llama", "cpu", "vllm-v1", "run.records.parquet")
    assert cf.workload["n"] == 40 and cf.workload["rate"] == 4.0 and len(cf.workload["hash"]) > 6
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]

    # simulate --calibration: the calibrated means exactly, and notes naming the file
    code, out, err = run_cli_full("simulate", "-m", "tiny-llama", "-g", "cpu", "--calibration", d / "fit.yaml", *RUN,
                                  "-o", d / "cal.json")
    assert code == 0, err
    flat = " ".join(out.split())
    assert "cost model: roofline (efficiency of calibration fit.yaml (tiny-llama on cpu tp1, vllm-v1; fitted on " \
           "azure-conv, 40 requests))" in flat
    assert "client lag (calibration fit.yaml" in flat
    sim = metrics(pd.read_parquet(d / "cal.records.parquet"))
    assert sim == pytest.approx(list(cf.fit["simulated_ms"].values()), rel=1e-9)
    code, _, _ = run_cli_full("simulate", "-m", "tiny-llama", "-g", "cpu", *RUN, "-o", d / "plain.json")
    assert code == 0
    plain = metrics(pd.read_parquet(d / "plain.records.parquet"))
    assert plain == pytest.approx(list(cf.fit["default_simulated_ms"].values()), rel=1e-9)
    assert all(abs(p / s - 1) > 0.2 for p, s in zip(plain, sim, strict=True))


def test_study_deployment_calibration_is_what_trials_run(runs, run_cli_full):
    from backends.sim import SimBackend
    from tuner.study_spec import load_study

    d = runs
    assert calibrate(run_cli_full, d, "-o", d / "fit.yaml")[0] == 0
    study = d / "study.yaml"
    doc = {"schema_version": 1, "name": "cal", "workload": {"source": "azure-conv", "first_n": 40, "rate": 4},
           "deployment": {"model": "tiny-llama", "gpu": "cpu", "calibration": "fit.yaml"},
           "objectives": [{"metric": "goodput", "direction": "maximize"}], "search": {"max_num_seqs": [8, 16]}}
    study.write_text(yaml.safe_dump(doc))
    spec = load_study(study)
    assert spec.deployment.calibration == str(d / "fit.yaml")
    backend = SimBackend()
    backend.check_deployment(spec.deployment)  # what tune calls before the first trial
    res = backend.run(spec.base_policy(), spec.load_workload(), spec.deployment, seed=spec.seed)  # a trial's run
    assert metrics(res.records) == pytest.approx(list(read_calibration(d / "fit.yaml").fit["simulated_ms"].values()),
                                                 rel=1e-9)
    assert any("calibration fit.yaml" in n for n in res.notes)

    doc["deployment"]["gpu"] = "h100"
    study.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=r"deployment\.calibration: calibration .*fit\.yaml was fitted for "
                                         r"tiny-llama on cpu \(vllm-v1\), not for gpu h100-sxm"):
        load_study(study)


def test_calibration_for_another_model_or_gpu_is_refused(runs, run_cli_full):
    d = runs
    for args in (("-m", "llama-3.1-8b", "-g", "h100"), ("-m", "tiny-llama", "-g", "h100"),
                 ("-m", "tiny-llama", "-g", "cpu", "--engine", "sglang")):
        code, out, err = run_cli_full("simulate", *args, "--calibration", d / "known.yaml", "-w", "azure-conv",
                                      "--first", "5")
        assert code == 2 and out == ""
        assert err.startswith("error: calibration ") and "was fitted for tiny-llama on cpu (vllm-v1)" in err
        assert err.count("\n") == 1


BAD_CALIBRATIONS = {
    "garbage.yaml": (": : [unclosed\n", "not YAML"),
    "other.yaml": ("a: 1\n", "not a servetune calibration file"),
    "future.yaml": ("servetune_calibration: 2\n", "servetune_calibration: 2 is not a version this servetune reads"),
    "partial.yaml": ("servetune_calibration: 1\ncalibration: {}\n", "missing key 'fitted_on'"),
}


@pytest.mark.parametrize("name", sorted(BAD_CALIBRATIONS))
def test_simulate_with_a_bad_calibration_file_says_one_line(name, tmp_path, run_cli_full):
    text, why = BAD_CALIBRATIONS[name]
    (tmp_path / name).write_text(text)
    code, out, err = run_cli_full("simulate", "-m", "tiny-llama", "-g", "cpu", "--calibration", tmp_path / name,
                                  "-w", "azure-conv", "--first", "5", "-o", tmp_path / "out.json")
    assert code == 2 and out == ""
    assert err.startswith(f"error: calibration {tmp_path / name}") and why in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_calibrate_live_bad_input_exits_2_and_writes_nothing(runs, run_cli_full):
    d = runs
    (d / "garbage.parquet").write_bytes(b"not parquet")
    pd.DataFrame({"req_id": [0]}).to_csv(d / "cols.csv", index=False)
    before = sorted(p.name for p in d.iterdir())
    cases = [
        (("--records", d / "garbage.parquet"), "records"),
        (("--records", d / "cols.csv"), "missing columns arrival_s"),
        (("--records", d / "check.records.parquet"), "request 1 arrives at"),  # another rate
        (("--records", d / "nope.parquet"), "no such file"),
        (("--records", d / "run.records.parquet", "--run"), "give one"),
        (("--records", d / "run.records.parquet", "--params", "mem"), "--params 'mem'"),
        (("--records", d / "run.records.parquet", "--split", "100"), "no served request"),
        (("--records", d / "run.records.parquet", "--check-rate", "3"), "--check-rate"),
        (("--records", d / "run.records.parquet", "--check", d / "garbage.parquet"), "cannot be read"),
        (("--records", d / "run.records.parquet", "--quick"), "--quick"),
    ]
    for extra, why in cases:
        code, out, err = run_cli_full("calibrate", "--live", "-m", "tiny-llama", "-g", "cpu", *RUN, *extra,
                                      "-o", d / "new.yaml")
        assert code == 2, (extra, err)
        assert err.startswith("error: ") and why in err and err.count("\n") == 1, (extra, err)
        assert sorted(p.name for p in d.iterdir()) == before
    code, _, err = run_cli_full("calibrate", "-m", "tiny-llama", "--records", d / "run.records.parquet")
    assert code == 2 and "--records: a --live option" in err
    code, _, err = calibrate(run_cli_full, d, "-o", d / "new.json")
    assert code == 2 and "suffix must be .yaml" in err


def test_calibration_file_round_trips(tmp_path):
    from backends.sim.catalog import get_gpu, get_model

    m = get_model("tiny-llama")
    cf = CalibrationFile(KNOWN, "tiny-llama", m.name, model_shape(m), "cpu-host", "cpu-host", "vllm-v1", 1,
                         {"max_num_seqs": 8}, {"name": "w", "n": 3}, "r.parquet", ("lag_s",),
                         {"measured_ms": {"ttft": 1.0, "e2e": 2.0, "tpot": 0.5}})
    path = write_calibration(cf, tmp_path / "c.yaml")
    back = read_calibration(path)
    assert back.calibration == KNOWN
    assert back.to_dict() == cf.to_dict()
    assert back.mismatch(m, get_gpu("cpu"), "vllm-v1") == ""  # cpu-host is the catalog's cpu (an alias)
    assert back.mismatch(m, get_gpu("h100"), "vllm-v1") == "gpu h100-sxm"
