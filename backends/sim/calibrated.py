"""The simulator's use of a calibration file (``servetune calibrate --live``).

``Deployment.calibration`` names the file ("" = none); ``simulate --calibration FILE`` and a
study's ``deployment: {calibration: FILE}`` set it, and everything that takes a Deployment
carries it (live backends ignore it, as they ignore ``profile``). The simulator reads it in two
places, so a single run, a tune trial, replicas and P/D pools all use it:

* ``engine.Simulation`` → ``profiled.instance_cost_model(..., calibration=...)``: the roofline
  with the calibration's efficiencies (incl. ``overhead_scale``, ``seq_overhead_s``,
  ``prefill_overhead_s``), its source naming the file;
* ``client_lag.deployment_client_lag``: the calibration's client lag (``lag_steps``, ``lag_s``)
  in place of the engine preset's.

A calibration fitted for another model, GPU or engine preset is refused (one-line ValueError):
its overheads and efficiencies describe that hardware and engine only, and a trial scored with
them would look calibrated without being so.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from backends.base import Deployment


def with_calibration(deployment: Deployment, path: str | Path | None) -> Deployment:
    """``deployment`` using calibration file ``path`` (checked: it reads, and it was fitted for this
    model, GPU and engine; one-line ValueError otherwise); ``deployment`` itself for None / ""."""
    if not path:
        return deployment
    dep = replace(deployment, calibration=str(Path(path).expanduser()))
    check_calibration(dep)
    return dep


def calibration_of(deployment: Deployment) -> Any:
    """The ``tuner.calibration.calfile.CalibrationFile`` a deployment names, or None."""
    if not deployment.calibration:
        return None
    from tuner.calibration.calfile import load_calibration

    return load_calibration(deployment.calibration)


def check_calibration(deployment: Deployment) -> None:
    """One-line ValueError when the deployment's calibration cannot be read or was fitted for
    another model, GPU or engine preset (before a study spends trials on it)."""
    cf = calibration_of(deployment)
    if cf is not None:
        from backends.sim.catalog import get_gpu, get_model

        cf.check_matches(get_model(deployment.model), get_gpu(deployment.gpu), deployment.engine)


__all__ = ["calibration_of", "check_calibration", "with_calibration"]
