"""Workloads: the requests a backend serves, from real traces or synthetic specs.

Public API: ``load_workload`` (bundled name or file), the transforms (``scale_to_rate``,
``scale_rate``, ``first_n``, ``first_at_rate``, ``window``, ``cap_context``, ``set_max_output``, ``assign_slo``,
``set_priority``, ``assign_adapters``), the synthetic generators (``generate_mix``, ``poisson``, ``Tenant``,
``Arrival``, ``Lengths``), ``read_requests`` / ``write_workload`` and ``workload_stats``.
"""

from workloads.adapters import assign_adapters
from workloads.files import read_requests, write_workload
from workloads.registry import BUNDLED, bundled_names, load_cut, load_lengths, load_workload
from workloads.stats import workload_stats
from workloads.synthetic import Arrival, Lengths, Tenant, generate_mix, poisson
from workloads.transforms import (
    assign_slo,
    cap_context,
    first_at_rate,
    first_n,
    scale_rate,
    scale_to_rate,
    set_max_output,
    set_priority,
    set_slo_classes,
    window,
)
from workloads.workload import DEFAULT_SLO, SCHEMA_VERSION, SLOClass, Workload, build_workload

__all__ = [
    "BUNDLED",
    "DEFAULT_SLO",
    "SCHEMA_VERSION",
    "Arrival",
    "Lengths",
    "SLOClass",
    "Tenant",
    "Workload",
    "assign_adapters",
    "assign_slo",
    "build_workload",
    "bundled_names",
    "cap_context",
    "first_at_rate",
    "first_n",
    "generate_mix",
    "load_cut",
    "load_lengths",
    "load_workload",
    "poisson",
    "read_requests",
    "scale_rate",
    "scale_to_rate",
    "set_max_output",
    "set_priority",
    "set_slo_classes",
    "window",
    "workload_stats",
    "write_workload",
]
