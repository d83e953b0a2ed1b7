"""The calibration file: an ``EngineCalibration`` fitted to a live run, and what it was fitted on.

YAML, versioned by its first key (docs/calibration.md, "Calibration file")::

    servetune_calibration: 1          # format version (this module reads 1)
    calibration: {efficiency: {...}, lag_steps: 0.5, lag_s: 0.015, share: as-given, kv_mem: 0.0}
    fitted_on:
      model: tiny-llama               # as given; model_name / model_shape: what it resolved to
      gpu: cpu                        # as given; gpu_name: the catalog GPU it resolved to
      engine: vllm-v1
      tp: 1
      policy: {...}                   # the run's policy (every knob)
      workload: {name: azure-conv, n: 80, hash: 1a2b..., source: azure-conv, first: 80, rate: 4.0, seed: 0}
      records: tiny.records.parquet   # relative to this file when beside it
    params: [overhead_scale, seq_overhead_s, lag_s]
    fit: {measured_ms: {ttft, e2e, tpot}, simulated_ms: {...}, error_pct: {...}}
    check: {...}                      # optional: the same for a second run (out of sample)

``write_calibration`` writes atomically (temp file + rename); ``read_calibration`` raises a
one-line ValueError naming the file; ``load_calibration`` caches by (path, mtime, size) so a
study's thousands of simulations read the file once.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from tuner.calibration.engine_fit import EngineCalibration

CALIBRATION_VERSION = 1
KEY = "servetune_calibration"
METRICS = ("ttft", "e2e", "tpot")
SHAPE_KEYS = ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab", "head_dim", "n_experts", "moe_ffn")


@dataclass(frozen=True, slots=True)
class CalibrationFile:
    """A fitted ``EngineCalibration`` and where it holds: the (model, GPU, engine) it was fitted on."""

    calibration: EngineCalibration
    model: str
    """The model as given (catalog name, config.json or model folder)."""
    model_name: str
    """The name the model resolved to (``ModelSpec.name``)."""
    model_shape: Mapping[str, int]
    """The architecture (``SHAPE_KEYS``): a model of another name but these shapes matches."""
    gpu: str
    gpu_name: str
    """The catalog GPU ``gpu`` resolved to (an alias such as cpu-host resolves to cpu)."""
    engine: str
    tp: int = 1
    policy: Mapping[str, Any] = field(default_factory=dict)
    workload: Mapping[str, Any] = field(default_factory=dict)
    records: str = ""
    params: tuple[str, ...] = ()
    fit: Mapping[str, Any] = field(default_factory=dict)
    check: Mapping[str, Any] | None = None
    path: str = ""
    """Where it was read from ("" before it is written)."""

    @property
    def label(self) -> str:
        """How notes name it: the file name, and what it was fitted on."""
        where = Path(self.path).name if self.path else "(unsaved)"
        w = self.workload.get("name")
        run = f"; fitted on {w}, {self.workload.get('n', '?')} requests" if w else ""
        return f"{where} ({self.model_name} on {self.gpu_name} tp{self.tp}, {self.engine}{run})"

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {KEY: CALIBRATION_VERSION, "calibration": self.calibration.to_dict(),
                               "fitted_on": {"model": self.model, "model_name": self.model_name,
                                             "model_shape": dict(self.model_shape), "gpu": self.gpu,
                                             "gpu_name": self.gpu_name, "engine": self.engine, "tp": self.tp,
                                             "policy": dict(self.policy), "workload": dict(self.workload),
                                             "records": self.records},
                               "params": list(self.params), "fit": _plain(self.fit)}
        if self.check is not None:
            doc["check"] = _plain(self.check)
        return doc

    def mismatch(self, model, gpu, engine: str) -> str:
        """Why this calibration does not hold for (``model``: ModelSpec, ``gpu``: GPUSpec,
        ``engine``), "" when it does: same model (name or architecture), same catalog GPU, same
        engine preset."""
        from backends.sim.engines import get_engine

        if model.name != self.model_name and model_shape(model) != dict(self.model_shape):
            return f"model {model.name}"
        if _catalog_gpu(gpu.name) != _catalog_gpu(self.gpu_name):
            return f"gpu {gpu.name}"
        if get_engine(engine).name != get_engine(self.engine).name:
            return f"engine {engine}"
        return ""

    def check_matches(self, model, gpu, engine: str) -> None:
        """One-line ValueError when the calibration was fitted for another model, GPU or engine."""
        why = self.mismatch(model, gpu, engine)
        if why:
            raise ValueError(f"calibration {self.path or '(unsaved)'} was fitted for {self.model_name} on "
                             f"{self.gpu_name} ({self.engine}), not for {why}: its efficiencies and overheads "
                             "hold for that model and hardware only (fit one for this deployment with "
                             "servetune calibrate --live)")


def model_shape(model) -> dict[str, int]:
    return {k: int(getattr(model, k)) for k in SHAPE_KEYS}


def _catalog_gpu(name: str) -> str:
    from backends.sim.profiled import _catalog_gpu as resolve

    return resolve(name)


def _plain(x: Any) -> Any:
    """Plain YAML types (floats, lists, dicts) from numpy / tuples."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if hasattr(x, "item"):
        return x.item()
    return x


def means_dict(means) -> dict[str, float]:
    """(TTFT, E2E, TPOT) → {ttft, e2e, tpot}, ms."""
    return {k: float(v) for k, v in zip(METRICS, means, strict=True)}


def write_calibration(cf: CalibrationFile, path: str | Path) -> Path:
    """Write ``cf`` to ``path`` atomically (a temp file in the same folder, then rename)."""
    path = Path(path)
    text = "# servetune engine calibration (docs/calibration.md, 'Calibration file')\n" + \
        yaml.safe_dump(cf.to_dict(), sort_keys=False)
    atomic_write(path, lambda f: f.write(text.encode()))
    return path


def atomic_write(path: Path, write) -> None:
    """``write(binary file)`` into a temp file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_calibration(path: str | Path) -> CalibrationFile:
    """A calibration file; one-line ValueError (naming the file) for anything else."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"calibration {p}: no such file (servetune calibrate --live writes one)")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"calibration {p}{line}: not YAML ({getattr(e, 'problem', None) or type(e).__name__})") from None
    if not isinstance(doc, Mapping) or KEY not in doc:
        raise ValueError(f"calibration {p}: not a servetune calibration file (no '{KEY}: {CALIBRATION_VERSION}' key; "
                         "servetune calibrate --live writes one)")
    v = doc[KEY]
    if v != CALIBRATION_VERSION:
        raise ValueError(f"calibration {p}: {KEY}: {v!r} is not a version this servetune reads "
                         f"({CALIBRATION_VERSION})")
    try:
        on = doc["fitted_on"]
        cal = EngineCalibration.from_dict(doc["calibration"])
        shape = {k: int(on["model_shape"][k]) for k in SHAPE_KEYS}
        return CalibrationFile(cal, str(on["model"]), str(on["model_name"]), shape, str(on["gpu"]),
                               str(on["gpu_name"]), str(on["engine"]), int(on.get("tp", 1)),
                               dict(on.get("policy") or {}), dict(on.get("workload") or {}),
                               str(on.get("records") or ""), tuple(doc.get("params") or ()),
                               dict(doc.get("fit") or {}), doc.get("check"), str(p))
    except KeyError as e:
        raise ValueError(f"calibration {p}: missing key {e.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"calibration {p}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


@lru_cache(maxsize=8)
def _cached(path: str, stamp: tuple[int, int]) -> CalibrationFile:
    return read_calibration(path)


def load_calibration(path: str | Path) -> CalibrationFile:
    """``read_calibration``, cached per (resolved path, mtime, size): an edited file is read again."""
    p = Path(path).expanduser()
    if not p.is_file():
        return read_calibration(p)  # the one-line error
    st = p.stat()
    return _cached(str(p.resolve()), (st.st_mtime_ns, st.st_size))


__all__ = ["CALIBRATION_VERSION", "CalibrationFile", "load_calibration", "means_dict", "model_shape",
           "read_calibration", "write_calibration"]
