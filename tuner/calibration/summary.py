"""``fidelity_summary``: one paragraph for a study report — the cost model in force and its
measured out-of-sample error on that hardware (numbers from ``data/fidelity.yaml``, written by
``benchmarks/bench_trainval.py --write`` and ``servetune fidelity``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

FIDELITY_FILE = Path(__file__).parent / "data" / "fidelity.yaml"


def _measured() -> dict[str, Any]:
    if not FIDELITY_FILE.is_file():
        return {}
    return yaml.safe_load(FIDELITY_FILE.read_text()) or {}


def fidelity_summary(model: str, gpu: str, tp: int = 1, *, engine: str = "vllm-v1", profile: str = "none",
                     weight_dtype: str = "bf16", kv_dtype: str = "bf16", cost_model: str = "auto") -> str:
    """What cost model the simulator uses for (model, gpu, tp) under ``profile`` and ``cost_model``
    (as ``Deployment``: ``backends.sim.profiled.instance_cost_model``) and how accurate it
    measured on that GPU (out of sample), in plain sentences; says so when nothing was measured
    there."""
    from backends.sim.catalog import get_gpu, get_model
    from backends.sim.engines import get_engine
    from backends.sim.profiled import instance_cost_model

    cm = instance_cost_model(get_model(model), get_gpu(gpu), tp, weight_dtype, kv_dtype, get_engine(engine), profile,
                             cost_model)
    g = cm.gpu.name
    lines = [f"Cost model for {cm.model.name} on {tp}x {g} ({cm.engine.name}): {cm.source}."]
    meas = _measured().get("gpus", {})
    entries = meas.get(g, [])
    if not entries:
        known = ", ".join(sorted(meas)) or "none"
        lines.append(f"No measurements on {g}: its error is UNKNOWN (measured GPUs: {known}); "
                     "calibrate it (servetune calibrate) or treat predictions as rough.")
    for e in entries:
        lines.append(f"Measured on {g}, {e['table']} ({e['evaluation']}): " + ", ".join(
            f"{k} median {v[0]:.1f}% / p90 {v[1]:.1f}%" for k, v in e["errors"].items()) + ".")
    return " ".join(lines)


__all__ = ["FIDELITY_FILE", "fidelity_summary"]
