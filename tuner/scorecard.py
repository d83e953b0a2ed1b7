"""The scorecard: ONE function turns any backend's RunResult into every metric servetune reports.

Definitions (``shared/DESIGN.md``):
  TTFT = first token − arrival; TPOT = (finish − first token) / (output tokens − 1) for requests
  with >= 2 output tokens; E2E = finish − arrival; ITL = the gaps between a request's successive
  streamed outputs, over all tokens (``backends.itl``). Latencies in milliseconds.
  Goodput = output tokens of requests meeting BOTH their TTFT and TPOT SLO / all output tokens
  offered (rejected and failed requests count as missed).
  Fairness: per-tenant service = 1 × prompt + 2 × output tokens (``SERVICE_WEIGHTS``, as in VTC),
  measured in windows where tenants are backlogged. The weights are the yardstick's, fixed: a
  trial's own ``vtc_input_weight`` / ``vtc_output_weight`` steer its VTC scheduler, never how its
  fairness is measured (else a study could improve fairness by redefining it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import pandas as pd

from backends.base import RunResult
from workloads.workload import Workload

FAIRNESS_WINDOWS = 50
SERVICE_WEIGHTS = (1.0, 2.0)
"""(prompt, output) token weights of the fairness metrics' per-tenant service (DESIGN.md)."""


@dataclass(frozen=True, slots=True)
class Scorecard:
    """Every metric of one run. Latencies in ms, rates per second, fractions in 0..1."""

    n_requests: int
    n_completed: int
    n_rejected: int
    n_failed: int
    makespan_s: float
    ttft_mean_ms: float
    ttft_p50_ms: float
    ttft_p90_ms: float
    ttft_p95_ms: float
    ttft_p99_ms: float
    tpot_mean_ms: float
    tpot_p50_ms: float
    tpot_p90_ms: float
    tpot_p95_ms: float
    tpot_p99_ms: float
    itl_mean_ms: float
    """Inter-token latency: the gaps between a request's successive streamed outputs, over all
    tokens (``backends.itl``; NaN where the backend saw no gaps). TPOT averages each request's
    gaps; the ITL tail shows the stalls (a decode step that runs a prefill chunk, a preemption)."""
    itl_p50_ms: float
    itl_p90_ms: float
    itl_p95_ms: float
    itl_p99_ms: float
    e2e_mean_ms: float
    e2e_p50_ms: float
    e2e_p90_ms: float
    e2e_p95_ms: float
    e2e_p99_ms: float
    throughput_tok_s: float
    """Output tokens per second of makespan."""
    total_tok_s: float
    """Prompt + output tokens per second."""
    requests_s: float
    goodput_frac: float
    """Share of offered output tokens delivered within both SLOs."""
    goodput_tok_s: float
    goodput_req_s: float
    slo_attainment: float
    """Share of requests (offered) meeting both SLOs."""
    ttft_attainment: float
    tpot_attainment: float
    busy_frac: float
    mfu: float
    mbu: float
    kv_util_mean: float
    kv_util_peak: float
    fragmentation: float
    """Allocated-but-unused KV slots / allocated slots (time-weighted)."""
    offload_bw_util: float
    preemptions: int
    prefix_hit_rate: float
    spec_acceptance: float
    mean_batch_size: float
    service_ratio: float
    """Max / min per-tenant weighted service (1 = equal)."""
    max_service_diff: float
    """Max over windows of the service gap between backlogged tenants, weighted tokens."""
    jain_index: float
    usd_per_1m_tokens: float
    """$ per 1M output tokens at the deployment's blended (on-demand/spot) GPU price."""
    usd_per_1m_tokens_ondemand: float
    interruptions: int
    adapter_loads: int = 0
    """LoRA adapters copied host → GPU (0 without adapters)."""
    adapter_load_s: float = 0.0
    """Seconds of iterations spent loading LoRA adapters."""
    followup_ttft_p50_ms: float = float("nan")
    """Multi-turn sessions: TTFT of the served later turns (a conversation's follow-ups, whose
    prompt holds the conversation so far), p50 and p90; NaN without sessions."""
    followup_ttft_p90_ms: float = float("nan")
    followup_cached_frac: float = float("nan")
    """Share of the served later turns' prompt tokens found in the prefix cache (GPU or a lower
    tier): how much of the conversations' context the engine kept between turns."""

    @property
    def has_followups(self) -> bool:
        """The run's workload had multi-turn sessions, some later turn served (``followup_*`` set)."""
        return not math.isnan(self.followup_cached_frac)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """Finite numeric metrics only (for MLflow)."""
        return {k: float(v) for k, v in asdict(self).items() if isinstance(v, int | float) and math.isfinite(v)}


def _pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if len(x) else float("nan")


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


def latencies_ms(records: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-request TTFT, TPOT and E2E in ms (NaN where undefined), aligned with ``records``."""
    arr = records["arrival_s"].to_numpy(float)
    ft = records["first_token_s"].to_numpy(float)
    fin = records["finish_s"].to_numpy(float)
    out = records["output_len"].to_numpy(float)
    ttft = (ft - arr) * 1e3
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(out >= 2, (fin - ft) * 1e3 / (out - 1), np.nan)
    e2e = (fin - arr) * 1e3
    return ttft, tpot, e2e


def slo_met(records: pd.DataFrame) -> np.ndarray:
    """Boolean per request: served, finished, and within both its TTFT and TPOT targets.
    A single-token request has no TPOT and meets the TPOT target trivially."""
    ttft, tpot, _ = latencies_ms(records)
    ok = ~records["rejected"].to_numpy(bool) & ~records["failed"].to_numpy(bool)
    ok &= np.isfinite(records["finish_s"].to_numpy(float))
    ok &= ttft <= records["ttft_slo_ms"].to_numpy(float)
    ok &= np.where(np.isnan(tpot), True, tpot <= records["tpot_slo_ms"].to_numpy(float))
    return ok


def request_service(records: pd.DataFrame, w_in: float = SERVICE_WEIGHTS[0],
                    w_out: float = SERVICE_WEIGHTS[1]) -> np.ndarray:
    """Weighted service of each request, tokens: w_in × prompt + w_out × output for a request
    that finished, 0 otherwise (the fairness yardstick, ``SERVICE_WEIGHTS``)."""
    served = np.isfinite(records["finish_s"].to_numpy(float))
    return np.where(served, w_in * records["prompt_len"].to_numpy(float)
                    + w_out * records["output_len"].to_numpy(float), 0.0)


def tenant_service(
    records: pd.DataFrame, w_in: float = SERVICE_WEIGHTS[0], w_out: float = SERVICE_WEIGHTS[1],
    windows: int = FAIRNESS_WINDOWS
) -> tuple[pd.DataFrame, float, float]:
    """Per-tenant weighted service and the backlogged-window fairness figures.

    Prompt service is credited when the first token appears; output service accrues
    uniformly between first token and finish. A tenant is backlogged in a window when it has
    a request that arrived before the window and finished after it.
    Returns (table with tenant, requests, service; max service difference between two tenants
    over any interval in which both are backlogged, in weighted tokens; Jain's index of the
    tenants' service rates while backlogged).
    """
    served = np.isfinite(records["finish_s"].to_numpy(float))
    tenants = records["tenant"].to_numpy(object)
    names = sorted(set(tenants.tolist()))
    arr = records["arrival_s"].to_numpy(float)
    ft = records["first_token_s"].to_numpy(float)
    fin = records["finish_s"].to_numpy(float)
    p = records["prompt_len"].to_numpy(float)
    o = records["output_len"].to_numpy(float)
    total = request_service(records, w_in, w_out)
    table = pd.DataFrame(
        {
            "tenant": names,
            "requests": [int(np.sum(tenants == t)) for t in names],
            "service": [float(total[tenants == t].sum()) for t in names],
        }
    )
    if len(names) < 2 or not served.any():
        return table, 0.0, 1.0
    t0, t1 = float(np.nanmin(arr)), float(np.nanmax(np.where(served, fin, arr)))
    if not t1 > t0:
        return table, 0.0, 1.0
    edges = np.linspace(t0, t1, windows + 1)
    end = np.where(served, fin, np.inf)

    def cum_service(tau: np.ndarray, m: np.ndarray) -> np.ndarray:
        """Cumulative service of requests m at each time tau (len(tau),)."""
        out = np.zeros(len(tau))
        fts, fins, ps, os_ = ft[m], fin[m], p[m], o[m]
        for j, x in enumerate(tau):
            prompt = np.sum(ps[fts <= x]) * w_in
            span = np.maximum(fins - fts, 1e-12)
            frac = np.clip((x - fts) / span, 0.0, 1.0)
            out[j] = prompt + w_out * np.sum(os_ * frac)
        return out

    cum = {}
    backlog = {}
    for t in names:
        cum[t] = cum_service(edges, (tenants == t) & served)
        mt = tenants == t
        # backlogged in window k: some request arrived <= window start and ends >= window end
        a, e = arr[mt], end[mt]
        backlog[t] = np.array([np.any((a <= edges[k]) & (e >= edges[k + 1])) for k in range(windows)])
    # VTC's measure: for two tenants both backlogged over [t1, t2], |W_a(t1,t2) - W_b(t1,t2)|.
    # Over a run of windows where both are backlogged, its max is max(D) - min(D) of D = S_a - S_b.
    max_diff = 0.0
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            both = backlog[a] & backlog[b]
            k = 0
            while k < windows:
                if not both[k]:
                    k += 1
                    continue
                j = k
                while j < windows and both[j]:
                    j += 1
                d = cum[a][k : j + 1] - cum[b][k : j + 1]
                max_diff = max(max_diff, float(d.max() - d.min()))
                k = j
    # Jain's index over tenants' service rates while backlogged (windows with >= 2 backlogged)
    multi = np.sum([backlog[t] for t in names], axis=0) >= 2
    rates = []
    for t in names:
        wins = backlog[t] & multi
        if wins.any():
            rates.append(float(np.sum(np.diff(cum[t])[wins])) / int(wins.sum()))
    r = np.array(rates)
    jain = float(r.sum() ** 2 / (len(r) * np.sum(r * r))) if len(r) >= 2 and np.sum(r * r) > 0 else 1.0
    return table, max_diff, jain


def score(result: RunResult, workload: Workload | None = None) -> Scorecard:
    """The scorecard of one run. ``workload`` gives offered output tokens; without it the
    records' served tokens stand in for rejected/failed requests' offered tokens (0)."""
    rec = result.records
    tel = result.telemetry
    n = len(rec)
    rejected = rec["rejected"].to_numpy(bool)
    failed = rec["failed"].to_numpy(bool)
    done = np.isfinite(rec["finish_s"].to_numpy(float)) & ~rejected & ~failed
    ttft, tpot, e2e = latencies_ms(rec)
    ttft_d, e2e_d = ttft[done], e2e[done]
    tpot_d = tpot[done & np.isfinite(tpot)]
    out_tok = rec["output_len"].to_numpy(float)
    prompt_tok = rec["prompt_len"].to_numpy(float)
    if workload is not None and workload.n == n:
        offered = workload.output_len.astype(float)[rec["req_id"].to_numpy(int)]
    else:
        offered = np.where(done, out_tok, 0.0)
    makespan = max(float(tel.makespan_s), 1e-9)
    met = slo_met(rec)
    ttft_ok = done & (ttft <= rec["ttft_slo_ms"].to_numpy(float))
    tpot_ok = done & np.where(np.isnan(tpot), True, tpot <= rec["tpot_slo_ms"].to_numpy(float))
    produced = float(out_tok[done].sum())
    good_tokens = float(out_tok[met].sum())

    c = tel.counters
    itl = tel.itl
    gpu_s = c.get("gpu_seconds", 0.0) or makespan * tel.n_gpus  # a cluster counts active replica-seconds
    mfu = tel.flops / (gpu_s * tel.peak_flops_per_gpu) if tel.peak_flops_per_gpu > 0 else float("nan")
    mbu = tel.hbm_bytes / (gpu_s * tel.peak_hbm_bytes_s_per_gpu) if tel.peak_hbm_bytes_s_per_gpu > 0 else float("nan")
    kv_mean = kv_peak = float("nan")
    tl = tel.timeline
    if tl is not None and len(tl) and "kv_used_frac" in tl:
        t = tl["t_s"].to_numpy(float)
        k = tl["kv_used_frac"].to_numpy(float)
        kv_peak = float(np.nanmax(k))
        if len(t) > 1 and t[-1] > t[0]:
            dt = np.diff(np.r_[t, makespan if makespan > t[-1] else t[-1]])
            kv_mean = float(np.sum(k * dt) / max(np.sum(dt), 1e-12))
        else:
            kv_mean = float(np.nanmean(k))
    alloc = c.get("kv_allocated_slot_s", 0.0)
    frag = 1.0 - c.get("kv_used_slot_s", 0.0) / alloc if alloc > 0 else float("nan")
    offload_util = tel.offload_bytes / (makespan * tel.offload_bytes_s_capacity) if tel.offload_bytes_s_capacity > 0 else 0.0
    q = c.get("prefix_query_tokens", 0.0)
    d = c.get("spec_draft_tokens", 0.0)
    it = c.get("iterations", 0.0)
    _, max_diff, jain = tenant_service(rec)  # the fixed yardstick, not the trial's VTC weights
    svc = _service_totals(rec, *SERVICE_WEIGHTS)
    svc_pos = svc[svc > 0]
    ratio = float(svc_pos.max() / svc_pos.min()) if len(svc_pos) >= 2 else 1.0
    price = (1 - tel.spot_fraction) * tel.gpu_hour_usd + tel.spot_fraction * tel.spot_gpu_hour_usd
    hours = gpu_s / 3600.0
    def per_m(usd):
        return (usd / (produced / 1e6) if produced > 0 else float("inf"))
    follow = {}
    if workload is not None and workload.n == n and workload.has_sessions:
        later = done & (workload.parent[rec["req_id"].to_numpy(int)] >= 0)  # type: ignore[index]
        hit = rec["cached_tokens"].to_numpy(float)[later].sum()
        follow = {"followup_ttft_p50_ms": _pct(ttft[later], 50), "followup_ttft_p90_ms": _pct(ttft[later], 90),
                  "followup_cached_frac": hit / prompt_tok[later].sum() if later.any() else float("nan")}
    return Scorecard(
        n_requests=n,
        n_completed=int(done.sum()),
        n_rejected=int(rejected.sum()),
        n_failed=int(failed.sum()),
        makespan_s=float(tel.makespan_s),
        ttft_mean_ms=_mean(ttft_d),
        ttft_p50_ms=_pct(ttft_d, 50),
        ttft_p90_ms=_pct(ttft_d, 90),
        ttft_p95_ms=_pct(ttft_d, 95),
        ttft_p99_ms=_pct(ttft_d, 99),
        tpot_mean_ms=_mean(tpot_d),
        tpot_p50_ms=_pct(tpot_d, 50),
        tpot_p90_ms=_pct(tpot_d, 90),
        tpot_p95_ms=_pct(tpot_d, 95),
        tpot_p99_ms=_pct(tpot_d, 99),
        itl_mean_ms=itl.mean_ms() if itl is not None else float("nan"),
        itl_p50_ms=itl.percentile_ms(50) if itl is not None else float("nan"),
        itl_p90_ms=itl.percentile_ms(90) if itl is not None else float("nan"),
        itl_p95_ms=itl.percentile_ms(95) if itl is not None else float("nan"),
        itl_p99_ms=itl.percentile_ms(99) if itl is not None else float("nan"),
        e2e_mean_ms=_mean(e2e_d),
        e2e_p50_ms=_pct(e2e_d, 50),
        e2e_p90_ms=_pct(e2e_d, 90),
        e2e_p95_ms=_pct(e2e_d, 95),
        e2e_p99_ms=_pct(e2e_d, 99),
        throughput_tok_s=produced / makespan,
        total_tok_s=(produced + float(prompt_tok[done].sum())) / makespan,
        requests_s=float(done.sum()) / makespan,
        goodput_frac=good_tokens / float(offered.sum()) if offered.sum() > 0 else 0.0,
        goodput_tok_s=good_tokens / makespan,
        goodput_req_s=float(met.sum()) / makespan,
        slo_attainment=float(met.sum()) / n if n else 0.0,
        ttft_attainment=float(ttft_ok.sum()) / n if n else 0.0,
        tpot_attainment=float(tpot_ok.sum()) / n if n else 0.0,
        busy_frac=min(1.0, tel.busy_s / (makespan * max(tel.instances, 1))),
        mfu=mfu,
        mbu=mbu,
        kv_util_mean=kv_mean,
        kv_util_peak=kv_peak,
        fragmentation=frag,
        offload_bw_util=offload_util,
        preemptions=int(c.get("preemptions", rec["preemptions"].sum())),
        prefix_hit_rate=c.get("prefix_hit_tokens", 0.0) / q if q > 0 else 0.0,
        spec_acceptance=c.get("spec_accepted_tokens", 0.0) / d if d > 0 else float("nan"),
        mean_batch_size=c.get("batch_size_sum", 0.0) / it if it > 0 else float("nan"),
        service_ratio=ratio,
        max_service_diff=max_diff,
        jain_index=jain,
        usd_per_1m_tokens=per_m(hours * price),
        usd_per_1m_tokens_ondemand=per_m(hours * tel.gpu_hour_usd),
        interruptions=int(tel.interruptions),
        adapter_loads=int(c.get("lora_loads", 0.0)),
        adapter_load_s=float(c.get("lora_load_s", 0.0)),
        **follow,
    )


def _service_totals(rec: pd.DataFrame, w_in: float, w_out: float) -> np.ndarray:
    s = request_service(rec, w_in, w_out)
    return pd.Series(s).groupby(rec["tenant"].to_numpy(object)).sum().to_numpy(float)


SCORECARD_FIELDS = tuple(f.name for f in fields(Scorecard))
