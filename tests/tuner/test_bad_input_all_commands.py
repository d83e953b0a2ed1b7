"""Bad input across the commands: each gets ONE line on stderr, exit code 2, no traceback, and
whatever a study had already stored is left as it was (issue 8)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# (argv, a fragment the one-line message must contain); {d} is the test's project folder
CASES = [
    (["simulate", "-w", "{d}/missing.csv"], "no such file"),
    (["simulate", "-w", "{d}"], ""),  # a folder, not a workload file
    (["simulate", "-w", "{d}/bad.csv"], "row"),
    (["simulate", "-w", "{d}/neg.csv"], "prompt_len"),
    (["simulate", "-w", "{d}/bad.jsonl"], ""),
    (["simulate", "-w", "{d}/bad.parquet"], ""),
    (["simulate", "-w", "{d}/bad.yaml"], "YAML"),
    (["simulate", "-w", "azure-conv", "--rate", "-3"], "rate"),
    (["simulate", "-w", "azure-conv", "--rate", "1e12"], "rate"),
    (["simulate", "-w", "azure-conv", "-m", "llama-9000"], "unknown model"),
    (["simulate", "-w", "azure-conv", "-g", "tpu-v9"], "unknown gpu"),
    (["simulate", "-w", "azure-conv", "-m", "llama-3.1-405b", "-g", "l40s"], "infeasible"),
    (["simulate", "-w", "azure-conv", "--speculation", "draft"], "spec_draft_model"),
    (["simulate", "-w", "azure-conv", "--ssd-offload-gb", "10"], "ssd_offload_gb"),
    (["simulate", "-w", "azure-conv", "--policy", "{d}/bad_policy.yaml"], "unknown policy knob"),
    (["simulate", "--study", "{d}/missing-study.yaml"], "no such study file"),
    (["simulate", "--study", "{d}/bad-study.yaml"], "max_num_seqz"),
    (["simulate", "--study", "{d}/bad-model-study.yaml", "--trial", "0"], "no trials"),
    (["simulate", "--study", "{d}/bad-model-study.yaml", "-w", "azure-conv"], "-w: --study takes"),
    (["simulate", "--trial", "0"], "--trial: needs --study"),
    (["simulate"], "-w/--workload: missing"),
    (["workloads", "inspect", "{d}/bad.csv"], "row"),
    (["tune", "{d}/missing-study.yaml"], "study"),
    (["tune", "{d}/bad-study.yaml"], "max_num_seqz"),
    (["tune", "{d}/bad-model-study.yaml"], "unknown model"),
    (["export", "{d}/bad-study.yaml"], "max_num_seqz"),
    # usage errors (raised by typer's vendored click, which cli.main once reported as internal)
    (["calibrate"], "Missing option '--model'"),
    (["simulate", "-w", "azure-conv", "--no-such-flag"], "No such option: --no-such-flag"),
    (["simulate", "-w", "azure-conv", "--rate", "abc"], "'--rate'"),
    (["nosuchcmd"], "No such command"),
    (["simulate", "-w", "{d}/header_only.csv"], "no requests"),
    (["simulate", "-w", "azure-conv", "--max-model-len", "-1"], "'--max-model-len'"),
    (["simulate", "-w", "azure-conv", "--max-model-len", "200000"], "max_model_len=200000 exceeds llama-3.1-8b's context"),
    (["fidelity", "--runs", "{d}/other_runs.csv"], "missing column(s) workload"),
    (["fidelity", "--runs", "{d}/bad.parquet"], "trainval runs"),
]


@pytest.fixture
def bad_files(project):
    d = project
    (d / "bad.csv").write_text("arrival_s,prompt_len,output_len\n0.0,12,3\n0.5,abc,4\n")
    (d / "neg.csv").write_text("arrival_s,prompt_len,output_len\n0.0,-12,3\n")
    (d / "bad.jsonl").write_text('{"timestamp": 0, "input_length": 10, "output_length": 2}\n{not json\n')
    (d / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    (d / "bad.yaml").write_text("schema_version: 1\nsource: [unclosed\n")
    (d / "bad_policy.yaml").write_text("max_num_seqz: 8\n")
    (d / "header_only.csv").write_text("arrival_s,prompt_len,output_len\n")
    (d / "other_runs.csv").write_text("run,ttft_ms\n1,20.5\n")
    return d


@pytest.mark.parametrize("argv, fragment", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_exit_2(argv, fragment, bad_files, write_study, run_cli):
    write_study(name="bad-study", search={"max_num_seqz": [1, 2]})
    write_study(name="bad-model-study", deployment={"model": "llama-9000", "gpu": "h100"})
    args = [a.format(d=bad_files) for a in argv]
    code, out, err = run_cli(*args)
    assert code == 2, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
    assert fragment in lines[0]


def test_real_process_prints_no_traceback(bad_files):
    r = subprocess.run([sys.executable, "-c", "import cli; cli.main()", "simulate", "-w", str(bad_files / "bad.csv")],
                       capture_output=True, text=True, cwd=bad_files)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_calibrate_without_torch_is_one_line(project):
    """torch that cannot be imported (sys.modules["torch"] = None makes ``import torch`` fail as
    an absent install does) is a one-line error naming the extra, exit 2."""
    code = "import sys; sys.modules['torch'] = None; import cli; cli.main()"
    r = subprocess.run([sys.executable, "-c", code, "calibrate", "-m", "tiny-llama", "--quick"],
                       capture_output=True, text=True, cwd=project)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: calibrate needs torch"), r.stderr


def test_a_command_group_alone_prints_its_help(run_cli):
    code, out, err = run_cli("workloads")
    assert code == 2 and "list" in out + err and "inspect" in out + err
    assert "internal error" not in out + err and "Traceback" not in out + err


def _snapshot(stored, name):
    s = stored(name)
    return [(t.number, t.state, t.values, t.params) for t in s.get_trials()], dict(s.user_attrs)


def test_failed_commands_leave_the_stores_untouched(write_study, run_cli, stored, children, project, monkeypatch):
    p = write_study(name="keep", trials=2)
    monkeypatch.setenv("SERVETUNE_VLLM_PYTHON", str(project / "no-vllm" / "python"))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once (the default: 2 retries, ~6 s)
    assert run_cli("tune", str(p), "--no-progress")[0] == 0
    before, n_runs = _snapshot(stored, "keep"), len(children(stored("keep")))
    bad = [
        ["tune", str(p), "--trials", "3", "--storage", "postgresql+psycopg2://u:s3cret@127.0.0.1:1/db"],
        ["tune", str(p), "--trials", "3", "--mlflow-uri", f"sqlite:///{project / 'keep.yaml'}/x/mlflow.db"],
        ["tune", str(p), "--trials", "3", "--backend", "tensorrt"],
        ["tune", str(p), "--trials", "3", "--backend", "vllm"],  # not installed (SERVETUNE_VLLM_PYTHON below)
        ["tune", str(p), "--trials", "3", "--mlflow-uri", "http://127.0.0.1:1"],  # nothing listens
        ["tune", str(p), "--trials", "3", "--mlflow-uri", "file:///proc/no-such-dir"],
        ["export", str(p), "--trial", "99"],
        ["simulate", "--study", str(p), "--trial", "99"],
    ]
    for argv in bad:
        code, out, err = run_cli(*argv)
        assert code == 2, (argv, err)
        assert "s3cret" not in out + err
        assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    assert _snapshot(stored, "keep") == before
    assert len(children(stored("keep"))) == n_runs


def test_export_of_an_unknown_study_creates_nothing(write_study, run_cli, stored):
    p = write_study(name="never-tuned")
    code, _, err = run_cli("export", str(p))
    assert code == 2 and "no trials" in err
    with pytest.raises(KeyError):
        stored("never-tuned")
