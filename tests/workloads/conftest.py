"""Shared helpers for the workloads tests: the shared original data (optional) and a CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_TRACES = Path(os.environ.get("SERVETUNE_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")) / "traces"


@pytest.fixture
def shared_traces() -> Path:
    """The shared original traces (../shared/data/traces); tests using it skip when it is absent."""
    if not SHARED_TRACES.is_dir():
        pytest.skip(f"shared data not found at {SHARED_TRACES}")
    return SHARED_TRACES


@pytest.fixture
def run_cli(cli_with):
    """Run ``servetune workloads ...`` with only the workloads commands registered."""
    from workloads.commands import register

    return cli_with(register, "workloads")
