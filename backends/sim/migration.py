"""Live migration of running requests between replicas (Llumnix, OSDI'24, simplified).

The replicas that are never interrupted are simulated together, each by its own ``Simulation``,
paused every ``MIGRATION_CHECK_S`` s of simulated time (``Simulation.advance``). At each check:

* **when and where** (the global scheduler): the router's estimate of each replica's backlog,
  refreshed from what its token streams show — requests in flight there (sent, not finished)
  each expected to generate the workload's mean output more (memoryless), plus the prompts of
  those without a first token — divided by the replica's fluid drain rate (``router.Drain``),
  seconds. While the most loaded replica's backlog exceeds the least loaded serving one's by
  more than ``MIGRATION_MARGIN_S`` (hysteresis: nothing moves inside that band), one request
  moves and the two estimates shift by its expected remaining work; at most
  ``MAX_MOVES_PER_CHECK`` per check.
* **which** (the instance's llumlet, which sees its own batch): the decoding request with the
  shortest context (prompt + generated so far; cheapest to copy), never one that migrated
  before (a request migrates at most once), ties by request id.
* **cost**: its KV (context tokens × KV bytes/token, every GPU its shard) crosses the link
  (``kv_link``: NVLink, or ``network_gbps`` shared by the instance's GPUs). The model is a
  *full stop-and-copy*: the request stops decoding at the check and resumes on the destination
  (``prefilled``: KV allocated on arrival, no prefill) after the whole copy — an upper bound on
  Llumnix's downtime, whose pipelined copy overlaps all but the last stage with decoding.
  The source frees its blocks at once.

Records are pieces as elsewhere (``cluster.merge``): the source piece is cut with the tokens it
generated, the destination piece generates the rest. Each replica's sub-workload holds one
injection slot per request it did not receive (``Simulation(n_stream=...)``), so a migrated
request keeps its tenant, SLO class and priority. Deterministic: no random draws.
"""

from __future__ import annotations

import math

import numpy as np

from backends.base import Deployment
from backends.sim.cluster import Life, Piece, sub_workload
from backends.sim.costmodel import CostModel
from backends.sim.router import MIGRATION_MARGIN_S, Drain
from tuner.policy import Policy
from workloads.workload import Workload

MIGRATION_CHECK_S = 0.5
"""Seconds of simulated time between two migration checks."""
MAX_MOVES_PER_CHECK = 8
"""Most running requests migrated at one check."""


def stream_backlog_s(sim, drain: Drain, exp_out: float) -> float:
    """The router's backlog estimate of one replica from its token streams, s: (prompts without
    a first token + in-flight requests × expected output) / drain rate."""
    pending = sim.queued_tokens + sum(r.prompt for r in sim.prefilling if r.gen == 0)
    pending += sum(r.prompt for r in sim.transferred)
    in_flight = (sim.pool.n + len(sim.prefilling) + len(sim.waiting) + len(sim.transferred)
                 + len(sim.swapped) + len(sim.retry))
    return (pending + in_flight * exp_out) / drain.rate


def _busy(sim) -> bool:
    return bool(sim.pool.n or sim.prefilling or sim.waiting or sim.transferred or sim.swapped or sim.retry
                or sim._ta < math.inf)


def _pick(sim, moved: np.ndarray, rids: np.ndarray):
    """The decoding request of ``sim`` to migrate: shortest context, not migrated before."""
    g = sim.pool.g
    fresh = {id(r) for r, _ in sim._fresh}  # first token not sampled yet
    best, key = None, None
    for r in sim.pool.members():
        rid = int(rids[r.rid])
        if moved[rid] or id(r) in fresh:
            continue
        k = (r.prompt + r.out - (r.fin_g - g), rid)
        if key is None or k < key:
            best, key = r, k
    return best


def run_live_migration(lives: list[Life], pol: Policy, w: Workload, dep: Deployment, seed: int,
                       drain: Drain, exp_out: float, cm: CostModel, link: float | None,
                       stats: dict[str, float]) -> None:
    """Simulate ``lives`` (none interrupted, none run yet) together with live migration (module
    doc); fill their pieces and results and add the counters ``migrated_running_requests``,
    ``migration_kv_bytes``, ``migration_downtime_s`` and ``kv_transfer_bytes`` to ``stats``."""
    from backends.sim.engine import Simulation

    t0 = float(w.arrival_s[0]) if w.n else 0.0
    sims, rids_of, slots_of = [], [], []
    for life in lives:
        pcs = sorted(life.pieces, key=lambda p: p.t)
        life.pieces = pcs
        own = np.array([p.rid for p in pcs], np.int64)
        mask = np.ones(w.n, bool)
        mask[own] = False
        slots = np.flatnonzero(mask)
        rids = np.r_[own, slots].astype(np.int64)
        fill = np.full(len(slots), pcs[-1].t if pcs else t0)
        sub = sub_workload(w, rids, np.r_[[p.t for p in pcs], fill],
                           np.r_[[p.prompt for p in pcs], w.prompt_len[slots]].astype(np.int64),
                           np.r_[[p.out for p in pcs], w.output_len[slots]].astype(np.int64),
                           np.r_[[max(p.max_out, p.out) for p in pcs], w.max_output[slots]].astype(np.int64))
        pre = np.r_[np.array([p.prefilled for p in pcs], bool), np.ones(len(slots), bool)]
        sims.append(Simulation(pol, sub, dep, seed=seed * 1000003 + life.idx, prefilled=pre, n_stream=len(pcs)))
        rids_of.append(rids)
        slots_of.append(slots)
    moved = np.zeros(w.n, bool)
    arrived: list[dict[int, Piece]] = [{} for _ in lives]   # slot row -> the piece injected there
    departed: list[dict[int, float]] = [{} for _ in lives]  # row -> when its last token came out there, s
    t_last = float(w.arrival_s[-1]) if w.n else t0
    m_s = exp_out / drain.rate  # estimated remaining work of one running request, s
    t = t0
    while True:
        t += MIGRATION_CHECK_S
        for s in sims:
            s.advance(t)
        if t > t_last and not any(_busy(s) for s in sims):
            break
        load = [stream_backlog_s(s, drain, exp_out) for s in sims]
        src = [k for k, life in enumerate(lives) if life.ready_s <= t and sims[k].pool.n]
        dst = [k for k, life in enumerate(lives) if life.up(t)]
        for _ in range(MAX_MOVES_PER_CHECK):
            if not src or not dst:
                break
            a = max(src, key=lambda k: (load[k], -k))
            b = min(dst, key=lambda k: (load[k], k))
            if a == b or load[a] - load[b] <= MIGRATION_MARGIN_S:
                break
            req = _pick(sims[a], moved, rids_of[a])
            if req is None:
                src.remove(a)
                continue
            if sims[a].depart(req.rid) is None:
                raise RuntimeError(f"request {req.rid} picked to migrate is not decoding")
            departed[a][req.rid] = sims[a].t  # its last token: the end of the last step it ran
            rid = int(rids_of[a][req.rid])
            moved[rid] = True
            ctx, rest = req.prompt + req.gen, req.out - req.gen
            dt = cm.kv_transfer_time(ctx, link)
            ta = max(t, sims[a].t) + dt
            row = len(lives[b].pieces) + int(np.searchsorted(slots_of[b], rid))
            sims[b].inject(row, ta, ctx, rest, max(req.max_out - req.gen, rest))
            arrived[b][row] = Piece(rid, ta, ctx, rest, max(req.max_out - req.gen, rest), prefilled=True)
            nbytes = ctx * cm.kv_bytes_per_token * cm.tp
            stats["migrated_running_requests"] = stats.get("migrated_running_requests", 0.0) + 1
            stats["migration_kv_bytes"] = stats.get("migration_kv_bytes", 0.0) + nbytes
            stats["migration_downtime_s"] = stats.get("migration_downtime_s", 0.0) + dt
            stats["kv_transfer_bytes"] = stats.get("kv_transfer_bytes", 0.0) + nbytes
            load[a] -= m_s
            load[b] += m_s
    for k, life in enumerate(lives):
        _close(life, sims[k], arrived[k], departed[k], pol)


def _close(life: Life, sim, arrived: dict[int, Piece], departed: dict[int, float], pol: Policy) -> None:
    """Finish ``sim``, drop its unused slots and fill the life's pieces from its records."""
    from backends.sim.telemetry import build_result

    n_own = len(life.pieces)
    unused = np.ones(sim.n - n_own, bool)
    unused[[r - n_own for r in arrived]] = False
    sim.failed[n_own:][unused] = True
    sim.run_rest()
    life.pieces = life.pieces + [arrived[r] for r in sorted(arrived)]
    rows = list(range(n_own)) + sorted(arrived)
    for j, p in zip(rows, life.pieces, strict=True):
        p.first, p.finish = float(sim.first_tok[j]), float(sim.finish[j])
        p.rejected, p.failed = bool(sim.rejected[j]), bool(sim.failed[j])
        p.preemptions, p.cached = int(sim.preempts[j]), int(sim.cached[j])
        p.produced = int(sim.out_done[j])
        p.cut = j in departed
        if p.cut:
            p.last_s = departed[j]
    life.result = build_result(sim, pol, ())
