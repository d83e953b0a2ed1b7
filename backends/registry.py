"""Backends by name: ``get_backend("sim" | "vllm" | "sglang") -> Backend`` (imported lazily)."""

from __future__ import annotations

import importlib
from typing import Any

BACKENDS: dict[str, tuple[str, str, str]] = {
    "sim": ("backends.sim", "SimBackend", "the simulator (always available)"),
    "vllm": ("backends.live.vllm", "VLLMBackend", "a live vLLM engine (pip install vllm)"),
    "sglang": ("backends.live.sglang", "SGLangBackend", "a live SGLang engine (pip install 'sglang[all]')"),
}


def backend_names() -> tuple[str, ...]:
    return tuple(BACKENDS)


def get_backend(name: str, **kwargs: Any) -> Any:
    """A new backend instance; ValueError naming the choices when ``name`` is unknown, or naming
    what to install when a live engine (or its servetune module) is missing."""
    key = name.strip().lower()
    if key not in BACKENDS:
        raise ValueError(f"backend {name!r}: unknown (choose one of {', '.join(BACKENDS)})")
    module, cls, what = BACKENDS[key]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"backend {key!r} is not available: {e.name or e} is not installed ({what})") from None
    try:
        factory = getattr(mod, cls)
    except AttributeError:
        raise ValueError(f"backend {key!r} is not available: {module} has no {cls} yet") from None
    return factory(**kwargs)
