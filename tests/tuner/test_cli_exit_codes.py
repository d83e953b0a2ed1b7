"""Exit codes and storage safety of the CLI as a user meets them: Ctrl-C (exit 130, one line, the
finished trials kept), ``typer.Exit(code)`` kept, a live engine that is not installed (exit 2
before any trial), and concurrent ``tune`` processes on a fresh SQLite storage."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time

import typer
from optuna.trial import TrialState

CLI = [sys.executable, "-c", "import cli; cli.main()"]
WIDE = {"max_num_seqs": {"low": 8, "high": 2048, "log": True}}
"""A search space holding the engine default (no Optuna warning on stderr)."""


def _lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip()]


def test_sigint_exits_130_with_one_line_and_keeps_finished_trials(write_study, project, stored):
    p = write_study(name="intr", trials=100000, search=WIDE)
    proc = subprocess.Popen([*CLI, "tune", str(p), "--no-progress"], cwd=project, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # interrupt once a trial is complete
        time.sleep(0.3)
        try:
            if any(t.state == TrialState.COMPLETE for t in stored("intr").get_trials()):
                break
        except KeyError:  # study not created yet
            pass
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert _lines(err) == ["error: interrupted"], err
    trials = stored("intr").get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 1
    assert not any(t.state == TrialState.RUNNING for t in trials)  # the interrupted trial is FAIL, not left RUNNING


def test_typer_exit_keeps_its_code_and_keyboard_interrupt_is_130(cli_with):
    def register(app: typer.Typer) -> None:
        x = typer.Typer()
        app.add_typer(x, name="x")

        @x.command("exit")
        def _exit(code: int) -> None:
            raise typer.Exit(code)

        @x.command("ctrl-c")
        def _ctrl_c() -> None:
            raise KeyboardInterrupt

        @x.command("ctrl-c-in-cleanup")
        def _ctrl_c_in_cleanup() -> None:
            # a library's cleanup failing under the interrupt (Optuna 5.1's journal lock release
            # unlinks its renamed lock file twice): the error raised replaces the KeyboardInterrupt
            try:
                raise KeyboardInterrupt
            except BaseException:
                raise FileNotFoundError(2, "No such file or directory", "optuna.journal.lock1.rename") from None

        @x.command("missing-file")
        def _missing() -> None:
            raise FileNotFoundError(2, "No such file or directory", "trace.csv")

    run = cli_with(register, "x")
    assert run("exit", 3)[0] == 3
    assert run("exit", 0)[0] == 0
    code, out, err = run("ctrl-c")
    assert code == 130 and _lines(err) == ["error: interrupted"] and "Traceback" not in out + err
    code, out, err = run("ctrl-c-in-cleanup")
    assert code == 130 and _lines(err) == ["error: interrupted"] and "Traceback" not in out + err
    code, out, err = run("missing-file")  # the same error without an interrupt behind it: a user error
    assert code == 2 and _lines(err) == ["error: [Errno 2] No such file or directory: 'trace.csv'"], err


def test_missing_live_engine_fails_before_any_trial(write_study, run_cli, project, monkeypatch):
    p = write_study(name="live")
    monkeypatch.setenv("SERVETUNE_VLLM_PYTHON", str(project / "no-vllm" / "python"))
    for argv in (["--backend", "vllm"], ["--verify-top", "1", "--verify-backend", "vllm"]):
        code, out, err = run_cli("tune", str(p), "--trials", "2", "--no-progress", *argv)
        assert code == 2, (argv, out, err)
        assert len(_lines(err)) == 1 and err.startswith("error: ") and "vLLM is not installed" in err
    if importlib.util.find_spec("sglang") is None and not os.environ.get("SERVETUNE_SGLANG_PYTHON"):
        code, _, err = run_cli("tune", str(p), "--trials", "2", "--no-progress", "--backend", "sglang")
        assert code == 2 and len(_lines(err)) == 1 and "SGLang is not installed" in err
    assert not (project / ".servetune" / "optuna.journal").exists()  # nothing stored: the default trial stays


def test_a_live_study_of_conversations_on_sglang_fails_before_any_trial(write_study, run_cli, project, monkeypatch):
    """The live replay sends multi-turn sessions to vLLM only (the next prompt is built from the
    generated token ids vLLM returns): on SGLang one line, exit 2, nothing stored."""
    chat = {"spec": {"schema_version": 1, "synthetic": {"duration_s": 30, "rate": 1, "prompt": 200, "output": 20,
                                                          "session": {"turns": 3, "think_s": 2}}}}
    p = write_study(name="chat", workload=chat)
    monkeypatch.setenv("SERVETUNE_SGLANG_PYTHON", sys.executable)  # (an interpreter is found; no server starts)
    for argv in (["--backend", "sglang"], ["--verify-top", "1", "--verify-backend", "sglang"]):
        code, out, err = run_cli("tune", str(p), "--trials", "2", "--no-progress", *argv)
        assert code == 2 and len(_lines(err)) == 1, (argv, out, err)
        assert "multi-turn sessions: the live replay sends conversations to vLLM only" in err
    assert not (project / ".servetune" / "optuna.journal").exists()


def test_concurrent_tunes_on_a_fresh_sqlite_storage(write_study, project, stored):
    p = write_study(name="race", search=WIDE)
    url = f"sqlite:///{project / 'fresh.db'}"
    cmd = [*CLI, "tune", str(p), "--trials", "6", "--storage", url, "--no-progress", "--mlflow-logger", "inline"]
    procs = [subprocess.Popen(cmd, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"}) for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    trials = stored("race", url).get_trials()
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
