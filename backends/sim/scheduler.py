"""Scheduling actions on one Simulation's running set: admit, grow a prefill, swap in, preempt.

These are the query/mutate steps the BatchPlanner (``batching.py``) and the engine loop call;
each keeps the KV books exact (``memory.BlockManager`` + explicit ``Req.priv`` + the lazily
grown ``DecodePool``). The first base layer of ``engine.Simulation`` (``Scheduling`` →
``Arrivals`` → ``Simulation``): it declares the state it reads, which ``Simulation.__init__`` builds.

Preemption (token-level): when a decoding sequence cannot get its next block, victims leave the
running set in order of (priority value, arrival) descending (vLLM: the last of the running
list). Without a lower KV tier (``tiers.py``) the victim goes to the FRONT of the waiting queue to
prefill prompt + generated tokens again (recompute); with prefix caching its computed full blocks
stay in the prefix cache as its own evictable entries (``_cache_victim``: vLLM hashes and keeps
every full block; SGLang keeps only what the victim's last prefill computed), so the recompute
hits what eviction has not taken since, and without prefix caching they are dropped. A step that preempted admits no waiting request (vLLM V1: the victim
rejoins from the next step at the earliest; ``no_admit``). With one (the
``preemption_mode=swap`` swap space, or the CPU/SSD offload tiers) its KV is paged out (CPU, else
SSD; transfer time added to the next iteration) and paged back in, before new requests are
admitted, once the GPU has room below the paging threshold; not on an engine without swap
(``EnginePreset.victims_to_tier``: vLLM V1, SGLang), whose victims recompute, their blocks the GPU
evicted coming back from the CPU tier as prefix hits while the tier holds them. That tier is written through
(``wt``, tiers.py): an admitted request stores the entries it hits or computes and refreshes them,
its private blocks pass through as anonymous runs as they are allocated, and a request leaving
(finished or preempted) refreshes its entries. With prefix caching and offload
tiers, an admission's prefix hit run continues through entries held in a tier: they are loaded
(transfer time) instead of recomputed. With the engine's asynchronous tier loads
(``EnginePreset.kv_tier_async``, vLLM V1) the batch does not wait for such a load: the admitted
request is held (``Req.hold``, no tokens computed) until the load has finished by the end of a
step, and computes from the step after the next one (``release_holds``).

LoRA (``lora.py``): a request joins the running set only while its adapter holds one of the
``max_loras`` slots (``AdapterSlots.acquire``; a load's PCIe time goes to the next iteration)
and gives it back when it finishes or is preempted.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from backends.sim.engines import DecodeReserve
from backends.sim.lora import AdapterSlots
from backends.sim.memory import BlockManager
from backends.sim.request_state import DECODE, PREFILL, SWAPPED, WAITING, DecodePool, Req
from backends.sim.tiers import KVTiers

VICTIM_IDS = 1 << 64
"""Prefix-cache ids of a preempted request's own blocks (``Scheduling._cache_victim``) start here:
past every int64 workload id. Request ``rid``'s entry j is ``VICTIM_IDS + rid * VICTIM_ID_SPAN + j``."""
VICTIM_ID_SPAN = 1 << 32


class Scheduling:
    """Admission into the running set and preemption out of it: the first layer of
    ``Simulation`` (``Scheduling`` → ``arrivals.Arrivals`` → ``Simulation``, single inheritance
    so that mypyc can compile them as native classes). It declares the state it reads;
    ``Simulation.__init__`` builds it."""

    bs: int                        # KV block size, tokens
    pbt: int                       # tokens per prefix-cache entry (0: no prefix caching)
    cache_at_schedule: bool        # prefix entries hittable once scheduled (EnginePreset.prefix_cache_at_schedule)
    mem: BlockManager
    pool: DecodePool
    lora: AdapterSlots | None
    tiers: KVTiers | None
    wt: KVTiers | None             # the tiers when they are written through (vLLM V1's connector), else None
    victim_prompt_only: bool       # a recompute victim keeps only what its last prefill computed (SGLang)
    dres: DecodeReserve | None     # KV set aside for the running requests' future tokens (SGLang admission)
    ratio: float                   # its new_token_ratio now
    waiting: Any                   # the waiting queue (queue.py / fairness.VTCQueue)
    prefilling: list[Req]
    swapped: deque[Req]
    transferred: deque[Req]
    _fresh: list[tuple[Req, int]]
    _resumed: list[tuple[Req, int]]  # paged-out decodes back in the pool: next token ends an ITL gap across the wait
    seat_cap: int
    reserve: bool
    watermark: int                 # blocks
    headroom: int                  # blocks
    page_victims: bool
    keep_victim_kv: bool           # recompute victims leave their computed blocks in the prefix cache
    tier_hits: bool
    priv_explicit: int             # blocks
    queued_tokens: int
    pending_s: float
    t: float                       # s
    steps: int                     # iterations run so far
    n_held: int                    # admitted requests waiting for an asynchronous tier load
    async_loads: bool              # tier loads are asynchronous (EnginePreset.kv_tier_async)
    _adm: int
    round_adm: int                 # ``_adm`` when this plan began: later admissions are this round's
    no_admit: bool                 # a step that preempted admits no waiting request (vLLM V1)
    lagged: int                    # seats still held at this plan by requests that finished in the last step
    finishing: int                 # requests finished in the step running now (become ``lagged``)
    kv_lagged: int                 # blocks they still hold at this plan (kept out of the free pool while planning)
    kv_finishing: int              # blocks given back by requests finished in the step running now
    c_preempt: int
    c_swapped: int
    c_pq: int
    c_ph: int
    c_paged: int
    c_tier_hit: int
    cached: np.ndarray
    failed: np.ndarray
    out_done: np.ndarray
    preempts: np.ndarray

    # ================================================================ queries
    def n_running(self) -> int:
        return len(self.prefilling) + self.pool.n

    def seats_free(self) -> bool:
        """A seat is free for this plan. Under async scheduling (``EnginePreset.schedule_ahead``)
        a request that finished in the step just run still holds its seat: this plan was made
        when that step started, before its output was processed (``lagged``)."""
        return len(self.prefilling) + self.pool.n + self.lagged < self.seat_cap

    def publish(self, req: Req, tokens: int) -> None:
        """The prefix entries of ``req`` within its first ``tokens`` tokens are computed, or are
        scheduled to be under ``cache_at_schedule``: later requests may hit them."""
        k = tokens // self.pbt if self.pbt else 0
        if k > 0 and req.ids:
            self.mem.mark_ready(req.ids[:k])

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.bs) if tokens > 0 else 0

    # ============================================================== admission
    def admit(self, req: Req, limit: int, first: bool, whole: bool = False) -> int:
        """Move the waiting head ``req`` into the running set with a first chunk of at most
        ``limit`` tokens (``whole``: its whole prefill, which may exceed ``limit`` only when
        ``first``). Returns the chunk, or 0 (nothing changed) when seats, budget or KV memory
        (keeping the watermark free) do not allow it, or -1 when it was admitted but is held:
        its prefix loads asynchronously from a lower tier, nothing is computed yet."""
        mem = self.mem
        ids = req.ids
        cached = 0
        load = None
        if ids:
            h = mem.hits(ids)
            if self.tier_hits and h < len(ids):
                self.tiers.flush()  # type: ignore[union-attr]
                h, load = mem.hits_through(ids, h, self.tiers.where)  # type: ignore[union-attr]
            cached = min(h * self.pbt, (req.num_tokens - 1) // self.bs * self.bs)  # whole blocks; >= 1 token computed
        held = bool(load) and self.async_loads
        c = req.num_tokens - cached
        if held:
            c = 0
        elif whole:
            if c > limit and not first:
                return 0
        elif c > limit:
            c = limit
        if self.reserve:
            priv = self._blocks_for(req.prompt + req.max_out - req.shared)
        else:
            priv = self._blocks_for(cached + c - req.shared)
        need = priv + (mem.claim_blocks(ids) if ids else 0)
        wm = self.watermark if self.n_running() else 0
        if mem.avail - need < wm:
            return 0
        if self.dres is not None and self.n_running() and not self._reserve_fits(req, cached):
            return 0
        self.waiting.pop()
        self.queued_tokens -= req.num_tokens
        if self.lora is not None:
            self.pending_s += self.lora.acquire(req.adapter)
        if ids:
            if load:
                ls = 0.0  # (the held request's load time; otherwise each move goes to the next step)
                for i in load:
                    s = self.tiers.load_entry(i)  # type: ignore[union-attr]
                    if held:
                        ls += s
                    else:
                        self.pending_s += s
                self.c_tier_hit += len(load) * self.pbt
                if held:
                    req.hold, req.hold_t = self.steps, self.t + ls
                    self.n_held += 1
            mem.acquire(ids)
            if load:
                mem.mark_ready(load)
            if self.cache_at_schedule and not held:
                self.publish(req, cached + c)
            if self.wt is not None:  # stores its entries as it computes them, refreshes its hits
                self.wt.write_entries(ids)
        if self.wt is not None:
            self.wt.write_anon(self._blocks_for(cached + c - req.shared))
        if self.pbt and not req.preemptions:  # hit rate of new requests (vLLM counts preempted ones apart)
            self.c_pq += req.prompt
            self.c_ph += cached
        mem.take(priv)
        req.priv = priv
        self.priv_explicit += priv
        req.computed = cached
        req.pre = req.num_tokens
        if not req.preemptions:
            self.cached[req.rid] = cached
        req.state = PREFILL
        self._adm += 1
        req.adm = self._adm
        self.prefilling.append(req)
        return -1 if held else c

    def _reserve_fits(self, req: Req, cached: int) -> bool:
        """SGLang's admission (``DecodeReserve``): the free and evictable KV tokens, less ``ratio`` ×
        what the running requests may still generate (at most ``clip`` tokens each) and less the
        whole remaining ``max_tokens`` of those admitted earlier in this round, cover this request's
        prefill and its whole remaining ``max_tokens`` (clipped likewise)."""
        clip, r0 = self.pool.clip, self.round_adm
        left = self.pool.left_clipped()
        full = 0  # requests admitted in this round count their tokens in full (``PrefillAdder``)
        for r in self.prefilling:
            k = min(r.max_out - r.gen, clip)
            if r.adm > r0:
                full += k
            else:
                left += k
        free = self.mem.avail * self.bs - self.ratio * left - full
        return req.num_tokens - cached + min(req.max_out - req.gen, clip) <= free

    def retracted(self) -> None:
        """After a retraction (SGLang): the ratio becomes (Σ generated + retract_steps × running) /
        Σ max_tokens over the decoding requests left, at most 1."""
        d, pool = self.dres, self.pool
        if d is None or not pool.n:
            return
        gen = pool.sum_max - pool.left_tokens()
        self.ratio = min(1.0, (gen + d.retract_steps * pool.n) / max(pool.sum_max, 1))

    def release_holds(self) -> None:
        """Before planning a step: a held request whose load finished by the end of the previous
        step (and was issued before it) is seen ready now and computes from the next step (with
        async scheduling this one is planned already); one seen ready before computes now."""
        t, k = self.t, self.steps
        for req in self.prefilling:
            h = req.hold
            if h == -2:
                req.hold = -1
                self.n_held -= 1
            elif h >= 0 and k > h and t >= req.hold_t:
                req.hold = -2

    def grow_chunk(self, req: Req, c: int) -> int:
        """Allocate KV for a running prefill's next chunk of ``c`` tokens; shrink it to what
        the free blocks allow (0: none)."""
        if self.reserve or c <= 0:
            return max(c, 0)
        mem = self.mem
        new = self._blocks_for(req.computed + c - req.shared)
        d = new - req.priv
        if d > 0:
            avail = mem.avail
            if d > avail:
                c = (req.priv + avail) * self.bs + req.shared - req.computed
                if c <= 0:
                    return 0
                new = self._blocks_for(req.computed + c - req.shared)
                d = new - req.priv
            mem.take(d)
            req.priv = new
            self.priv_explicit += d
            if self.wt is not None:
                self.wt.write_anon(d)
        return c

    def swap_in(self) -> None:
        """Page paged-out sequences back in (oldest first) while seats and blocks allow, keeping
        the watermark and the paging threshold's headroom free."""
        mem, swapped = self.mem, self.swapped
        while swapped and self.seats_free():
            req = swapped[0]
            kv = self._blocks_for(req.computed)
            if mem.avail - kv - 1 < (max(self.watermark, self.headroom) if self.n_running() else 0):
                return  # (+1: room for its next block)
            if self.lora is not None:
                if not self.lora.can_run(req.adapter):
                    return
                self.pending_s += self.lora.acquire(req.adapter)
            swapped.popleft()
            mem.take(kv)
            self.pending_s += self.tiers.load_seq(req.tier, kv)  # type: ignore[union-attr]
            self.c_swapped += kv
            req.priv = kv
            self.priv_explicit += kv
            if req.computed == req.num_tokens or (req.gen and req.computed == req.num_tokens - 1):
                # decoding (its next token), or prefilled elsewhere and paged out before its first
                # decode step: nothing left to prefill, it samples from its first decode iteration
                self.priv_explicit -= kv
                req.priv = 0
                self.pool.add(req)
                if req.computed == req.num_tokens:
                    self._fresh.append((req, req.ver))
                elif req.t_last >= 0:
                    self._resumed.append((req, req.ver))
            else:
                req.state = PREFILL
                self.prefilling.append(req)

    def admit_transferred(self) -> None:
        """Admit prefilled requests (prompt KV computed elsewhere) straight into the decoding
        pool, FCFS, while seats and blocks allow: their prompt's blocks (+1 for the next token)
        are allocated, nothing is computed."""
        mem, q = self.mem, self.transferred
        while q and self.seats_free():
            req = q[0]
            kv = self._blocks_for(req.prompt + req.max_out) if self.reserve else self._blocks_for(req.prompt)
            if mem.avail - kv - 1 < (self.watermark if self.n_running() else 0):
                return
            if self.lora is not None:
                if not self.lora.can_run(req.adapter):
                    return
                self.pending_s += self.lora.acquire(req.adapter)
            q.popleft()
            mem.take(kv)
            req.computed = req.prompt
            self._adm += 1
            req.adm = self._adm
            if self.reserve:
                req.priv = kv
                self.priv_explicit += kv
            self.pool.add(req)
            self._fresh.append((req, req.ver))

    # ============================================================= preemption
    def _victim(self) -> Req:
        cands = self.prefilling + self.pool.members()
        return max(cands, key=lambda r: r.victim_key)

    def preempt(self, req: Req) -> None:
        """Evict ``req`` from the running set: page its KV down a tier or drop it for recompute."""
        mem = self.mem
        if req.state == DECODE:
            blocks = self.pool.remove(req)
            if self.reserve:
                blocks = req.priv
                self.priv_explicit -= blocks
        else:
            self.prefilling.remove(req)
            blocks = req.priv
            self.priv_explicit -= blocks
            if req.hold != -1:  # preempted while its KV loads: the load's copy is dropped with it
                req.hold = -1
                self.n_held -= 1
        mem.give(blocks)
        req.priv = 0
        if self.lora is not None:
            self.lora.release(req.adapter)
        req.preemptions += 1
        self.c_preempt += 1
        if req.gen and req.t_last < 0:  # its last token came out with the step that just ended (unless
            req.t_last = self.t         # it is preempted again before its next one: the gap runs on)
        kv = self._blocks_for(req.computed)
        # Page out only while other sequences keep running: with none left, a paged-out request would
        # come straight back and be preempted again (a livelock); it recomputes instead.
        tier = self.tiers.store_seq(kv) if self.page_victims and kv and self.pool.n else -1  # type: ignore[union-attr]
        if tier < 0 and self.keep_victim_kv:
            self._cache_victim(req, blocks)
        if self.wt is not None and req.ids:
            # refreshed each time the request stored a block (vLLM then touches all its blocks):
            # most recent in the tier as it leaves
            self.wt.touch(req.ids)
        if req.ids:
            mem.release(req.ids)
        if tier >= 0:
            req.tier = tier
            self.c_paged += 1
            self.pending_s += self.tiers.move_s(tier, kv)  # type: ignore[union-attr]
            self.c_swapped += kv
            req.ids, req.shared = (), 0   # its whole KV comes back as private blocks
            req.state = SWAPPED
            self.swapped.append(req)
        else:
            req.computed = 0
            req.state = WAITING
            self.waiting.push_front(req)
            self.queued_tokens += req.num_tokens

    def _cache_victim(self, req: Req, blocks: int, keep: int = -1) -> None:
        """Recompute preemption with prefix caching: the victim's computed full blocks beyond its
        prefix entries (prompt and generated tokens) become prefix-cache entries of its own, ready
        and unreferenced (evictable), so that its recompute hits whatever LRU eviction has not taken
        by then. vLLM's automatic prefix caching hashes every full block a request computes and keeps
        it on free; SGLang's radix cache keeps only what the request's last prefill computed
        (``victim_prompt_only``, ``EnginePreset.victim_keeps_output``: the tokens decoded since are
        freed). ``blocks``: the private blocks it just gave back (the entries take at most those).
        ``keep`` (tokens) overrides that rule: a finished turn of a session keeps its prompt and
        output (both engines cache a finished request's blocks) for the next turn."""
        mem = self.mem
        if keep < 0:
            keep = min(req.computed, req.pre) if self.victim_prompt_only else req.computed
        n = min((keep - req.shared) // self.pbt, blocks // mem.entry_blocks)
        if n <= 0:
            return
        k = len(req.ids)
        base = VICTIM_IDS + req.rid * VICTIM_ID_SPAN + k
        own = tuple(range(base, base + n))
        mem.acquire(own)  # (out of the blocks just given back: evicts nothing)
        mem.mark_ready(own)
        if self.wt is not None:  # (written through, anonymously, as they were computed: named now)
            self.wt.name_written(own)
        req.ids = req.ids + own
        req.shared += n * self.pbt

    def _fail(self, req: Req) -> None:
        """Drop a running request that can never fit (alone, it outgrows the KV pool)."""
        self.preempt(req)
        self.c_preempt -= 1
        if req.state == WAITING:
            self.waiting.pop()
            self.queued_tokens -= req.num_tokens
        else:
            self.swapped.pop()
            self.tiers.drop_seq(req.tier, self._blocks_for(req.computed))  # type: ignore[union-attr]
        self.failed[req.rid] = True
        self.preempts[req.rid] = req.preemptions - 1
        self.out_done[req.rid] = req.gen

    def _make_room_for_decodes(self) -> int:
        """Preempt until every decoding sequence can get its next block; returns that need."""
        pool, mem = self.pool, self.mem
        while True:
            need = pool.next_step_blocks()
            if need <= mem.free + mem.evictable:
                return need
            if self.n_running() == 1:
                self._fail(self.pool.members()[0])
                return 0
            self.preempt(self._victim())
            self.retracted()
