"""The one contract every backend keeps: ``run(policy, workload, deployment) -> RunResult``.

A RunResult holds one record per request (times in seconds from the workload start) plus
backend telemetry. The scorecard (``tuner.scorecard.score``) is computed from it by one
function for every backend, so simulated and live trials compare directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from backends.itl import ITLHistogram
from tuner.policy import Policy
from workloads.workload import Workload

RECORD_COLUMNS: dict[str, str] = {
    "req_id": "int64",          # index of the request in the workload
    "arrival_s": "float64",     # arrival, s from workload start
    "first_token_s": "float64", # first output token, s (NaN if none)
    "finish_s": "float64",      # last output token, s (NaN if not finished)
    "prompt_len": "int64",      # prompt tokens
    "output_len": "int64",      # output tokens actually produced
    "tenant": "object",         # tenant name
    "slo_class": "object",      # SLO class name
    "ttft_slo_ms": "float64",   # the request's TTFT target, ms
    "tpot_slo_ms": "float64",   # the request's TPOT target, ms
    "rejected": "bool",         # refused by admission control (never served)
    "failed": "bool",           # errored / timed out / lost (live) or dropped (sim)
    "preemptions": "int64",     # times this request was preempted
    "cached_tokens": "int64",   # prompt tokens served from the prefix cache
    "replica": "int64",         # instance that served it (-1 if none)
}


COST_MODELS = ("auto", "terms")
"""``Deployment.cost_model`` values (``backends.sim.profiled.instance_cost_model``)."""


@dataclass(frozen=True, slots=True)
class Deployment:
    """Where the workload is served: model and GPU by catalog name (or a path to a
    Hugging Face ``config.json`` / a GPU YAML), how many GPUs, and the engine preset."""

    model: str
    gpu: str
    n_gpus: int = 1
    engine: str = "vllm-v1"
    max_model_len: int = 0
    """Context limit, tokens (0 = the model's own)."""
    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    profile: str = "none"
    """Calibration profile of the simulator's cost model (``backends.sim.profiled.instance_cost_model``):
    a profile file (``servetune calibrate``), a shared table (vidur, splitwise, sarathi, shared)
    or "none" (the default: the roofline fitted to real vLLM V1 runs, see docs/calibration.md);
    used where it measured this (model, GPU, TP), the roofline elsewhere. Live backends ignore it."""
    cost_model: str = "auto"
    """How the simulator prices a step: "auto" (the default: ``profile`` where it measured this
    (model, GPU, TP), the roofline elsewhere) or "terms" (``backends.sim.termcost.TermsCostModel``:
    operator-class terms fitted to the batch rows of ``profile``, of the Splitwise table when
    ``profile`` is "none"; they carry the launch floor of the engine those rows were measured
    on). Live backends ignore it."""
    calibration: str = ""
    """Calibration file of the simulator (``servetune calibrate --live``: efficiencies, CPU
    overheads and client lag fitted to a live run; ``backends.sim.calibrated``); "" = none. It
    prices steps with the roofline, so it excludes ``profile`` and ``cost_model: terms``. Live
    backends ignore it."""

    def __post_init__(self) -> None:
        if self.cost_model not in COST_MODELS:
            raise ValueError(f"deployment cost_model={self.cost_model!r}: must be auto or terms")
        if self.calibration and self.profile not in ("", "none"):
            raise ValueError(f"deployment calibration and profile={self.profile!r}: give one (the calibration was "
                             "fitted on the roofline, not on a profile's operator curves)")
        if self.calibration and self.cost_model != "auto":
            raise ValueError(f"deployment calibration and cost_model={self.cost_model!r}: a calibration prices "
                             "steps with the roofline (cost_model auto)")
        if self.n_gpus < 1:
            raise ValueError(f"deployment n_gpus={self.n_gpus}: must be >= 1")
        for k in ("weight_dtype", "kv_dtype"):
            if getattr(self, k) not in ("bf16", "fp16", "fp8"):
                raise ValueError(f"deployment {k}={getattr(self, k)!r}: must be bf16, fp16 or fp8")


@dataclass(frozen=True, slots=True)
class Telemetry:
    """Backend telemetry for one run.

    Scalars are totals over the run; ``timeline`` samples state over time with columns
    t_s, kv_used_frac, running, waiting, batch_tokens (any subset a backend can give).
    ``counters`` holds named totals, e.g. preemptions, swapped_blocks, prefix_query_tokens,
    prefix_hit_tokens, spec_draft_tokens, spec_accepted_tokens, offload_bytes,
    kv_allocated_slot_s, kv_used_slot_s (slot-seconds, for fragmentation),
    iterations, batch_size_sum.
    """

    makespan_s: float
    busy_s: float = 0.0
    """Summed busy time of all instances, s."""
    n_gpus: int = 1
    instances: int = 1
    flops: float = 0.0
    """Model FLOPs executed (all GPUs)."""
    hbm_bytes: float = 0.0
    """HBM bytes moved (all GPUs)."""
    peak_flops_per_gpu: float = 0.0
    peak_hbm_bytes_s_per_gpu: float = 0.0
    offload_bytes: float = 0.0
    offload_bytes_s_capacity: float = 0.0
    """Peak offload link bandwidth of the deployment, bytes/s (0 = no tier)."""
    kv_capacity_tokens: int = 0
    gpu_hour_usd: float = 0.0
    spot_gpu_hour_usd: float = 0.0
    spot_fraction: float = 0.0
    interruptions: int = 0
    timeline: pd.DataFrame | None = None
    counters: Mapping[str, float] = field(default_factory=dict)
    itl: ITLHistogram | None = None
    """Inter-token latencies of all requests (``backends.itl``; None: the backend saw no token gaps)."""


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a backend returns: per-request records, telemetry, and the policy in force."""

    records: pd.DataFrame
    telemetry: Telemetry
    policy: Policy
    """The effective policy: knobs the backend could not honour are set to what it did."""
    backend: str
    notes: tuple[str, ...] = ()
    """Fallbacks and knobs not honoured, one line each."""
    meta: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = set(RECORD_COLUMNS) - set(self.records.columns)
        if missing:
            raise ValueError(f"RunResult records miss columns {sorted(missing)}")


def empty_records(workload: Workload) -> pd.DataFrame:
    """Records for every request of ``workload`` with nothing served yet (times NaN)."""
    n = workload.n
    nan = np.full(n, np.nan)
    return pd.DataFrame(
        {
            "req_id": np.arange(n, dtype=np.int64),
            "arrival_s": workload.arrival_s.astype(np.float64),
            "first_token_s": nan,
            "finish_s": nan.copy(),
            "prompt_len": workload.prompt_len.astype(np.int64),
            "output_len": np.zeros(n, np.int64),
            "tenant": np.asarray(workload.tenants, dtype=object)[workload.tenant],
            "slo_class": np.asarray([c.name for c in workload.slo_classes], dtype=object)[workload.slo_class],
            "ttft_slo_ms": workload.ttft_slo_ms(),
            "tpot_slo_ms": workload.tpot_slo_ms(),
            "rejected": np.zeros(n, bool),
            "failed": np.zeros(n, bool),
            "preemptions": np.zeros(n, np.int64),
            "cached_tokens": np.zeros(n, np.int64),
            "replica": np.full(n, -1, np.int64),
        }
    )


class Backend(Protocol):
    """A way to serve a workload under a policy."""

    name: str

    def run(self, policy: Policy, workload: Workload, deployment: Deployment, *, seed: int = 0) -> RunResult: ...
