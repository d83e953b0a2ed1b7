"""Shared helpers for the workloads tests: the shared original data (optional) and a CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import typer

SHARED_TRACES = Path(os.environ.get("SERVETUNE_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")) / "traces"


@pytest.fixture
def shared_traces() -> Path:
    """The shared original traces (../shared/data/traces); tests using it skip when it is absent."""
    if not SHARED_TRACES.is_dir():
        pytest.skip(f"shared data not found at {SHARED_TRACES}")
    return SHARED_TRACES


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run ``servetune workloads ...`` through cli.main (the real error handling) with only the
    workloads commands registered; returns (exit code, stdout, stderr)."""
    import cli
    from workloads.commands import register

    app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)

    @app.callback()
    def _root() -> None:
        """root"""

    register(app)
    monkeypatch.setattr(cli, "app", app)
    monkeypatch.delenv("SERVETUNE_DEBUG", raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        code = 0
        try:
            cli.main(["workloads", *map(str, args)])
        except SystemExit as e:
            code = int(e.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
