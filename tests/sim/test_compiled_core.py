"""The simulator core that ``pip install .`` compiles with mypyc (setup.py ``COMPILED``) must
type-check: mypyc refuses modules with type errors, and the install would silently fall back to
pure Python (half the speed)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _compiled_modules() -> list[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "COMPILED":
            names = [e.value for e in node.value.generators[0].iter.elts]  # [f"backends/sim/{m}.py" for m in (...)]
            return [f"backends/sim/{m}.py" for m in names]
    raise AssertionError("setup.py has no COMPILED list")


def test_the_compiled_modules_type_check():
    pytest.importorskip("mypy")
    mods = _compiled_modules()
    assert "backends/sim/engine.py" in mods and all((ROOT / m).is_file() for m in mods)
    out = subprocess.run([sys.executable, "-m", "mypy", *mods], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]
