"""Prefill/decode disaggregation (DistServe, Splitwise) over exactly simulated instances.

``prefill_instances`` instances of ``prefill_tp`` GPUs run prefills only, ``decode_instances``
of ``decode_tp`` GPUs decode. A request goes to the prefill pool when its prompt has at least
``disagg_min_prompt`` tokens and (``disagg_min_queue`` > 0) the router's fluid estimate of the
decode pool's queue is at least ``disagg_min_queue`` requests; otherwise it is served co-located
on a decode instance (which prefills it, chunked, as usual).

A disaggregated request is simulated in two pieces:
  1. on its prefill instance: the prompt with one output token (that first token is the
     request's TTFT); the prefill instance frees its KV when done;
  2. its prompt's KV goes over ``kv_link`` (NVLink inside a node, or ``network_gbps`` shared by
     the instance's GPUs), ``CostModel.kv_transfer_time``, and it arrives at a decode instance at
     prefill finish + transfer, ``prefilled`` (KV allocated on admission, no prefill compute),
     with ``output_len − 1`` tokens to generate.
Records merge: TTFT from the prefill piece, finish from the decode piece. Both pools route with
``policy.routing``; the decode pool is routed in order of decode arrivals, after the prefill
pool's exact simulation.
"""

from __future__ import annotations

import numpy as np

from backends.base import Deployment, RunResult
from backends.sim.cluster import Life, Piece, in_force, instance_policy, merge, run_life
from backends.sim.costmodel import CostModel
from backends.sim.router import FluidRouter, instance_drain
from backends.sim.scaling import link_bytes_s
from tuner.policy import Policy
from workloads.workload import Workload


def simulate_disaggregated(policy: Policy, w: Workload, dep: Deployment, *, seed: int = 0) -> RunResult:
    """Serve ``w`` on a prefill pool and a decode pool (see the module doc)."""
    ptp, dtp = policy.pool_tps
    ppol, pnotes = instance_policy(policy, ptp, w)
    dpol, dnotes = instance_policy(policy, dtp, w)
    pcm, dcm = CostModel.for_deployment(dep, ptp), CostModel.for_deployment(dep, dtp)
    P, D = policy.prefill_instances, policy.decode_instances
    t0 = float(w.arrival_s[0]) if w.n else 0.0
    plives = [Life(idx=k, tp=ptp, start_s=t0, ready_s=t0, role="prefill") for k in range(P)]
    dlives = [Life(idx=P + k, tp=dtp, start_s=t0, ready_s=t0, role="decode") for k in range(D)]
    prouter = FluidRouter(policy.routing, w, [instance_drain(ppol, pcm, w, output_tokens=1.0)] * P,
                          expected_output=1.0)
    ddrain = instance_drain(dpol, dcm, w)
    est = FluidRouter("least_loaded", w, [ddrain] * D)  # the decode pool's estimated queue
    arr, pl, ol, mo = w.arrival_s, w.prompt_len, w.output_len, w.max_output
    dis = np.zeros(w.n, bool)
    pup, dup = list(range(P)), list(range(D))
    for i in range(w.n):
        t = float(arr[i])
        if pl[i] >= policy.disagg_min_prompt and (
                policy.disagg_min_queue == 0
                or sum(est.waiting(k, t) for k in dup) >= policy.disagg_min_queue):
            dis[i] = True
            k = prouter.route(i, t, pup)
            plives[k].pieces.append(Piece(i, t, int(pl[i]), 1, 1))
            est.add(min(dup, key=lambda j: est.load(j, t)), t, float(ol[i]))  # its decode, estimated
        else:
            est.route(i, t, dup)
    for k, life in enumerate(plives):
        run_life(life, ppol, w, dep, seed * 1000003 + k)
    # decode arrivals: co-located requests at arrival, disaggregated ones after prefill + transfer
    link = link_bytes_s(policy, pcm)
    items: list[tuple[float, int, Piece]] = []
    for i in np.flatnonzero(~dis):
        items.append((float(arr[i]), int(i), Piece(int(i), float(arr[i]), int(pl[i]), int(ol[i]), int(mo[i]))))
    for life in plives:
        for p in life.pieces:
            if ol[p.rid] > 1 and np.isfinite(p.finish) and not (p.rejected or p.failed):
                ta = p.finish + pcm.kv_transfer_time(p.prompt, link)
                items.append((ta, p.rid, Piece(p.rid, ta, p.prompt, int(ol[p.rid]) - 1, int(mo[p.rid]) - 1,
                                               prefilled=True)))
    items.sort(key=lambda x: (x[0], x[1]))
    moved = [it[2].prompt for it in items if it[2].prefilled]
    stats = {"disaggregated_requests": float(dis.sum()),
             "kv_transfer_bytes": float(sum(moved)) * pcm.kv_bytes_per_token * ptp}
    drouter = FluidRouter(policy.routing, w, [ddrain] * D)
    for ta, i, piece in items:
        k = drouter.route(i, ta, dup)
        dlives[k].pieces.append(piece)
    for k, life in enumerate(dlives):
        run_life(life, dpol, w, dep, seed * 1000003 + P + k)
    notes = list(dict.fromkeys(pnotes + dnotes))
    reset: dict[str, object] = {}
    for knob in ("autoscale", "migration"):
        if getattr(policy, knob):
            reset[knob] = False
            notes.append(f"{knob}=True not simulated with disaggregated pools; ran without")
    if policy.spot_fraction > 0:
        reset["spot_fraction"] = 0.0
        notes.append(f"spot_fraction={policy.spot_fraction} not simulated with disaggregated pools; all on-demand")
    notes.append(f"disaggregated: {int(dis.sum())} of {w.n} requests prefilled on the prefill pool")
    return merge(w, plives + dlives, in_force(policy, dpol, **reset), dep, tuple(notes), stats)
