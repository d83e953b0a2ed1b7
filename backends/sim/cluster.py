"""A simulated cluster: several instances behind a router, each simulated exactly, composed.

    from backends.sim.cluster import simulate_cluster, needs_cluster, gpus_needed
    result = simulate_cluster(policy, workload, deployment, seed=0)   # -> backends.base.RunResult

How a cluster run works (one concept each, see docs/primitives.md):
  1. ``scaling.plan`` lays out the instances' *lives* (an instance serving from ``ready_s`` until
     ``end_s``: fixed replicas live for the whole run; autoscaling adds and retires lives; a spot
     interruption ends a life and starts its replacement ``cold_start_s`` later).
  2. The router (``router.FluidRouter``) assigns each request, in arrival order, to a live
     instance, from its fluid estimate of their loads; migration moves estimated-queued requests
     there, and running ones live (``migration.py``: the lives simulated together, paused).
  3. Each life is simulated by its own ``engine.Simulation`` over its *pieces* (a request, or the
     part of it served there) via ``Workload.take``; lives ended by an interruption are simulated
     first (in time order) and their unfinished pieces re-routed (migrated with their KV, or
     restarted) to lives that come later.
  4. Records are merged per request (first token from its first piece, finish from its last,
     column ``replica`` = the life that finished it) and telemetry is summed.
Disaggregated prefill/decode pools are ``disagg.simulate_disaggregated`` over the same parts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from backends.base import Deployment, RunResult, Telemetry, empty_records
from backends.itl import ITLHistogram
from tuner.policy import Policy
from workloads.workload import Workload, remap_parent

# knobs of the cluster, reset on the policy each instance runs
CLUSTER_KNOBS = ("replicas", "routing", "migration", "autoscale", "autoscale_max_replicas",
                 "autoscale_queue_per_replica", "cold_start_s", "spot_fraction", "spot_interruptions_per_hour",
                 "spot_recovery", "disaggregated", "prefill_instances", "decode_instances", "prefill_tp",
                 "decode_tp", "disagg_min_prompt", "disagg_min_queue", "kv_link", "network_gbps")
TIMELINE_POINTS = 2048


def resolved_replicas(policy: Policy, deployment: Deployment) -> int:
    """``policy.replicas`` with 0 meaning as many tp-GPU instances as the deployment holds."""
    return policy.replicas or max(deployment.n_gpus // policy.tp, 1)


def expert_sharing_ranks(policy: Policy, deployment: Deployment) -> int:
    """Replicas that share an MoE model's expert layers (``EnginePreset.dp_shares_experts``):
    all of them when they are one server's data-parallel ranks (fixed replicas: no autoscaling,
    spot instances, migration or disaggregation, which stand for separate servers) under an
    engine whose ranks share experts (vLLM V1's ``--data-parallel-size``); else 1."""
    from backends.sim.catalog import get_model
    from backends.sim.engines import get_engine

    if policy.autoscale or policy.spot_fraction > 0 or policy.migration or policy.disaggregated:
        return 1
    n = resolved_replicas(policy, deployment)
    if n < 2 or not get_engine(deployment.engine).dp_shares_experts or not get_model(deployment.model).is_moe:
        return 1
    return n


def needs_cluster(policy: Policy, deployment: Deployment) -> bool:
    """True when the policy needs more than one instance (or scaling/spot machinery)."""
    return (resolved_replicas(policy, deployment) > 1 or policy.disaggregated or policy.autoscale
            or policy.spot_fraction > 0)


def gpus_needed(policy: Policy, deployment: Deployment) -> int:
    """GPUs the policy's instances hold at their most: the prefill + decode pools when
    disaggregated, ``autoscale_max_replicas`` x tp when autoscaling, else replicas x tp."""
    if policy.disaggregated:
        ptp, dtp = policy.pool_tps
        return policy.prefill_instances * ptp + policy.decode_instances * dtp
    if policy.autoscale:
        return policy.autoscale_max_replicas * policy.tp
    return resolved_replicas(policy, deployment) * policy.tp


def check_gpus(policy: Policy, deployment: Deployment) -> None:
    """Raise a one-line ValueError when the instances need more GPUs than the deployment has."""
    n, need = deployment.n_gpus, gpus_needed(policy, deployment)
    if need <= n:
        return
    if policy.disaggregated:
        ptp, dtp = policy.pool_tps
        raise ValueError(f"policy knobs prefill_instances={policy.prefill_instances} x prefill_tp={ptp} + "
                         f"decode_instances={policy.decode_instances} x decode_tp={dtp} need {need} GPUs, "
                         f"the deployment has n_gpus={n}")
    if policy.autoscale:
        raise ValueError(f"policy knobs autoscale_max_replicas={policy.autoscale_max_replicas} x tp={policy.tp} "
                         f"need {need} GPUs, the deployment has n_gpus={n}")
    raise ValueError(f"policy knobs replicas={need // policy.tp} x tp={policy.tp} need {need} GPUs, "
                     f"the deployment has n_gpus={n}")


@dataclass(slots=True)
class Piece:
    """The part of request ``rid`` served by one life: arrives there at ``t`` (s) with ``prompt``
    tokens of context and ``out`` tokens still to generate; ``prefilled``: its KV arrives computed."""

    rid: int
    t: float
    prompt: int
    out: int
    max_out: int
    prefilled: bool = False
    # results (filled when its life is simulated)
    first: float = math.nan
    finish: float = math.nan
    produced: int = 0
    rejected: bool = False
    failed: bool = False
    cut: bool = False
    preemptions: int = 0
    cached: int = 0
    last_s: float = math.nan
    """When a cut piece (migrated away, or its life interrupted) produced its last token, s (the
    end of its instance's last step): the start of the ITL gap its continuation ends."""
    sent: float = math.nan
    """When a later turn of a multi-turn session was sent (its parent finished there), s."""


@dataclass(slots=True)
class Life:
    """One instance serving from ``ready_s`` (after a cold start from ``start_s``) until it is
    interrupted at ``end_s`` (inf = never); ``stop_s``: the router stops sending it requests
    (scale-in), it drains what it has."""

    idx: int
    tp: int
    start_s: float
    ready_s: float
    end_s: float = math.inf
    stop_s: float = math.inf
    spot: bool = False
    role: str = "mixed"
    pieces: list[Piece] = field(default_factory=list)
    result: RunResult | None = None

    def up(self, t: float) -> bool:
        return self.ready_s <= t < self.end_s and t < self.stop_s


def instance_policy(policy: Policy, tp: int, w: Workload | None) -> tuple[Policy, tuple[str, ...]]:
    """The single-instance policy each instance runs (cluster knobs at their defaults) and the
    single-instance simulator's notes on it."""
    from dataclasses import fields

    from backends.sim import effective_policy

    d = {f.name: f.default for f in fields(Policy)}
    return effective_policy(policy.replace(tp=tp, **{k: d[k] for k in CLUSTER_KNOBS}), w)


def in_force(policy: Policy, inst: Policy, **reset: object) -> Policy:
    """The cluster policy actually simulated: the instances' effective policy ``inst`` with the
    cluster knobs of ``policy`` (and ``reset`` ones the cluster did not honour)."""
    return inst.replace(tp=policy.tp, **{**{k: getattr(policy, k) for k in CLUSTER_KNOBS}, **reset})


def run_life(life: Life, pol: Policy, w: Workload, dep: Deployment, seed: int, cost_model=None,
             expert_dp: int = 1) -> None:
    """Simulate ``life`` over its pieces (exactly, one ``Simulation``) and fill their results
    (``cost_model``: price its steps with this one, ``Simulation.use_cost_model``; ``expert_dp``:
    data-parallel ranks sharing the experts, ``expert_sharing_ranks``)."""
    from backends.sim.engine import Simulation
    from backends.sim.telemetry import build_result

    pcs = sorted(life.pieces, key=lambda p: p.t)
    life.pieces = pcs
    if not pcs:
        return
    sub = sub_workload(w, np.array([p.rid for p in pcs], np.int64), np.array([p.t for p in pcs]),
                       np.array([p.prompt for p in pcs]), np.array([p.out for p in pcs]),
                       np.array([max(p.max_out, p.out) for p in pcs]))
    pre = np.array([p.prefilled for p in pcs], bool)
    sim = Simulation(pol, sub, dep, seed=seed, max_sim_time_s=None if math.isinf(life.end_s) else life.end_s,
                     prefilled=pre if pre.any() else None, expert_dp=expert_dp)
    if cost_model is not None:
        sim.use_cost_model(cost_model)
    if sub.has_sessions:  # a conversation's next turn starts from the last token the client sees
        from backends.sim.client_lag import deployment_lag

        sim.turn_lag = deployment_lag(dep)[:2]
    sim.run()
    gen = _gen_in_flight(sim) if sim.stopped else {}
    fin = np.isfinite(sim.finish)
    for j, p in enumerate(pcs):
        p.first, p.finish = float(sim.first_tok[j]), float(sim.finish[j])
        p.rejected, p.failed = bool(sim.rejected[j]), bool(sim.failed[j])
        p.preemptions, p.cached = int(sim.preempts[j]), int(sim.cached[j])
        if sim.released is not None:
            p.sent = float(sim.released[j])
        p.produced = int(sim.out_done[j]) if fin[j] else gen.get(j, 0)
        p.cut = bool(sim.stopped) and p.failed
        if p.cut:
            p.last_s = float(sim.t)
    life.result = build_result(sim, pol, ())


def sub_workload(w: Workload, rids: np.ndarray, arrival: np.ndarray, prompt: np.ndarray, out: np.ndarray,
                 max_out: np.ndarray) -> Workload:
    """The requests ``rids`` of ``w`` (any order, arrivals given non-decreasing) with new arrival
    times and lengths; tenants, SLO classes, adapters, prefix blocks and sessions kept
    (``Workload.take``'s selection without its arrival-order check on the old times; a later turn
    whose previous turn is not among ``rids`` becomes a first turn)."""
    off = ids = None
    if w.prefix_offsets is not None:
        starts, ends = w.prefix_offsets[rids], w.prefix_offsets[rids + 1]
        lens = ends - starts
        off = np.r_[0, np.cumsum(lens)].astype(np.int64)
        ids = w.prefix_ids[np.repeat(starts - off[:-1], lens) + np.arange(off[-1], dtype=np.int64)]
    return Workload(name=w.name, arrival_s=arrival, prompt_len=prompt, output_len=out, max_output=max_out,
                    tenant=w.tenant[rids], priority=w.priority[rids], slo_class=w.slo_class[rids],
                    tenants=w.tenants, slo_classes=w.slo_classes, adapter=w.adapter[rids], adapters=w.adapters,
                    prefix_offsets=off, prefix_ids=ids, prefix_block_tokens=w.prefix_block_tokens, meta=dict(w.meta),
                    parent=None if w.parent is None else remap_parent(w.parent, rids, w.n),
                    think_s=None if w.think_s is None else w.think_s[rids])


def _gen_in_flight(sim) -> dict[int, int]:
    """Tokens generated so far by the requests still inside a stopped simulation."""
    out = {r.rid: r.gen for r in sim.prefilling}
    out.update({r.rid: r.gen for r in sim.swapped})
    g = sim.pool.g
    for r in sim.pool.members():
        out[r.rid] = r.out - (r.fin_g - g)
    return out


def merge(w: Workload, lives: list[Life], policy: Policy, dep: Deployment, notes: tuple[str, ...],
          counters: dict[str, float] | None = None) -> RunResult:
    """Per-request records (pieces composed) and the summed telemetry of all lives (plus the
    cluster's own ``counters``, e.g. kv_transfer_bytes, migrated_requests)."""
    rec = empty_records(w)
    n = w.n
    first = np.full(n, np.inf)
    finish = np.full(n, np.nan)
    produced = np.zeros(n, np.int64)
    last_t = np.full(n, -np.inf)
    rej, fail = np.zeros(n, bool), np.zeros(n, bool)
    pre, cached, rep = np.zeros(n, np.int64), np.zeros(n, np.int64), np.full(n, -1, np.int64)
    sent = w.arrival_s.copy()  # (a later turn of a multi-turn session: when it was sent)
    for life in lives:
        for p in life.pieces:
            i = p.rid
            if math.isfinite(p.sent):
                sent[i] = p.sent
            produced[i] += p.produced
            pre[i] += p.preemptions
            cached[i] += p.cached
            if math.isfinite(p.first) and p.first < first[i]:
                first[i] = p.first
            if not p.cut and p.t >= last_t[i]:  # the final piece decides the outcome
                last_t[i] = p.t
                finish[i], rej[i], fail[i] = p.finish, p.rejected, p.failed
                rep[i] = life.idx if (math.isfinite(p.finish) or math.isfinite(p.first)) else -1
    unplaced = ~np.isfinite(last_t)  # every piece cut and never placed again (should not happen)
    fail |= unplaced
    rec["arrival_s"] = sent
    rec["first_token_s"] = np.where(np.isfinite(first), first, np.nan)
    rec["finish_s"] = finish
    rec["output_len"] = produced
    rec["rejected"], rec["failed"] = rej, fail & ~rej
    rec["preemptions"], rec["cached_tokens"], rec["replica"] = pre, cached, rep
    tel = merge_telemetry(lives, w, rec, counters or {}, handoff_gaps(lives))
    meta = {"engine": dep.engine, "model": dep.model, "gpu": dep.gpu, "tp": str(policy.tp),
            "instances": str(len(lives)), "workload": w.name}
    sources = sorted({life.result.meta["cost_model"] for life in lives if life.result is not None})
    if sources:
        meta["cost_model"] = " | ".join(sources)
    return RunResult(records=rec, telemetry=tel, policy=policy, backend="sim", notes=notes, meta=meta)


def handoff_gaps(lives: list[Life]) -> list[float]:
    """Inter-token gaps across hand-offs, s: a request's piece that continues on another life
    (a decode after its prefill elsewhere, a migrated or restarted request) counts its first token
    there as a first token, but for the request it is the next one, due since the previous
    piece's last token (its finish, or ``Piece.last_s`` when it was cut). One gap per such piece
    (pieces without a known last token are skipped)."""
    by_rid: dict[int, list[Piece]] = {}
    for life in lives:
        for p in life.pieces:
            if p.produced > 0 and math.isfinite(p.first):
                by_rid.setdefault(p.rid, []).append(p)
    gaps = []
    for ps in by_rid.values():
        if len(ps) > 1:
            ps.sort(key=lambda p: p.first)
            for a, b in zip(ps, ps[1:], strict=False):
                end = a.finish if math.isfinite(a.finish) else a.last_s
                if math.isfinite(end):
                    gaps.append(b.first - end)
    return gaps


def merge_telemetry(lives: list[Life], w: Workload, rec: pd.DataFrame, extra: dict[str, float],
                    gaps: list[float]) -> Telemetry:
    """Sum of the lives' telemetry; GPU-seconds count each life from its start (cold start
    included) to its interruption, or to the end of the run (to its last finish once retired);
    interruptions: lives ended (spot) before the run's end. ITL: the lives' histograms and the
    ``gaps`` across hand-offs (``handoff_gaps``), s."""
    t0 = float(w.arrival_s[0]) if w.n else 0.0
    fin = rec["finish_s"].to_numpy(float)
    t_end = max([float(np.nanmax(fin)) if np.isfinite(fin).any() else t0]
                + [life.result.telemetry.makespan_s + t0 for life in lives if life.result is not None])
    ran = [life for life in lives if life.result is not None]
    tels = [life.result.telemetry for life in ran]
    gpu_s = spot_s = 0.0
    for life in lives:
        stop = min(life.end_s, t_end)
        if math.isfinite(life.stop_s):
            last = max((p.finish for p in life.pieces if math.isfinite(p.finish)), default=life.stop_s)
            stop = min(stop, max(life.stop_s, last))
        s = max(stop - max(life.start_s, t0), 0.0) * life.tp
        gpu_s += s
        spot_s += s if life.spot else 0.0
    counters: dict[str, float] = {}
    for t in tels:
        for k, v in t.counters.items():
            counters[k] = max(counters.get(k, 0.0), v) if k.startswith("peak") else counters.get(k, 0.0) + v
    interruptions = sum(1 for life in lives if life.end_s < t_end)
    counters["gpu_seconds"] = gpu_s
    counters["spot_gpu_seconds"] = spot_s
    counters["instances_started"] = float(len(lives))
    counters.update(extra)
    base = tels[0] if tels else None
    return Telemetry(
        makespan_s=max(t_end - t0, 0.0), busy_s=sum(t.busy_s for t in tels),
        n_gpus=max(sum(life.tp for life in lives if life.start_s <= t0), 1),
        instances=max(int(round(gpu_s / max((t_end - t0), 1e-9) / max(lives[0].tp, 1))), 1) if lives else 1,
        flops=sum(t.flops for t in tels), hbm_bytes=sum(t.hbm_bytes for t in tels),
        peak_flops_per_gpu=base.peak_flops_per_gpu if base else 0.0,
        peak_hbm_bytes_s_per_gpu=base.peak_hbm_bytes_s_per_gpu if base else 0.0,
        offload_bytes=sum(t.offload_bytes for t in tels),
        offload_bytes_s_capacity=sum(t.offload_bytes_s_capacity for t in tels),
        kv_capacity_tokens=sum(t.kv_capacity_tokens for t in tels),
        gpu_hour_usd=base.gpu_hour_usd if base else 0.0, spot_gpu_hour_usd=base.spot_gpu_hour_usd if base else 0.0,
        spot_fraction=spot_s / gpu_s if gpu_s > 0 else 0.0, interruptions=interruptions,
        timeline=merge_timelines([life.result.telemetry.timeline for life in ran]), counters=counters,
        itl=ITLHistogram.merge([*(t.itl for t in tels), ITLHistogram.from_gaps(gaps)]))


def merge_timelines(tls: list[pd.DataFrame | None]) -> pd.DataFrame | None:
    """One timeline on a common grid: mean kv_used_frac over the instances that have started by
    then, summed running / waiting / batch_tokens (each instance holds its last sample)."""
    tls = [t for t in tls if t is not None and len(t)]
    if not tls:
        return None
    grid = np.unique(np.concatenate([t["t_s"].to_numpy(float) for t in tls]))
    if len(grid) > TIMELINE_POINTS:
        grid = grid[np.linspace(0, len(grid) - 1, TIMELINE_POINTS).astype(np.int64)]
    kv = np.zeros(len(grid))
    cnt = np.zeros(len(grid))
    sums = {c: np.zeros(len(grid)) for c in ("running", "waiting", "batch_tokens")}
    for t in tls:
        ts = t["t_s"].to_numpy(float)
        j = np.searchsorted(ts, grid, side="right") - 1
        on = j >= 0
        jj = np.where(on, j, 0)
        kv += np.where(on, t["kv_used_frac"].to_numpy(float)[jj], 0.0)
        cnt += on
        for c in sums:
            sums[c] += np.where(on, t[c].to_numpy(float)[jj], 0.0)
    return pd.DataFrame({"t_s": grid, "kv_used_frac": kv / np.maximum(cnt, 1),
                         **{c: v.astype(np.int64) for c, v in sums.items()}})


def simulate_cluster(policy: Policy, workload: Workload, deployment: Deployment, *, seed: int = 0,
                     client_lag: bool = True) -> RunResult:
    """Serve ``workload`` on the cluster ``policy`` describes (see the module doc); with
    ``client_lag``, the engine preset's client lag (a calibrated deployment's: its calibration's)
    is added once to the merged records."""
    from backends.sim.client_lag import deployment_client_lag

    check_gpus(policy, deployment)
    if workload.has_sessions and (policy.disaggregated or policy.autoscale or policy.spot_fraction > 0
                                  or policy.migration):
        raise ValueError("a workload of multi-turn sessions runs on one instance or on fixed replicas (each "
                         "conversation stays on the replica of its first turn); not with disaggregated, "
                         "autoscale, spot_fraction or migration")
    if policy.disaggregated:
        from backends.sim.disagg import simulate_disaggregated

        res = simulate_disaggregated(policy, workload, deployment, seed=seed)
    else:
        from backends.sim.scaling import simulate_replicated

        res = simulate_replicated(policy, workload, deployment, seed=seed)
    return deployment_client_lag(res, deployment) if client_lag else res
