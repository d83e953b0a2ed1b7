"""Per-request state of one simulation, and the lazily advanced pool of decoding sequences.

vLLM V1's single rule: each request has ``num_tokens`` known tokens (prompt + generated) and
``computed`` tokens whose KV exists; every step computes a chunk so that ``computed`` catches
up with ``num_tokens``; when it does, one token is sampled (``gen`` += 1, ``num_tokens`` += 1).
A prefill, a recompute after preemption and a decode step are the same thing at different
chunk sizes.

``DecodePool`` holds the sequences that are past their prefill. In a decode step every one of
them computes one token, so their state is kept relative to a global step counter ``G``:
sequence i has ``computed = b_i + S_i + G`` and finishes when ``G`` reaches ``fin_G``. Sums
(context, private KV blocks) are O(1) (blocks: O(block_size) worst case) at any ``G``, so many
decode iterations can be skipped in one step without touching each sequence.
"""

from __future__ import annotations

import heapq

WAITING, PREFILL, DECODE, SWAPPED, DONE = range(5)


class Req:
    """Mutable state of one request while it is inside the simulation (plain class, slotted)."""

    __slots__ = (
        "rid", "arrival", "prompt", "out", "max_out", "prio", "ttft_slo_s", "num_tokens", "computed",
        "gen", "first_token", "preemptions", "ids", "shared", "priv", "state", "b", "q", "r",
        "fin_g", "ver", "retries", "adm", "tier", "adapter", "hold", "hold_t", "t_last", "pre", "gstar",
    )

    def __init__(self, rid: int, arrival: float, prompt: int, out: int, max_out: int, prio: int,
                 ids: tuple[int, ...], shared: int) -> None:
        self.rid = rid
        self.arrival = arrival          # s
        self.prompt = prompt            # tokens
        self.out = out                  # output tokens this request will produce
        self.max_out = max_out          # its max_tokens (what a request-level reservation sees)
        self.prio = prio
        self.ttft_slo_s = 0.0           # TTFT target, s (admission control)
        self.num_tokens = prompt        # known tokens: prompt + generated
        self.computed = 0               # tokens with KV on the GPU
        self.gen = 0                    # generated tokens
        self.first_token = -1.0         # s, -1 until the first token
        self.preemptions = 0
        self.ids = ids                  # prefix-cache block ids of full prompt blocks (may be empty)
        self.shared = shared            # tokens held in prefix-cache entries (len(ids) × block tokens)
        self.priv = 0                   # private KV blocks held explicitly (not in the DecodePool)
        self.state = WAITING
        self.b = self.q = self.r = 0    # DecodePool offsets (see DecodePool)
        self.fin_g = 0                  # DecodePool step at which the last token is sampled
        self.ver = 0                    # bumps when leaving the pool (lazy heap deletion)
        self.retries = 0                # admission deferrals so far
        self.adm = 0                    # admission order (running-list position)
        self.tier = -1                  # lower KV tier holding its paged-out KV (tiers.py), -1: none
        self.adapter = -1               # LoRA adapter index, -1 = base model
        self.hold = -1                  # KV loading from a tier (asynchronous loads): the step that issued it;
        #                                 -2: loaded, computes from the next step; -1: not held
        self.hold_t = 0.0               # s, when that load finishes
        self.t_last = -1.0              # s, its last token before a preemption (its next one is an ITL
        #                                 sample across the wait); -1: none pending
        self.pre = prompt               # tokens its last prefill covers (prompt + tokens generated before it)
        self.gstar = -1                 # DecodePool step from which it may still generate at most
        #                                 ``clip`` tokens; -1: not counted in the pool's clip sums

    @property
    def victim_key(self) -> tuple[int, float, int]:
        """Preemption order: the largest key is preempted first (priority value, then arrival)."""
        return (self.prio, self.arrival, self.rid)


class DecodePool:
    """Decoding sequences advanced by a global step counter (see module doc).

    For sequence i with private KV tokens ``p_i(G) = b_i + G`` (``b_i = computed − shared − G``
    when it joined), private blocks are ceil(p_i/bs) = q_i + g + [r_i ≥ bs − h] with
    ``q_i, r_i = divmod(b_i + bs − 1, bs)`` and ``g, h = divmod(G, bs)``. Keeping Σq and a
    histogram of r makes Σ blocks O(bs). ``grow=False`` (request-level reservation) keeps
    no block accounting: the reservation is held explicitly in ``Req.priv``.
    """

    __slots__ = ("bs", "grow", "g", "n", "sum_b", "sum_s", "sum_q", "cnt", "heap", "_seq", "cur", "sum_left", "sum_max",
                 "clip", "long", "long_sum", "long_n")

    def __init__(self, block_size: int, grow: bool) -> None:
        self.bs = block_size
        self.grow = grow
        self.g = 0              # global decode step counter G
        self.n = 0              # sequences in the pool
        self.sum_b = 0          # Σ b_i
        self.sum_s = 0          # Σ shared_i
        self.sum_q = 0          # Σ q_i
        self.cnt = [0] * block_size
        self.cur = 0            # Σ private blocks at g (kept incrementally; = blocks(g))
        self.sum_left = 0       # Σ (fin_g + max_out − out): left_tokens() = this − n·g
        self.sum_max = 0        # Σ max_out
        self.clip = 0           # > 0: also keep Σ min(tokens left, clip) (left_clipped; SGLang's estimate)
        self.long: list[tuple[int, int, int, Req]] = []  # (gstar, order, ver, req) of members with more left
        self.long_sum = 0       # Σ gstar of those still above the clip
        self.long_n = 0
        self.heap: list[tuple[int, int, int, Req]] = []  # (fin_g, order, ver, req)
        self._seq = 0

    # -------------------------------------------------------------- queries
    def ctx(self, g: int | None = None) -> int:
        """Σ KV tokens (computed) of the pool's sequences at step g (default: now)."""
        return self.sum_b + self.sum_s + self.n * (self.g if g is None else g)

    def left_tokens(self) -> int:
        """Σ over the members of the tokens they may still generate (max_out − generated)."""
        return self.sum_left - self.n * self.g

    def left_clipped(self) -> int:
        """Σ over the members of min(tokens they may still generate, ``clip``) (``clip`` > 0)."""
        long, g = self.long, self.g
        while long and long[0][0] <= g:  # no longer above the clip (or gone)
            _, _, ver, req = heapq.heappop(long)
            if ver == req.ver and req.gstar >= 0:
                self.long_sum -= req.gstar
                self.long_n -= 1
                req.gstar = -1
        return self.left_tokens() - (self.long_sum - self.long_n * g)

    def priv_tokens(self) -> int:
        """Σ private KV tokens now."""
        return self.sum_b + self.n * self.g

    def blocks(self, g: int) -> int:
        """Σ private KV blocks of the pool's sequences at step g (0 without growth)."""
        if not self.grow or not self.n:
            return 0
        gg, h = divmod(g, self.bs)
        extra = sum(self.cnt[self.bs - h:]) if h else 0
        return self.sum_q + self.n * gg + extra

    def next_step_blocks(self) -> int:
        """Blocks the next decode step allocates: members whose next token starts a block."""
        if not self.grow or not self.n:
            return 0
        return self.cnt[self.bs - 1 - self.g % self.bs]

    def advance(self, n: int) -> int:
        """Advance G by n decode steps; returns the blocks the members allocated meanwhile."""
        g = self.g + n
        if not self.grow or not self.n:
            self.g = g
            return 0
        if n == 1:
            d = self.cnt[self.bs - 1 - self.g % self.bs]
        else:
            d = self.blocks(g) - self.cur
        self.g = g
        self.cur += d
        return d

    def steps_fitting(self, avail: int, limit: int) -> int:
        """Largest n <= limit with blocks(G+n) − blocks(G) <= avail."""
        if not self.grow or not self.n:
            return limit
        n, bs, g0 = self.n, self.bs, self.g
        k = avail // n
        if k * bs >= limit:
            return limit
        base = self.cur
        lo, hi = k * bs, min(limit, (k + 1) * bs)  # need(lo) <= avail; search (lo, hi]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.blocks(g0 + mid) - base <= avail:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def next_finish(self) -> int:
        """Step count G at which the earliest pool member samples its last token (or -1)."""
        heap = self.heap
        while heap and heap[0][2] != heap[0][3].ver:
            heapq.heappop(heap)
        return heap[0][0] if heap else -1

    def pop_finished(self) -> list[tuple[Req, int]]:
        """Remove members whose last token was sampled at or before the current G; returns
        (request, private blocks it held) pairs."""
        heap, g, out = self.heap, self.g, []
        while heap and heap[0][0] <= g:
            _, _, ver, req = heapq.heappop(heap)
            if ver == req.ver:
                out.append((req, self.remove(req)))
        return out

    # ------------------------------------------------------------ mutation
    def add(self, req: Req) -> None:
        """Join after the sample that followed the request's last prefill chunk."""
        b = req.computed - req.shared - self.g
        req.b = b
        self.n += 1
        self.sum_b += b
        self.sum_s += req.shared
        if self.grow:
            q, r = divmod(b + self.bs - 1, self.bs)
            req.q, req.r = q, r
            self.sum_q += q
            self.cnt[r] += 1
            self.cur += -(-(b + self.g) // self.bs) if b + self.g > 0 else 0
        req.fin_g = self.g + req.out - req.gen
        self.sum_left += req.fin_g + req.max_out - req.out
        self.sum_max += req.max_out
        if self.clip and req.max_out - req.gen > self.clip:
            req.gstar = self.g + req.max_out - req.gen - self.clip
            self.long_sum += req.gstar
            self.long_n += 1
            self._seq += 1
            heapq.heappush(self.long, (req.gstar, self._seq, req.ver, req))
        req.state = DECODE
        self._seq += 1
        heapq.heappush(self.heap, (req.fin_g, self._seq, req.ver, req))

    def remove(self, req: Req) -> int:
        """Leave the pool: bring ``computed``/``gen``/``num_tokens`` up to date; returns the
        private blocks the sequence holds now (0 without growth)."""
        g = self.g
        self.n -= 1
        self.sum_b -= req.b
        self.sum_s -= req.shared
        self.sum_left -= req.fin_g + req.max_out - req.out
        self.sum_max -= req.max_out
        if req.gstar >= 0:  # (still counted above the clip; its heap entry goes stale with ver)
            self.long_sum -= req.gstar
            self.long_n -= 1
            req.gstar = -1
        req.computed = req.b + req.shared + g
        req.gen = req.out - (req.fin_g - g)
        req.num_tokens = req.prompt + req.gen
        req.ver += 1
        if not self.grow:
            return 0
        self.sum_q -= req.q
        self.cnt[req.r] -= 1
        p = req.b + g
        k = -(-p // self.bs) if p > 0 else 0
        self.cur -= k
        return k

    def members(self) -> list[Req]:
        """Current members (O(pool); for checks and preemption scans)."""
        return [e[3] for e in self.heap if e[2] == e[3].ver]
