"""Workloads: the requests a backend serves, from real traces or synthetic specs."""

from workloads.workload import DEFAULT_SLO, SCHEMA_VERSION, SLOClass, Workload, build_workload

__all__ = ["DEFAULT_SLO", "SCHEMA_VERSION", "SLOClass", "Workload", "build_workload"]
