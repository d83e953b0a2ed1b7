"""Live tests need the vLLM venv (scripts/setup_vllm_cpu.sh); they skip with that reason otherwise."""

from __future__ import annotations

import pytest

from backends.live.vllm_python import vllm_available


@pytest.fixture(scope="session")
def vllm_python() -> str:
    py = vllm_available()
    if py is None:
        pytest.skip("vLLM is not installed: run scripts/setup_vllm_cpu.sh (or set SERVETUNE_VLLM_PYTHON)")
    return py


@pytest.fixture(scope="session")
def tiny_model(vllm_python, tmp_path_factory) -> str:
    from backends.live.tiny_model import ensure_tiny_model

    return str(ensure_tiny_model(tmp_path_factory.mktemp("models"), python=vllm_python))


@pytest.fixture
def run_cli(cli_with):
    """Run ``servetune engine ...`` with only the engine commands registered (no engine needed)."""
    from backends.live.commands import register

    return cli_with(register, "engine")
