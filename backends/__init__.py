"""Backends: the simulator (``backends.sim``) and live engines (``backends.live``)."""

from backends.base import RECORD_COLUMNS, Backend, Deployment, RunResult, Telemetry, empty_records

__all__ = ["RECORD_COLUMNS", "Backend", "Deployment", "RunResult", "Telemetry", "empty_records"]
