"""Find the Python interpreter that has vLLM, and check flags with vLLM's own parser.

vLLM lives in its own virtual environment (``scripts/setup_vllm_cpu.sh``) so its pins do not
fight servetune's; servetune runs that interpreter as a subprocess and talks HTTP to it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV_VAR = "SERVETUNE_VLLM_PYTHON"
NOT_INSTALLED = "vLLM is not installed: run scripts/setup_vllm_cpu.sh (or set SERVETUNE_VLLM_PYTHON)"


class EngineError(RuntimeError, ValueError):
    """The engine could not start, died, or is not installed (the trial fails, the study goes on).

    Also a ValueError, the tuner's "backend refused this trial" signal, so a study records the
    trial as failed with the first line of this message and goes on."""


def _imports_vllm(python: str) -> bool:
    if python == sys.executable:
        import importlib.util

        return importlib.util.find_spec("vllm") is not None
    return Path(python).is_file() and os.access(python, os.X_OK)


def find_vllm_python() -> str:
    """``$SERVETUNE_VLLM_PYTHON``, else ``<repo>/.venv-vllm/bin/python``, else this interpreter
    if it can import vllm. Raises EngineError naming the setup script otherwise."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        if not Path(explicit).is_file():
            raise EngineError(f"{ENV_VAR}={explicit}: no such file ({NOT_INSTALLED})")
        return explicit
    venv = REPO / ".venv-vllm" / "bin" / "python"
    if venv.is_file():
        return str(venv)
    if _imports_vllm(sys.executable):
        return sys.executable
    raise EngineError(NOT_INSTALLED)


def vllm_available() -> str | None:
    """The vLLM interpreter, or None when there is none (for skips and CLI messages)."""
    try:
        return find_vllm_python()
    except EngineError:
        return None


_CHECK = r"""
import contextlib, io, json, sys
arg_lists = json.loads(sys.stdin.read())
try:
    from vllm.utils.argparse_utils import FlexibleArgumentParser
except ImportError:  # older layouts
    from vllm.utils import FlexibleArgumentParser
try:  # vLLM >= 0.2x moved the server CLI
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
except ImportError:
    from vllm.entrypoints.openai.cli_args import make_arg_parser, validate_parsed_serve_args
results = []
for args in arg_lists:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
            validate_parsed_serve_args(parser.parse_args(args))
        results.append(None)
    except SystemExit:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        msg = lines[-1] if lines else "rejected"
        results.append(msg.split("error: ", 1)[-1])
    except Exception as e:  # validation errors
        results.append(f"{type(e).__name__}: {e}")
print("RESULTS " + json.dumps(results))
"""


def check_vllm_args_many(arg_lists: Sequence[Sequence[str]], *, python: str | None = None,
                         timeout_s: float = 180.0) -> list[str | None]:
    """Parse several argv lists with the installed vLLM's server parser in ONE subprocess
    (importing vLLM takes seconds). Returns, per list, None when accepted or vLLM's message."""
    import json

    py = python or find_vllm_python()
    env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "ERROR"}
    proc = subprocess.run([py, "-c", _CHECK], input=json.dumps([list(a) for a in arg_lists]),
                          capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULTS "):
            return json.loads(line[len("RESULTS "):])
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    if any("No module named 'vllm'" in ln for ln in lines):
        raise EngineError(NOT_INSTALLED)
    raise EngineError(f"checking flags with vLLM failed: {(lines or ['no output'])[-1]}")


def check_vllm_args(args: Sequence[str], *, python: str | None = None, timeout_s: float = 180.0) -> None:
    """Parse ``args`` (argv after the module) with the installed vLLM's own server parser.

    Raises ValueError with the parser's message when vLLM rejects them, EngineError when vLLM
    is not installed. Takes a few seconds (it imports vLLM).
    """
    (msg,) = check_vllm_args_many([args], python=python, timeout_s=timeout_s)
    if msg is not None:
        raise ValueError(f"vLLM rejects the flags: {msg}")
