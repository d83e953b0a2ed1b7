"""VTC fairness (``Policy.queue = "vtc"``): per-tenant virtual token counters and the queue they order.

Sheng et al., "Fairness in Serving Large Language Models" (OSDI'24), Algorithm 2:
  * every tenant u (the workload's ``tenant`` column) has a counter c_u = (its weighted service)
    / w_u + lifts, where service = ``vtc_input_weight`` × prompt tokens + ``vtc_output_weight``
    × generated tokens and w_u is its ``Policy.tenant_weights`` share (default 1);
  * the waiting queue serves the backlogged tenant (one with a waiting request) with the
    smallest counter, FCFS within a tenant (ties: the tenant backlogged first);
  * a tenant that becomes backlogged is lifted to max(c_u, min c over backlogged tenants), or
    to the counter of the tenant that last left the queue when none is backlogged, so idle time
    banks no credit.
Charging: a request's prompt is charged once, when it is first admitted to the running set (the
paper's rule: its prefill starts; a recompute after preemption is not charged again; a request
popped because it can never fit is charged too, the one inexact case); every generated token is
charged when it is sampled. Decoding sequences advance lazily (``DecodePool``), so each tenant
keeps (decoding members n_u, Σ k_i) and its output tokens are out_u + n_u × G − Σ k_i at the
pool's step G: exact whenever the queue is consulted, O(1) per pool join/leave, no per-token work.
Preempted requests re-enter at the front, ahead of every tenant (as in ``queue.py``).

Tenant cap (``tenant_cap_tokens_s`` > 0): each tenant has a token bucket of depth cap ×
``CAP_BURST_S`` weighted tokens, refilled at cap per second and drained by its service (not
divided by its share weight), evaluated lazily when the queue is consulted. A tenant whose
bucket is empty (service over the recent window above the cap) is skipped while any uncapped
tenant waits. Work-conserving: when only capped tenants wait, the smallest counter goes anyway
(a cap reorders, it never idles the GPU). Cost: O(backlogged tenants) per queue consultation.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from mypy_extensions import mypyc_attr

from backends.sim.request_state import DecodePool, Req
from tuner.policy import Policy
from workloads.workload import Workload

CAP_BURST_S = 2.0  # token-bucket depth of the tenant cap, seconds of service at the cap


class TenantService:
    """Weighted service per tenant, exact at the decode pool's current step (tokens).

    ``inp[u]``: prompt tokens charged; ``out[u]``: generated tokens of requests outside the pool
    (minus, for members, the tokens they had when joining); ``n_dec[u]`` / ``sum_k[u]``: pool
    members and Σ (fin_g − out) over them, so a member's tokens are G − (fin_g − out).

    It also keeps each tenant's virtual counter as ``cb[u] + cs[u] × G`` (counter units:
    weighted tokens / share weight, plus the queue's lifts), updated with every change above,
    so the queue reads a counter in O(1)."""

    __slots__ = ("tenant", "w_in", "w_out", "inp", "out", "n_dec", "sum_k", "pool",
                 "inv_w", "wi_w", "wo_w", "cb", "cs")
    pool: DecodePool  # the CountingPool that keeps n_dec / sum_k (it sets this when built)

    def __init__(self, policy: Policy, workload: Workload) -> None:
        self.tenant: list[int] = workload.tenant.tolist()
        self.w_in, self.w_out = policy.vtc_input_weight, policy.vtc_output_weight
        k = len(workload.tenants)
        self.inp, self.out, self.n_dec, self.sum_k = [0] * k, [0] * k, [0] * k, [0] * k
        share = dict(policy.tenant_weights)
        self.inv_w = [1.0 / share.get(name, 1.0) for name in workload.tenants]
        self.wi_w = [self.w_in * x for x in self.inv_w]    # counter units per prompt token
        self.wo_w = [self.w_out * x for x in self.inv_w]   # counter units per output token
        self.cb = [0.0] * k                                 # counter at G = 0 (lifts included)
        self.cs = [0.0] * k                                 # counter growth per pool step

    def charge_prompt(self, u: int, tokens: int) -> None:
        """Tenant u's request starts its prefill: its ``tokens`` prompt tokens are charged."""
        self.inp[u] += tokens
        self.cb[u] += self.wi_w[u] * tokens

    def service(self, u: int) -> float:
        """Tenant u's weighted service so far (w_in × prompt + w_out × output tokens)."""
        return self.w_in * self.inp[u] + self.w_out * (self.out[u] + self.n_dec[u] * self.pool.g - self.sum_k[u])

    def output_tokens(self, u: int) -> int:
        return self.out[u] + self.n_dec[u] * self.pool.g - self.sum_k[u]

    def sampled(self, req: Req) -> None:
        """A prefill (or recompute) sampled one token of ``req`` outside the pool."""
        u = self.tenant[req.rid]
        self.out[u] += 1
        self.cb[u] += self.wo_w[u]


class CountingPool(DecodePool):
    """A DecodePool that keeps ``TenantService``'s per-tenant member sums (used only for vtc)."""

    __slots__ = ("svc",)

    def __init__(self, block_size: int, grow: bool, svc: TenantService) -> None:
        super().__init__(block_size, grow)
        self.svc = svc
        svc.pool = self

    def add(self, req: Req) -> None:
        super().add(req)
        s, u = self.svc, self.svc.tenant[req.rid]
        k = req.fin_g - req.out
        s.n_dec[u] += 1
        s.sum_k[u] += k
        s.out[u] -= req.gen
        w = s.wo_w[u]
        s.cb[u] -= w * (k + req.gen)
        s.cs[u] += w

    def remove(self, req: Req) -> int:
        blocks = super().remove(req)
        s, u = self.svc, self.svc.tenant[req.rid]
        k = req.fin_g - req.out
        s.n_dec[u] -= 1
        s.sum_k[u] -= k
        s.out[u] += req.gen
        w = s.wo_w[u]
        s.cb[u] += w * (k + req.gen)
        s.cs[u] -= w
        return blocks


@mypyc_attr(native_class=False)  # (a bytearray subclass stays a Python class when compiled)
class VTCQueue(bytearray):
    """The waiting queue ordered by virtual token counters (see module doc); the same
    push / push_front / peek / pop / len interface as ``queue.FCFSQueue``. ``pop`` removes what
    the last ``peek`` returned (the contract ``Scheduling.admit`` relies on) unless the queue
    changed since; otherwise the head chosen now.

    The requests live in per-tenant deques; the object itself is a bytearray holding one byte
    per waiting request, so ``len()`` and truth tests (several per engine step) are C calls."""

    __slots__ = ("svc", "by", "live", "front", "lift", "last", "_u", "_again",
                 "cap", "depth", "level", "lvl_t", "lvl_s", "clock")

    def __init__(self, svc: TenantService, policy: Policy, workload: Workload, clock: Callable[[], float]) -> None:
        k = len(workload.tenants)
        self.svc = svc
        self.by: list[deque[Req]] = [deque() for _ in range(k)]
        self.live: list[int] = []          # backlogged tenants, in the order they became so
        self.front: deque[Req] = deque()   # preempted requests, most recent first
        self.lift = [0.0] * k              # counter lifts (counter units)
        self.last = -1                     # tenant that last left the queue
        self._u = -1                       # tenant the last peek chose (-1: none / stale)
        self._again = -1                   # tenant whose head pop_entry just set aside: the next
        #                                    peek's pick (no charge, no other change in between)
        self.cap = policy.tenant_cap_tokens_s
        self.depth = self.cap * CAP_BURST_S
        self.level = [self.depth] * k      # token buckets (weighted tokens), at (lvl_t, lvl_s)
        self.lvl_t = [0.0] * k
        self.lvl_s = [0.0] * k
        self.clock = clock

    # -------------------------------------------------------------- queries
    def counters(self, tenants: Iterable[int]) -> list[float]:
        """The virtual counters of ``tenants`` now (weighted tokens / share weight + lifts)."""
        s = self.svc
        g, cb, cs = s.pool.g, s.cb, s.cs
        return [cb[u] + cs[u] * g for u in tenants]

    def check(self) -> None:
        """Recount every tenant's counter from its service and lift; raises AssertionError."""
        s = self.svc
        for u, (c, iw, lift) in enumerate(zip(self.counters(range(len(self.lift))), s.inv_w, self.lift, strict=True)):
            exact = s.service(u) * iw + lift
            if abs(c - exact) > 1e-9 * max(1.0, abs(exact)):
                raise AssertionError(f"VTC counter of tenant {u}: kept {c}, recount {exact}")

    def capped(self, u: int, t: float) -> bool:
        """Whether tenant u's bucket is empty at time t (updates the bucket lazily)."""
        s = self.svc.service(u)
        lvl = self.level[u] + self.cap * (t - self.lvl_t[u]) - (s - self.lvl_s[u])
        self.level[u] = lvl if lvl < self.depth else self.depth
        self.lvl_t[u], self.lvl_s[u] = t, s
        return lvl <= 0.0

    def _pick(self) -> int:
        """The backlogged tenant served next (smallest counter, the earliest backlogged on ties;
        uncapped tenants first when capping)."""
        live = self.live
        if self.cap > 0:
            t = self.clock()
            free = [u for u in live if not self.capped(u, t)]
            if free:
                live = free
        best = live[0]
        if len(live) > 1:  # (inline counters: the first smallest counter)
            s = self.svc
            g, cb, cs = s.pool.g, s.cb, s.cs
            low = cb[best] + cs[best] * g
            for u in live:
                c = cb[u] + cs[u] * g
                if c < low:
                    best, low = u, c
        return best

    def __iter__(self) -> Iterator[Req]:  # type: ignore[override]  # (the bytes are a count)
        yield from self.front
        for q in self.by:
            yield from q

    def peek(self) -> Req:
        if self.front:
            return self.front[0]
        u = self._again
        if u < 0:
            u = self._pick()
        else:
            self._again = -1
        self._u = u
        return self.by[u][0]

    # ------------------------------------------------------------- mutation
    def push(self, req: Req) -> None:
        u = self.svc.tenant[req.rid]
        q = self.by[u]
        self._u = self._again = -1
        if not q:  # newly backlogged: lift to the backlogged minimum (or the last to leave)
            live = self.live
            if live or (self.last >= 0 and self.last != u):
                svc = self.svc
                g, cb, cs = svc.pool.g, svc.cb, svc.cs
                ref = math.inf  # (inline min(self.counters(live or [self.last])))
                for v in live or (self.last,):
                    x = cb[v] + cs[v] * g
                    if x < ref:
                        ref = x
                c = cb[u] + cs[u] * g
                if c < ref:
                    self.lift[u] += ref - c
                    cb[u] += ref - c
            live.append(u)
        q.append(req)
        self.append(0)

    def push_front(self, req: Req) -> None:
        self._u = self._again = -1
        self.front.appendleft(req)
        self.append(0)

    def pop(self) -> Req:  # type: ignore[override]  # (the queue's pop, not bytearray's)
        u, req = self.pop_entry()
        self._again = -1
        if u >= 0:
            if not self.by[u]:
                self.last = u
            self.svc.charge_prompt(u, req.prompt)  # (only fresh requests wait here: preempted ones use the front)
        return req

    def pop_entry(self) -> tuple[int, Req]:
        """Set the head aside uncharged (LoRA: its adapter has no slot now) → (its tenant, or -1
        for a preempted request, and the request); ``restore`` puts it back where it was."""
        del self[-1]
        if self.front:
            return -1, self.front.popleft()
        u = self._u if self._u >= 0 else self._pick()
        self._u = -1
        q = self.by[u]
        req = q.popleft()
        if q:  # counters unchanged (nothing charged): the same tenant is picked next
            self._again = u
        else:
            self._again = -1
            self.live.remove(u)
        return u, req

    def set_aside(self, running: dict, out: list) -> Req | None:
        """``pop_entry`` into ``out`` every head whose LoRA adapter is not in ``running``, as
        successive peeks would meet them; return the first that may run (the head now, for
        ``pop``), or None (inline peek / pop_entry: the LoRA walk's hot loop)."""
        front = self.front
        while front:
            req = front[0]
            a = req.adapter
            if a < 0 or a in running:
                return req
            out.append((-1, front.popleft()))
            del self[-1]
        live, by = self.live, self.by
        u, self._again = self._again, -1
        while live:
            if u < 0:
                u = self._pick()
            q = by[u]
            while q:
                req = q[0]
                a = req.adapter
                if a < 0 or a in running:
                    self._u = u
                    return req
                out.append((u, q.popleft()))
                del self[-1]
            live.remove(u)
            u = -1
        self._u = -1
        return None

    def restore(self, entries: list[tuple[int, Req]]) -> None:
        """Put entries taken by ``pop_entry`` back at the heads of their queues, in their order
        (a tenant set aside whole stays backlogged: no lift)."""
        self._u = self._again = -1
        self.extend(bytes(len(entries)))
        for u, req in reversed(entries):
            if u < 0:
                self.front.appendleft(req)
                continue
            q = self.by[u]
            if not q:
                self.live.append(u)
            q.appendleft(req)
