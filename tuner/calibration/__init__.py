"""Calibration and fidelity: profiles of measured timings, fitted cost models, and how well the
simulator predicts real engines (docs/calibration.md).

    from tuner.calibration import read_profile, ProfileFit, fidelity_summary
    from backends.sim.profiled import cost_model_for
"""

from __future__ import annotations

from tuner.calibration.fit import ProfileFit
from tuner.calibration.profile import (
           COLUMNS,
           OPS,
           SCHEMA_VERSION,
           read_profile,
           shared_profile,
           write_profile,
)
from tuner.calibration.summary import fidelity_summary

__all__ = ["COLUMNS", "OPS", "SCHEMA_VERSION", "ProfileFit", "fidelity_summary", "read_profile", "shared_profile",
           "write_profile"]
