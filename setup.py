"""Build hook: compile the simulator's event loop with mypyc (pure Python when that cannot be done).

``pip install .`` builds a wheel whose hot simulator modules (``COMPILED``) are C extensions
made by mypyc from the same Python source: the results are identical, the event loop runs
~2x faster (docs/primitives.md, "Simulator speed"). Everything else in ``pyproject.toml``.

Pure Python instead, with the same behaviour:
  * an editable install (``pip install -e .``: the source you edit is what runs);
  * ``SERVETUNE_PURE_PYTHON=1 pip install .``;
  * automatically, when mypyc or a C compiler is missing or the compile fails (the extensions
    are optional; pip prints the reason).
Offline, ``pip install --no-build-isolation .`` builds with the environment's setuptools (and
mypy, if installed; else pure Python) instead of fetching them.
In a checkout, ``python setup.py build_ext --inplace`` (needs ``pip install mypy``) puts the
compiled modules next to their sources, which Python then prefers (benchmarks, CI); delete
``backends/sim/*.so`` to go back to the source.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

COMPILED = [f"backends/sim/{m}.py" for m in (
    "engine", "arrivals", "scheduler", "batching", "request_state", "memory", "queue", "fairness", "lora",
    "speculation", "itl_counter")]
"""The event loop and the state it touches on every step (they type-check under mypy)."""

BUILD_COMMANDS = {"bdist_wheel", "build", "build_ext", "install"}


def ext_modules() -> list:
    if os.environ.get("SERVETUNE_PURE_PYTHON") == "1" or "editable_wheel" in sys.argv \
            or not BUILD_COMMANDS & set(sys.argv[1:]):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("servetune: mypyc is not installed: pure Python build", file=sys.stderr)
        return []
    try:
        exts = mypycify(COMPILED, opt_level="3", group_name="backends.sim.core")  # (the shared lib inside the package)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - a type error or a mypyc failure: keep pure Python
        print(f"servetune: mypyc failed ({e}): pure Python build", file=sys.stderr)
        return []
    for ext in exts:
        ext.optional = True  # no C compiler, or it fails: the .py modules are used
    return exts


setup(ext_modules=ext_modules())
