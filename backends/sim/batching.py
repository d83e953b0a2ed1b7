"""BatchPlanner: which tokens the next iteration computes (``Policy.batching``).

A planner returns the prefill chunks of the next iteration as ``[(req, tokens), ...]`` and
whether the decoding sequences run in it; it admits waiting requests through
``sim.admit`` (which checks seats and KV memory) — taking the waiting request ``sim.head()``
names (the queue's head, past requests whose LoRA adapter finds no slot) — and grows running prefills through
``sim.grow_chunk``. Decodes always take one token each, first (the engine has already
brought swapped-out sequences back and reserved the decodes' next KV blocks). When a planner
returns no chunks, the engine runs a decode-only segment (many iterations in closed form)
until the next event.

  static          FasterTransformer-style: when nothing runs, take up to max_num_seqs waiting
                  requests as one batch (memory reserved for prompt + max_tokens), prefill them
                  in one iteration, decode until the whole batch is done; no joins.
  continuous      vLLM V0 (ORCA iteration-level, prefill-first): while waiting requests can be
                  admitted, an iteration runs only their full prefills (up to the token budget,
                  a longer prompt alone), stalling decodes; otherwise a decode iteration.
  chunked         vLLM V1 / Sarathi: a token budget per step; decodes first, then prefill chunks
                  of running-then-waiting requests fill the rest (``long_prefill_token_threshold``
                  caps one chunk). No prefill/decode phases: computed tokens catch up with known
                  tokens within a budget. A step that preempted to make room for the decodes
                  admits no waiting request (vLLM V1), so a victim does not rejoin at once.
  decode_maximal  Sarathi decode-maximal batching: like chunked, but at most one prefill chunk
                  per iteration, sized to what the decodes leave of the budget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backends.sim.engine import Simulation
    from backends.sim.request_state import Req

Chunks = list[tuple["Req", int]]


def plan_chunked(sim: Simulation, one_prefill: bool = False) -> tuple[Chunks, bool]:
    """Token-budget step (chunked / decode_maximal)."""
    budget = sim.budget - sim.pool.n
    cap = sim.chunk_cap
    chunks: Chunks = []
    if budget <= 0:
        return chunks, True
    for req in sim.prefilling:
        if req.hold != -1:  # its prefix KV still loads from a tier
            continue
        c = req.num_tokens - req.computed
        if c > budget:
            c = budget
        if c > cap:
            c = cap
        c = sim.grow_chunk(req, c)
        if c:
            chunks.append((req, c))
            if sim.cache_at_schedule:
                sim.publish(req, req.computed + c)
            budget -= c
            if budget <= 0 or one_prefill:
                return chunks, True
    if sim.no_admit:  # vLLM V1 schedules no waiting request in a step that preempted
        return chunks, True
    waiting = sim.waiting
    while budget > 0 and waiting and sim.seats_free():
        head = sim.head()
        if head is None:
            break
        c = sim.admit(head, budget if budget < cap else cap, first=not chunks)
        if not c:
            break
        if c < 0:  # admitted, held while its prefix KV loads from a tier
            continue
        chunks.append((sim.prefilling[-1], c))
        budget -= c
        if one_prefill:
            break
    return chunks, True


def plan_decode_maximal(sim: Simulation) -> tuple[Chunks, bool]:
    return plan_chunked(sim, one_prefill=True)


def plan_continuous(sim: Simulation) -> tuple[Chunks, bool]:
    """Prefill-first: full prefills of admissible waiting requests stall the decodes."""
    chunks: Chunks = []
    for req in sim.prefilling:  # resumed (swapped-in) partial prefills: finish them whole
        c = sim.grow_chunk(req, req.num_tokens - req.computed)
        if c:
            chunks.append((req, c))
    budget = sim.budget - sum(c for _, c in chunks)
    waiting = sim.waiting
    while waiting and sim.seats_free() and (budget > 0 or not chunks):
        head = sim.head()
        if head is None:
            break
        c = sim.admit(head, budget, first=not chunks, whole=True)
        if not c:
            break
        chunks.append((sim.prefilling[-1], c))
        budget -= c
    return chunks, not chunks


def plan_static(sim: Simulation) -> tuple[Chunks, bool]:
    """A new batch only when the previous one has drained."""
    chunks: Chunks = []
    if sim.n_running() or not sim.waiting:
        return chunks, True
    waiting = sim.waiting
    while waiting and sim.seats_free():
        req = sim.head()
        if req is None:
            break
        c = sim.admit(req, 1 << 60, first=not chunks, whole=True)
        if not c:
            break
        chunks.append((sim.prefilling[-1], c))
    return chunks, not chunks


PLANNERS = {
    "static": plan_static,
    "continuous": plan_continuous,
    "chunked": plan_chunked,
    "decode_maximal": plan_decode_maximal,
}
