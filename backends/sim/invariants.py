"""Invariants of one simulated serving instance, recounted from scratch (``Simulation.check``).

The engine checks its O(1) invariants every step (KV blocks conserved, running <= seats, time
moving forward) and, with ``check=True`` (tests, fuzzing), this full recount every step:
O(running requests + cached blocks). Every counter the event loop keeps incrementally (the decode
pool's tokens and blocks, private and cached KV blocks, the tiers' bytes, requests held for a tier
load, the LoRA slots, the fair queue's service) is recomputed from the request and block records
and compared. A violation raises ``SimInvariantError``: a broken simulation is never scored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mypy_extensions import mypyc_attr

if TYPE_CHECKING:
    from backends.sim.engine import Simulation


@mypyc_attr(native_class=False)  # (a builtin exception's subclass stays a Python class if compiled)
class SimInvariantError(AssertionError):
    """The simulation broke one of its own invariants (a bug, never a result)."""


def recount(sim: Simulation) -> None:
    """Full recount of every invariant of ``sim``; raises ``SimInvariantError``. Advances the
    time watermark ``sim._last_t`` (time must never go back between two recounts)."""
    mem, pool = sim.mem, sim.pool
    try:
        mem.check()
    except AssertionError as e:
        raise SimInvariantError(str(e)) from None
    members = pool.members()
    if len(members) != pool.n:
        raise SimInvariantError(f"decode pool holds {len(members)} members, counts {pool.n}")
    left = sum(m.max_out - (m.out - (m.fin_g - pool.g)) for m in members)
    if left != pool.left_tokens() or sum(m.max_out for m in members) != pool.sum_max or left < 0:
        raise SimInvariantError(f"decode pool: tokens left to generate {pool.left_tokens()} != recount {left}")
    if pool.clip:
        lc = sum(min(m.max_out - (m.out - (m.fin_g - pool.g)), pool.clip) for m in members)
        if lc != pool.left_clipped():
            raise SimInvariantError(f"decode pool: clipped tokens left {pool.left_clipped()} != recount {lc}")
    priv = sum(r.priv for r in sim.prefilling) + (sum(r.priv for r in members) if sim.reserve else 0)
    if priv != sim.priv_explicit:
        raise SimInvariantError(f"explicit private blocks {priv} != counter {sim.priv_explicit}")
    dec = 0
    if pool.grow:
        dec = sum(sim._blocks_for(m.b + pool.g) for m in members)
        if dec != pool.blocks(pool.g) or dec != pool.cur:
            raise SimInvariantError(f"decode pool blocks {pool.blocks(pool.g)} (kept {pool.cur}) != recount {dec}")
    if mem.free + priv + dec + mem.cached != mem.total:
        raise SimInvariantError(f"KV blocks not conserved: free {mem.free} + private {priv + dec} + "
                                f"cached {mem.cached} != total {mem.total}")
    if sim.tiers is not None:
        seq = [0] * len(sim.tiers.tiers)
        for r in sim.swapped:
            seq[r.tier] += sim._blocks_for(r.computed)
        try:
            sim.tiers.check(seq)
        except AssertionError as e:
            raise SimInvariantError(str(e)) from None
    held = sum(1 for r in sim.prefilling if r.hold != -1)
    if held != sim.n_held or (held and not sim.async_loads):
        raise SimInvariantError(f"{sim.n_held} requests counted as held, {held} running ones are "
                                f"(asynchronous tier loads: {sim.async_loads})")
    if sim.n_running() > sim.policy.max_num_seqs:
        raise SimInvariantError(f"{sim.n_running()} running > max_num_seqs {sim.policy.max_num_seqs}")
    if sim.t < sim._last_t:
        raise SimInvariantError(f"time went back from {sim._last_t} to {sim.t}")
    sim._last_t = sim.t
    for m in members:
        if m.fin_g < pool.g:
            raise SimInvariantError(f"request {m.rid} stayed after its last token")
    if sim.lora is not None:
        try:
            sim.lora.check([q.adapter for q in sim.prefilling + members])
        except AssertionError as e:
            raise SimInvariantError(str(e)) from None
    if sim.fair is not None:
        try:
            sim.waiting.check()
        except AssertionError as e:
            raise SimInvariantError(str(e)) from None


__all__ = ["SimInvariantError", "recount"]
