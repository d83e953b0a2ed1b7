"""The Policy record: every scheduling knob servetune can search, in one frozen record.

Each field documents its unit and bounds where it is declared. ``Policy()`` is vLLM V1's
default behaviour (chunked prefill, prefix caching, FCFS, recompute preemption), which every
study enqueues first so reports show the gain over defaults.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

POLICY_SCHEMA_VERSION = 1

Batching = Literal["static", "continuous", "chunked", "decode_maximal"]
QueueOrder = Literal["fcfs", "sjf", "sjf_output", "priority", "edf", "vtc"]
Preemption = Literal["token", "request"]
PreemptionMode = Literal["recompute", "swap"]
AdmissionAction = Literal["reject", "defer"]
Speculation = Literal["off", "ngram", "draft"]
Routing = Literal["round_robin", "least_loaded", "prefix_affinity"]
KVLink = Literal["nvlink", "network"]
SpotRecovery = Literal["migrate", "restart"]


@dataclass(frozen=True, slots=True)
class Policy:
    """One serving policy. All knobs have defaults equal to vLLM V1's behaviour."""

    # ---- batch planner ---------------------------------------------------
    batching: Batching = "chunked"
    """static: fixed batches run to completion; continuous: iteration-level, prefill-first
    (vLLM classic); chunked: Sarathi token budget mixing decodes and prefill chunks (vLLM V1);
    decode_maximal: chunked, but prefill only fills what the decodes leave of the budget."""
    max_num_seqs: int = 256
    """Most sequences running at once (1..4096)."""
    max_num_batched_tokens: int = 2048
    """Token budget per iteration (prefill chunk + decodes), tokens (16..1_048_576)."""
    long_prefill_token_threshold: int = 0
    """Cap on one request's prefill chunk per iteration, tokens (0 = no cap)."""
    tp: int = 1
    """Tensor-parallel degree of each instance (1, 2, 4, 8)."""

    # ---- memory manager --------------------------------------------------
    block_size: int = 16
    """KV-cache block size, tokens (8..256)."""
    gpu_memory_utilization: float = 0.9
    """Fraction of GPU memory for weights + activations + KV (0.1..0.99)."""
    kv_watermark: float = 0.01
    """Free-block fraction kept back when admitting new prefills (0..0.5)."""
    preemption: Preemption = "token"
    """token: allocate KV as tokens grow and preempt at iteration boundaries; request:
    reserve prompt + max output at admission and never preempt."""
    preemption_mode: PreemptionMode = "recompute"
    """What happens to a victim's KV: dropped and recomputed, or swapped to CPU over PCIe."""
    prefix_caching: bool = True
    """Reuse KV blocks of identical prompt prefixes (hash of block contents), LRU eviction."""
    cpu_offload_gb: float = 0.0
    """CPU KV tier per instance, GiB (0 = none): evicted prefix-cache entries are kept and loaded
    back; preemption victims page out to it instead of recomputing (whatever preemption_mode).
    Under vLLM V1 (its offloading connector, ``--kv-offloading-size``) and SGLang (HiCache) every
    computed block is written through to it instead, so a tier smaller than the GPU's prefix cache
    mostly copies it; vLLM V1's victims recompute (unless preemption_mode is swap) and load back
    from the tier what the GPU evicted and the tier still holds."""
    ssd_offload_gb: float = 0.0
    """SSD KV tier per instance, GiB (0 = none); needs a CPU tier."""
    offload_threshold: float = 0.9
    """Paging threshold, fraction of GPU KV blocks: above it cold prefix-cache entries move down a
    tier; paged-out sequences come back only while use stays below it (0.1..1). A tier written
    through (vLLM V1, SGLang) has none (the GPU prefix cache keeps its own LRU): there it is 1."""

    # ---- queue manager and admission -------------------------------------
    queue: QueueOrder = "fcfs"
    """Order of the waiting queue: fcfs, sjf (shortest prompt), sjf_output (shortest
    predicted output), priority (lowest value first), edf (earliest TTFT deadline),
    vtc (virtual token counter fairness)."""
    max_queue_depth: int = 0
    """Admission: act on arrivals when this many requests already wait (0 = unlimited)."""
    min_kv_headroom: float = 0.0
    """Admission: act on arrivals while free KV is below this fraction (0 = off)."""
    ttft_admission: bool = False
    """Admission: act on arrivals whose predicted TTFT exceeds their SLO."""
    admission_action: AdmissionAction = "reject"
    """What admission does to a refused request: reject it, or defer it (retry later)."""
    defer_s: float = 0.5
    """Deferral back-off, seconds."""

    # ---- fairness (VTC) --------------------------------------------------
    vtc_input_weight: float = 1.0
    """VTC cost of one prompt token."""
    vtc_output_weight: float = 2.0
    """VTC cost of one generated token."""
    tenant_weights: tuple[tuple[str, float], ...] = ()
    """Per-tenant share weights for VTC, as (tenant, weight) pairs (missing = 1)."""
    tenant_cap_tokens_s: float = 0.0
    """Per-tenant service cap, weighted tokens/s (0 = none)."""

    # ---- speculative decoding --------------------------------------------
    speculation: Speculation = "off"
    """off, ngram (free prompt-lookup drafter) or draft (a small draft model)."""
    spec_k: int = 4
    """Draft tokens proposed per step (1..16)."""
    spec_dynamic: bool = False
    """Pick k each step from the batch size and the observed acceptance."""
    spec_draft_model: str = ""
    """Catalog name of the draft model (speculation=draft)."""
    spec_acceptance: float = 0.0
    """Per-token acceptance rate α to assume (0 = the workload's or the method's default)."""
    spec_acceptance_by_tenant: tuple[tuple[str, float], ...] = ()
    """Per-tenant acceptance α as (tenant, α) pairs, used when spec_acceptance is 0 (missing
    tenants: the method's default; the simulator runs the workload's request-weighted mean)."""

    # ---- prefill/decode disaggregation -----------------------------------
    disaggregated: bool = False
    """Separate prefill and decode pools."""
    prefill_instances: int = 1
    """Instances in the prefill pool (disaggregated)."""
    decode_instances: int = 1
    """Instances in the decode pool (disaggregated)."""
    disagg_min_prompt: int = 0
    """Only prompts of at least this many tokens go to the prefill pool (0 = all)."""
    disagg_min_queue: int = 0
    """Only disaggregate while the decode pool's queue is at least this deep (0 = always)."""
    prefill_tp: int = 0
    """TP degree of prefill instances (0 = tp)."""
    decode_tp: int = 0
    """TP degree of decode instances (0 = tp)."""
    kv_link: KVLink = "nvlink"
    """Link carrying KV from prefill to decode instances: nvlink (same node) or network."""
    network_gbps: float = 100.0
    """Network bandwidth between nodes for KV transfer and migration, Gbit/s."""

    # ---- placement and scaling -------------------------------------------
    replicas: int = 0
    """Instances behind the router (0 = as many as the deployment's GPUs allow at this TP); vLLM's
    ``--data-parallel-size``, whose ranks share an MoE model's experts (``cluster.expert_sharing_ranks``)."""
    routing: Routing = "round_robin"
    """Router: round_robin, least_loaded (fewest outstanding tokens), prefix_affinity."""
    migration: bool = False
    """Live-migrate running requests from overloaded to idle replicas (Llumnix)."""
    autoscale: bool = False
    """Scale replicas by queue depth (cold start priced)."""
    autoscale_max_replicas: int = 4
    """Most replicas autoscaling may run."""
    autoscale_queue_per_replica: int = 16
    """Scale out when waiting requests per active replica exceed this; in below a quarter of it."""
    cold_start_s: float = 60.0
    """Seconds from a scale-out decision to a new replica serving."""
    spot_fraction: float = 0.0
    """Fraction of replicas on spot instances (0..1)."""
    spot_interruptions_per_hour: float = 0.5
    """Mean interruption rate of one spot replica, 1/h (Poisson)."""
    spot_recovery: SpotRecovery = "migrate"
    """Interrupted work: migrate (KV moved before the grace period ends) or restart elsewhere."""

    # ---- LoRA adapters ---------------------------------------------------
    max_loras: int = 4
    """Most distinct adapters in one batch."""

    schema_version: int = POLICY_SCHEMA_VERSION

    def __post_init__(self) -> None:
        _coerce_and_check(self)
        self.check()

    # ---------------------------------------------------------------- checks
    def check(self) -> None:
        """Raise ValueError naming the knob when values are out of bounds or contradict."""

        def need(cond: bool, knob: str, why: str) -> None:
            if not cond:
                raise ValueError(f"policy knob {knob}={getattr(self, knob)!r}: {why}")

        need(1 <= self.max_num_seqs <= 4096, "max_num_seqs", "must be in 1..4096")
        need(16 <= self.max_num_batched_tokens <= 1_048_576, "max_num_batched_tokens", "must be in 16..1048576")
        need(self.long_prefill_token_threshold >= 0, "long_prefill_token_threshold", "must be >= 0")
        need(self.tp in (1, 2, 4, 8, 16), "tp", "must be 1, 2, 4, 8 or 16")
        need(8 <= self.block_size <= 256 and self.block_size & (self.block_size - 1) == 0,
             "block_size", "must be a power of two in 8..256")
        need(0.05 <= self.gpu_memory_utilization <= 0.99, "gpu_memory_utilization", "must be in 0.05..0.99")
        need(0 <= self.kv_watermark <= 0.5, "kv_watermark", "must be in 0..0.5")
        need(self.cpu_offload_gb >= 0, "cpu_offload_gb", "must be >= 0")
        need(self.ssd_offload_gb >= 0, "ssd_offload_gb", "must be >= 0")
        need(self.ssd_offload_gb == 0 or self.cpu_offload_gb > 0, "ssd_offload_gb", "needs a CPU tier (cpu_offload_gb > 0)")
        need(0.1 <= self.offload_threshold <= 1.0, "offload_threshold", "must be in 0.1..1")
        need(self.max_queue_depth >= 0, "max_queue_depth", "must be >= 0")
        need(0 <= self.min_kv_headroom < 1, "min_kv_headroom", "must be in 0..1")
        need(self.defer_s > 0, "defer_s", "must be > 0")
        need(self.vtc_input_weight >= 0 and self.vtc_output_weight >= 0, "vtc_output_weight", "VTC weights must be >= 0")
        need(all(w > 0 for _, w in self.tenant_weights), "tenant_weights", "weights must be > 0")
        need(self.tenant_cap_tokens_s >= 0, "tenant_cap_tokens_s", "must be >= 0")
        need(1 <= self.spec_k <= 16, "spec_k", "must be in 1..16")
        need(0 <= self.spec_acceptance < 1, "spec_acceptance", "must be in 0..1 (exclusive)")
        need(all(0 < a < 1 for _, a in self.spec_acceptance_by_tenant), "spec_acceptance_by_tenant",
             "each α must be in 0..1 (exclusive)")
        need(self.speculation != "draft" or bool(self.spec_draft_model), "spec_draft_model",
             "speculation=draft needs a draft model")
        need(self.prefill_instances >= 1 and self.decode_instances >= 1, "prefill_instances", "pools need >= 1 instance")
        need(self.disagg_min_prompt >= 0 and self.disagg_min_queue >= 0, "disagg_min_prompt", "must be >= 0")
        need(self.replicas >= 0, "replicas", "must be >= 0")
        need(self.prefill_tp in (0, 1, 2, 4, 8, 16), "prefill_tp", "must be 0, 1, 2, 4, 8 or 16")
        need(self.decode_tp in (0, 1, 2, 4, 8, 16), "decode_tp", "must be 0, 1, 2, 4, 8 or 16")
        need(self.network_gbps > 0, "network_gbps", "must be > 0")
        need(self.autoscale_max_replicas >= 1, "autoscale_max_replicas", "must be >= 1")
        need(self.autoscale_queue_per_replica >= 1, "autoscale_queue_per_replica", "must be >= 1")
        need(self.cold_start_s >= 0, "cold_start_s", "must be >= 0")
        need(self.spot_interruptions_per_hour >= 0, "spot_interruptions_per_hour", "must be >= 0")
        need(0 <= self.spot_fraction <= 1, "spot_fraction", "must be in 0..1")
        need(self.max_loras >= 1, "max_loras", "must be >= 1")
        need(self.schema_version == POLICY_SCHEMA_VERSION, "schema_version",
             f"unsupported (this servetune reads version {POLICY_SCHEMA_VERSION})")
        need(not (self.batching == "static" and self.preemption == "token" and self.preemption_mode == "swap"),
             "preemption_mode", "static batches never preempt; swap needs token-level preemption")

    # --------------------------------------------------------------- helpers
    @property
    def pool_tps(self) -> tuple[int, int]:
        """TP degrees of (prefill, decode) instances when disaggregated (``pool_tps``)."""
        return pool_tps(self.tp, self.prefill_tp, self.decode_tp)

    def replace(self, **changes: Any) -> Policy:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (YAML/JSON/MLflow-safe); tenant_weights becomes a mapping."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in _PAIR_KNOBS:
            out[name] = {k: float(v) for k, v in getattr(self, name)}
        return out

    def diff(self, other: Policy | None = None) -> dict[str, Any]:
        """Knobs whose value differs from ``other`` (default: the vLLM defaults)."""
        base = (other or Policy()).to_dict()
        return {k: v for k, v in self.to_dict().items() if base[k] != v}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """Build from a mapping; unknown knobs are an error naming the knob."""
        if not isinstance(data, Mapping):
            raise ValueError("policy must be a mapping of knob: value")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown policy knob {unknown[0]!r} (known: {', '.join(sorted(known))})")
        return cls(**dict(data))

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            _atomic_write(Path(path), text)
        return text

    @classmethod
    def from_yaml(cls, path: str | Path, base: Policy | None = None) -> Policy:
        """Read a policy YAML (a mapping of knobs, optionally under a top-level ``policy:``);
        knobs the file leaves out keep ``base``'s values (default: ``Policy()``'s)."""
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text())
        except OSError as e:
            raise ValueError(f"cannot read policy file {p}: {e.strerror or e}") from None
        except yaml.YAMLError as e:
            raise ValueError(f"policy file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        if isinstance(data, Mapping) and "policy" in data and isinstance(data["policy"], Mapping):
            data = data["policy"]
        if data is None:
            data = {}
        if base is not None and isinstance(data, Mapping):
            data = {**base.to_dict(), **data}
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"policy file {p}: {e}") from None


def pool_tps(tp: int, prefill_tp: int, decode_tp: int) -> tuple[int, int]:
    """TP degrees of (prefill, decode) instances: ``prefill_tp`` / ``decode_tp``, 0 meaning ``tp``.
    One rule for the simulator, the GPU check and the search space's GPU bounds."""
    return prefill_tp or tp, decode_tp or tp


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


_HINTS: dict[str, Any] = {}
_PAIR_KNOBS = ("tenant_weights", "spec_acceptance_by_tenant")  # (tenant, float) pairs; YAML: a mapping


def knob_types() -> dict[str, Any]:
    """Resolved type hint of every knob (Literal choices, int, float, bool, ...)."""
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(Policy))
    return dict(_HINTS)


def knob_choices(name: str) -> tuple[Any, ...] | None:
    """The allowed values of a Literal knob, or None for a numeric/bool/str knob."""
    hint = knob_types()[name]
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    return None


def _coerce_and_check(p: Policy) -> None:
    """Coerce YAML-ish values (ints for floats, mappings for tenant_weights) and check types."""
    for f in fields(p):
        v = getattr(p, f.name)
        hint = knob_types()[f.name]
        choices = knob_choices(f.name)
        if choices is not None:
            if v not in choices:
                raise ValueError(f"policy knob {f.name}={v!r}: must be one of {', '.join(map(str, choices))}")
            continue
        if f.name in _PAIR_KNOBS:
            if isinstance(v, Mapping):
                v = tuple(sorted((str(k), float(w)) for k, w in v.items()))
            else:
                v = tuple((str(k), float(w)) for k, w in v)
            object.__setattr__(p, f.name, v)
            continue
        if hint is bool:
            if not isinstance(v, bool):
                raise ValueError(f"policy knob {f.name}={v!r}: must be true or false")
        elif hint is int:
            if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
                raise ValueError(f"policy knob {f.name}={v!r}: must be an integer")
            object.__setattr__(p, f.name, int(v))
        elif hint is float:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ValueError(f"policy knob {f.name}={v!r}: must be a number")
            object.__setattr__(p, f.name, float(v))
        elif hint is str:
            if not isinstance(v, str):
                raise ValueError(f"policy knob {f.name}={v!r}: must be a string")


