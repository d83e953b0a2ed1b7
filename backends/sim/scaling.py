"""Replicated serving: fixed replicas, queue-depth autoscaling, spot instances, migration.

Lives (``cluster.Life``) are laid out as the router walks the arrivals:
  * fixed: ``replicas`` lives for the whole run;
  * autoscale: starts with one replica; before each arrival, when the router's fluid estimate of
    waiting requests per serving replica exceeds ``autoscale_queue_per_replica`` a new life
    starts (it serves ``cold_start_s`` later; GPU time is paid from the decision), up to
    ``autoscale_max_replicas`` (warming ones count); when it falls below a quarter of that, the
    youngest replica is retired (no new requests; it drains and is paid until its last finish).
    No scaling decision within ``max(cold_start_s, 10 s)`` of the previous one (hysteresis).
  * spot: ``round(spot_fraction × replicas)`` of the initial replicas are spot. Each spot life is
    interrupted by a Poisson process of ``spot_interruptions_per_hour`` (seeded from the run seed)
    and replaced ``cold_start_s`` later. In-flight requests of an interrupted life move to the
    serving replica that received the fewest tokens in the last 30 s: ``migrate`` sends their KV
    (prompt + generated tokens) over the link within ``SPOT_GRACE_S`` and they resume decoding
    (prefilled); requests not yet decoding, or whose transfer would outlast the grace period,
    ``restart``: re-prefilled from scratch (prompt + tokens already streamed) on the new replica.
  * migration (Llumnix, simplified): after each routing decision, while the router's estimated
    backlog (s of work) of the most loaded replica exceeds the least loaded one's by
    ``MIGRATION_MARGIN_S``, the latest request routed to it (behind that much work, so taken as
    still queued: it holds no KV, nothing to transfer) is re-routed to the least loaded one at
    that moment. Running requests move live, with their KV, between the replicas that are never
    interrupted: ``migration.run_live_migration`` (simulated together, checked every 0.5 s).
"""

from __future__ import annotations

import math

import numpy as np

from backends.base import Deployment, RunResult
from backends.sim.cluster import (
    Life,
    Piece,
    expert_sharing_ranks,
    in_force,
    instance_policy,
    merge,
    resolved_replicas,
    run_life,
)
from backends.sim.costmodel import CostModel
from backends.sim.router import MIGRATION_MARGIN_S, FluidRouter, instance_drain
from tuner.policy import Policy
from workloads.workload import Workload

SPOT_GRACE_S = 30.0
"""Seconds between a spot interruption notice and the instance going away."""
SPOT_HORIZON_S = 600.0
"""Interruptions are drawn until this long after the last arrival."""
REROUTE_WINDOW_S = 30.0


def link_bytes_s(policy: Policy, cm: CostModel) -> float | None:
    """Per-GPU link bytes/s for KV transfers: the GPU's NVLink, or ``network_gbps`` shared by the
    instance's GPUs (None = ``CostModel.kv_transfer_time``'s default, NVLink)."""
    if policy.kv_link == "network":
        return policy.network_gbps * 1e9 / 8 / cm.tp
    return None


def spot_lives(n_spot: int, rate_h: float, horizon: float, t0: float, cold: float, tp: int,
               rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """(start, ready, end) of every life of ``n_spot`` spot slots over [t0, horizon]."""
    out = []
    for _ in range(n_spot):
        start = ready = t0
        while True:
            gap = rng.exponential(3600.0 / rate_h) if rate_h > 0 else math.inf
            end = ready + gap
            if end >= horizon:
                out.append((start, ready, math.inf))
                break
            out.append((start, ready, end))
            start, ready = end, end + cold
    return out


def simulate_replicated(policy: Policy, w: Workload, dep: Deployment, *, seed: int = 0,
                        cost_model=None) -> RunResult:
    """Replicas behind the router (see the module doc); ``cost_model``: every replica prices its
    steps with it (a fitted cost model under evaluation, ``tuner.calibration.simrun``)."""
    tp = policy.tp
    pol, inst_notes = instance_policy(policy, tp, w)
    dp = expert_sharing_ranks(policy, dep)
    cm = CostModel.for_deployment(dep, tp).sharing_experts(dp)
    drain = instance_drain(pol, cm, w)
    rng = np.random.default_rng([seed, 0x5C1])
    t0 = float(w.arrival_s[0]) if w.n else 0.0
    horizon = (float(w.arrival_s[-1]) if w.n else 0.0) + SPOT_HORIZON_S
    lives: list[Life] = []
    notes = list(inst_notes)
    if dp > 1:
        notes.append(f"data parallel: the {dp} replicas share the MoE expert layers ({dep.engine}: experts split over "
                     f"{dp}×{tp} GPUs, ranks step together)")

    def new_life(start: float, ready: float, end: float = math.inf, spot: bool = False) -> Life:
        life = Life(idx=len(lives), tp=tp, start_s=start, ready_s=ready, end_s=end, spot=spot)
        lives.append(life)
        return life

    if policy.autoscale:
        n0 = 1
        if policy.replicas:
            notes.append(f"autoscale: replicas={policy.replicas} ignored, starts with 1 replica")
    else:
        n0 = resolved_replicas(policy, dep)
    n_spot = int(round(policy.spot_fraction * n0))
    for s, r, e in spot_lives(n_spot, policy.spot_interruptions_per_hour, horizon, t0, policy.cold_start_s, tp, rng):
        new_life(s, r, e, spot=True)
    for _ in range(n0 - n_spot):
        new_life(t0, t0)
    router = FluidRouter(policy.routing, w, [drain] * len(lives))
    last_scale = -math.inf
    hold = max(policy.cold_start_s, 10.0)
    q_out, cap = policy.autoscale_queue_per_replica, policy.autoscale_max_replicas
    placed: list[list[int]] = [[] for _ in lives]   # request ids routed to each life, in order
    stats = {"migrated_queued_requests": 0.0, "spot_migrated_requests": 0.0, "spot_restarted_requests": 0.0,
             "kv_transfer_bytes": 0.0}
    if policy.migration:
        stats.update(migrated_running_requests=0.0, migration_kv_bytes=0.0, migration_downtime_s=0.0)
    pieces: dict[int, Piece] = {}
    arr, pl, ol, mo = w.arrival_s, w.prompt_len, w.output_len, w.max_output
    parent = home = None
    if w.has_sessions:
        parent, home = w.parent, np.full(w.n, -1, np.int64)  # (the replica each request went to)
    next_change, dirty, up_now = -math.inf, True, []
    for i in range(w.n):
        t = float(arr[i])
        if policy.autoscale and t - last_scale >= hold:
            live = [life for life in lives if life.stop_s > t and life.end_s > t]
            serving = [life for life in live if life.ready_s <= t]
            wait = sum(router.waiting(life.idx, t) for life in serving)
            if wait > q_out * max(len(serving), 1) and len(live) < cap:
                new_life(t, t + policy.cold_start_s)
                dirty = True
                router.add_instance(drain)
                placed.append([])
                last_scale = t
            elif len(serving) > 1 and wait < q_out * len(serving) / 4 and len(live) == len(serving):
                youngest = max(serving, key=lambda life: (life.ready_s, life.idx))
                youngest.stop_s = t
                last_scale = t
                dirty = True
        if t >= next_change or dirty:  # the serving set only changes at lives' ready/end times
            up_now = [life.idx for life in lives if life.up(t)]
            next_change = min([life.ready_s for life in lives if life.ready_s > t]
                              + [life.end_s for life in lives if life.end_s > t] + [math.inf])
            dirty = False
        up = up_now
        if not up:  # nobody serving: wait for the first life that comes up
            nxt = min((life for life in lives if life.ready_s > t and life.stop_s > life.ready_s),
                      key=lambda life: life.ready_s)
            t, up = nxt.ready_s, [nxt.idx]
        par = int(parent[i]) if parent is not None else -1
        if par >= 0 and home[par] in up:  # type: ignore[index]  # a conversation stays on its first turn's replica
            k = int(home[par])  # type: ignore[index]
            router.add(k, t, router.tokens(i))
        else:
            k = router.route(i, t, up)
        if home is not None:
            home[i] = k
        p = pieces[i] = Piece(i, t, int(pl[i]), int(ol[i]), int(mo[i]))
        lives[k].pieces.append(p)
        placed[k].append(i)
        if policy.migration and len(up) > 1:
            stats["migrated_queued_requests"] += _migrate_queued(router, lives, placed, pieces, up, t)
    for life in lives:  # keep only pieces still placed there (migration moved some)
        life.pieces = [pieces[i] for i in placed[life.idx] if pieces[i].t >= 0]
    _run_all(policy, pol, w, dep, seed, lives, cm, stats, router, cost_model)
    if policy.migration:
        notes.append(f"migration: queued requests re-routed by the router's estimate; "
                     f"{int(stats.get('migrated_running_requests', 0))} running requests live-migrated "
                     f"(KV {stats.get('migration_kv_bytes', 0.0) / 1e9:.2f} GB, full stop-and-copy downtime)")
    return merge(w, lives, in_force(policy, pol), dep, tuple(dict.fromkeys(notes)), stats)


def _migrate_queued(router: FluidRouter, lives: list[Life], placed: list[list[int]], pieces: dict[int, Piece],
                    up: list[int], t: float) -> int:
    """Move the latest-routed requests (behind more than ``MIGRATION_MARGIN_S`` of estimated work,
    so taken as still queued, holding no KV) from the most to the least loaded replica while their
    estimated backlogs differ by more than that margin."""
    moved = 0
    for _ in range(64):
        a = max(up, key=lambda j: (router.backlog_s(j, t), -j))
        b = min(up, key=lambda j: (router.backlog_s(j, t), j))
        if router.backlog_s(a, t) - router.backlog_s(b, t) <= MIGRATION_MARGIN_S or len(placed[a]) < 2:
            return moved
        i = placed[a].pop()
        tok = router.tokens(i)
        router.add(a, t, -tok)
        router.add(b, t, tok)
        pieces[i].t = t
        placed[b].append(i)
        lives[b].pieces.append(pieces[i])
        moved += 1
    return moved


def _run_all(policy: Policy, pol: Policy, w: Workload, dep: Deployment, seed: int, lives: list[Life],
             cm: CostModel, stats: dict[str, float], router: FluidRouter, cost_model=None) -> None:
    """Simulate every life; interrupted ones first, in time order, re-routing their cut pieces;
    with ``migration`` the others together, live-migrating running requests (``migration.py``);
    each life shares its experts with as many ranks as ``cm`` does (``CostModel.expert_dp``)."""
    order = sorted(range(len(lives)), key=lambda k: (lives[k].end_s, k))
    link = link_bytes_s(policy, cm)
    for k in order:
        life = lives[k]
        if policy.migration and math.isinf(life.end_s):
            from backends.sim.migration import run_live_migration

            rest = [lives[j] for j in order if math.isinf(lives[j].end_s)]
            run_live_migration(rest, pol, w, dep, seed, router.drains[0], router.exp_out, cm, link, stats)
            return
        run_life(life, pol, w, dep, seed * 1000003 + k, cost_model, cm.expert_dp)
        if math.isfinite(life.end_s):
            _reroute_cut(policy, life, lives, cm, link, stats)


def _reroute_cut(policy: Policy, life: Life, lives: list[Life], cm: CostModel, link: float | None,
                 stats: dict[str, float]) -> None:
    """Place the unfinished pieces of an interrupted life on other lives (migrate or restart)."""
    cut = [p for p in life.pieces if p.cut]
    if not cut:
        return
    T = life.end_s
    recent: dict[int, float] = {}
    for other in lives:
        if other is life or other.result is not None:
            continue
        recent[other.idx] = sum(p.prompt + p.out for p in other.pieces if T - REROUTE_WINDOW_S <= p.t <= T)
    for p in cut:
        gen = p.produced
        ctx = p.prompt + gen
        ta = T
        migrate = policy.spot_recovery == "migrate" and gen > 0
        if migrate:
            dt = cm.kv_transfer_time(ctx, link)
            migrate = dt <= SPOT_GRACE_S
            ta = T + dt if migrate else T
        if migrate:
            stats["spot_migrated_requests"] += 1
            stats["kv_transfer_bytes"] += ctx * cm.kv_bytes_per_token * cm.tp
        else:
            stats["spot_restarted_requests"] += 1
        cands = [j for j in recent if lives[j].up(ta) and lives[j].end_s > ta]
        if not cands:  # wait for the next life to come up (e.g. the replacement)
            cands = [min((j for j in recent if lives[j].ready_s > ta and lives[j].stop_s > lives[j].ready_s),
                         key=lambda j: lives[j].ready_s)]
            ta = lives[cands[0]].ready_s
        j = min(cands, key=lambda j: (recent[j], j))
        q = Piece(p.rid, ta, ctx, p.out - gen, max(p.max_out - gen, p.out - gen), prefilled=migrate)
        recent[j] += ctx + q.out
        lives[j].pieces.append(q)
