"""Preset study files shipped with servetune (the seed's decision matrix).

``latency-critical``, ``throughput-heavy``, ``cost-sensitive``, ``fairness-critical``; each
YAML explains its ranges and objectives in comments. ``servetune tune latency-critical`` runs
one by name; copy a file to change it.
"""

from __future__ import annotations

from pathlib import Path

PRESETS = ("latency-critical", "throughput-heavy", "cost-sensitive", "fairness-critical")
_DIR = Path(__file__).resolve().parent


def preset_names() -> tuple[str, ...]:
    """Names of the bundled preset studies."""
    return tuple(sorted(p.stem for p in _DIR.glob("*.yaml")))


def preset_path(name: str) -> Path:
    """The file of a bundled preset study; ValueError naming the presets when unknown."""
    p = _DIR / f"{name}.yaml"
    if not p.is_file():
        raise ValueError(f"study {name!r}: no such file and not a preset (presets: {', '.join(preset_names())})")
    return p
