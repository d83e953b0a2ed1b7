"""Read vLLM's Prometheus ``/metrics`` into servetune telemetry.

A :class:`Snapshot` is one scrape reduced to the numbers servetune uses; counters of a
reused server are cumulative, so a trial's counters are ``end - start`` snapshots
(:func:`counter_delta`). ``timeline_frame`` turns periodic snapshots into
``Telemetry.timeline`` (columns t_s, kv_used_frac, running, waiting).

Metric names of vLLM 0.32 (V1), with the older names still accepted:
``vllm:kv_cache_usage_perc`` (a 0..1 fraction despite the name; older ``gpu_cache_usage_perc``),
``vllm:num_requests_running`` / ``_waiting``, ``vllm:num_preemptions_total``,
``vllm:prefix_cache_queries_total`` / ``_hits_total`` (tokens), and
``vllm:spec_decode_num_draft_tokens_total`` / ``_num_accepted_tokens_total``. SGLang's gauges
(``sglang:token_usage``, ``num_running_reqs``, ``num_queue_reqs``) fill the timeline too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")

# servetune name -> vLLM metric names (first found wins), all summed over label sets.
GAUGES: dict[str, tuple[str, ...]] = {
    "kv_used_frac": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage"),
    "running": ("vllm:num_requests_running", "sglang:num_running_reqs"),
    "waiting": ("vllm:num_requests_waiting", "sglang:num_queue_reqs"),
}
COUNTERS: dict[str, tuple[str, ...]] = {
    "preemptions": ("vllm:num_preemptions_total", "vllm:num_preemptions"),
    "prefix_query_tokens": ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
    "prefix_hit_tokens": ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
    "spec_draft_tokens": ("vllm:spec_decode_num_draft_tokens_total",),
    "spec_accepted_tokens": ("vllm:spec_decode_num_accepted_tokens_total",),
    "prompt_tokens": ("vllm:prompt_tokens_total",),
    "generation_tokens": ("vllm:generation_tokens_total",),
    "finished_requests": ("vllm:request_success_total",),
    "est_flops_per_gpu": ("vllm:estimated_flops_per_gpu_total",),
    "est_read_bytes_per_gpu": ("vllm:estimated_read_bytes_per_gpu_total",),
}
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[str, float]:
    """Sum every sample of each metric name over its label sets (comments skipped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        try:
            v = float(m.group(3))
        except ValueError:
            continue
        if math.isnan(v):
            continue
        out[m.group(1)] = out.get(m.group(1), 0.0) + v
    return out


def labels_of(text: str, name: str) -> dict[str, str]:
    """Labels of the first sample of ``name`` (e.g. ``vllm:cache_config_info``), or {}."""
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return dict(_LABEL.findall(line[len(name) + 1: line.rindex("}")]))
    return {}


def kv_capacity_tokens(text: str) -> int:
    """KV-cache size in tokens from ``vllm:cache_config_info`` (0 when not reported)."""
    lab = labels_of(text, "vllm:cache_config_info")
    try:
        return int(lab["kv_cache_size_tokens"])
    except (KeyError, ValueError):
        pass
    try:
        return int(lab["num_gpu_blocks"]) * int(lab["block_size"])
    except (KeyError, ValueError):
        return 0


def _pick(values: Mapping[str, float], names: Sequence[str]) -> float | None:
    for n in names:
        if n in values:
            return values[n]
    return None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One scrape: ``t_s`` (s from the replay start), gauges and cumulative counters."""

    t_s: float
    gauges: Mapping[str, float]
    counters: Mapping[str, float]

    @classmethod
    def from_text(cls, t_s: float, text: str) -> Snapshot:
        values = parse_prometheus(text)
        gauges = {k: v for k, names in GAUGES.items() if (v := _pick(values, names)) is not None}
        counters = {k: v for k, names in COUNTERS.items() if (v := _pick(values, names)) is not None}
        return cls(t_s, gauges, counters)


def counter_delta(start: Snapshot | None, end: Snapshot | None) -> dict[str, float]:
    """Counters accrued between two snapshots of one server (missing start = zeros)."""
    if end is None:
        return {}
    base = start.counters if start is not None else {}
    return {k: max(0.0, v - base.get(k, 0.0)) for k, v in end.counters.items()}


def timeline_frame(snaps: Iterable[Snapshot]) -> pd.DataFrame:
    """``Telemetry.timeline``: one row per scrape (t_s, kv_used_frac, running, waiting)."""
    rows = [{"t_s": s.t_s, **s.gauges} for s in snaps]
    cols = ["t_s", *GAUGES]
    df = pd.DataFrame(rows, columns=cols) if rows else pd.DataFrame(columns=cols)
    return df.astype("float64")
