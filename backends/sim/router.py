"""The request router of a simulated cluster, and its fluid estimate of each instance's load.

A real router does not see inside the instances. Like one, this router tracks what it sent
to each instance minus what it estimates has completed: every instance drains its outstanding
tokens (prompt + expected output) at a constant rate estimated from the ``CostModel`` (tokens/s
at the instance's typical batch, ``drain_rate``). That *fluid* estimate drives least_loaded
routing, the migration of queued requests, the disaggregation queue threshold and autoscaling.
The exact behaviour of each instance is then simulated by its own ``Simulation``.

Units: seconds, tokens. The router never draws random numbers: routing is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backends.sim.catalog import default_activation_reserve, kv_budget
from backends.sim.costmodel import CostModel
from tuner.policy import Policy
from workloads.workload import Workload

MIGRATION_MARGIN_S = 1.0
"""Llumnix-style migration moves requests while the most loaded instance's estimated backlog
(outstanding tokens / drain rate) exceeds the least loaded one's by more than this, s."""


@dataclass(frozen=True, slots=True)
class Drain:
    """Fluid service estimate of one instance: ``rate`` tokens/s (prompt + output) at a typical
    batch of ``batch`` requests, each ``req_tokens`` tokens on average."""

    rate: float
    batch: float
    req_tokens: float


def drain_rate(cm: CostModel, policy: Policy, mean_prompt: float, mean_output: float, kv_tokens: int) -> Drain:
    """Tokens/s one instance serves with ``batch`` = min(max_num_seqs, requests whose KV fits)
    requests in flight: their prefills one after another, then ``mean_output`` decode steps of
    the whole batch at its mean context (CostModel roofline)."""
    p, o = max(mean_prompt, 1.0), max(mean_output, 1.0)
    b = max(1, min(policy.max_num_seqs, int(kv_tokens // (p + o)) or 1))
    t_pre = b * cm.prefill_time(int(round(p)))
    base, per_ctx = cm.decode_affine(b)
    t_dec = (o - 1) * (base.time_s + per_ctx.time_s * b * (p + o / 2))
    return Drain(rate=b * (p + o) / max(t_pre + t_dec, 1e-9), batch=float(b), req_tokens=p + o)


def instance_drain(policy: Policy, cm: CostModel, w: Workload, *, output_tokens: float | None = None) -> Drain:
    """``drain_rate`` of an instance of ``policy.tp`` GPUs on ``w``'s mean request (the router
    knows the prompt length and the historical mean output, not each request's output)."""
    model, gpu = cm.model, cm.gpu
    bs = policy.block_size
    blocks = kv_budget(model, gpu, cm.tp, policy.gpu_memory_utilization, cm.weight_dtype, cm.kv_dtype, bs,
                       activation_reserve=default_activation_reserve(model, cm.tp, policy.max_num_batched_tokens),
                       expert_shards=cm.expert_dp)
    mp = float(w.prompt_len.mean()) if w.n else 1.0
    mo = float(w.output_len.mean()) if w.n else 1.0
    return drain_rate(cm, policy, mp, mo if output_tokens is None else output_tokens, blocks * bs)


_M64 = (1 << 64) - 1


def affinity_hash(block_id: int) -> int:
    """A request's replica key under prefix_affinity, from its first prefix block id: splitmix64's
    finaliser, whose every output bit depends on every input bit. (A multiplicative hash taken
    modulo the replica count keeps the key's low bits: with ids that are multiples of 1000, every
    request went to the same one of 2 or 4 replicas.)"""
    x = (block_id + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


class FluidRouter:
    """Routes requests over instances (indices into ``drains``) and keeps the fluid load.

    ``route(i, t, up)`` picks one of the instances ``up`` (those serving at time t) for request
    i of ``w``; ``add``/``remove`` change an instance's outstanding tokens at time t."""

    def __init__(self, mode: str, w: Workload, drains: list[Drain], *, expected_output: float | None = None) -> None:
        self.mode, self.w = mode, w
        self.drains: list[Drain] = list(drains)
        self.out: list[float] = [0.0] * len(drains)
        self.last: list[float] = [0.0] * len(drains)
        self._rr = 0
        mo = float(w.output_len.mean()) if w.n else 1.0
        self.exp_out = mo if expected_output is None else expected_output
        self._first = None
        if mode == "prefix_affinity" and w.prefix_offsets is not None:
            off = w.prefix_offsets
            has = off[1:] > off[:-1]
            first = np.full(w.n, -1, np.int64)
            first[has] = w.prefix_ids[off[:-1][has]]
            self._first = first

    def add_instance(self, drain: Drain) -> int:
        self.drains.append(drain)
        self.out.append(0.0)
        self.last.append(0.0)
        return len(self.drains) - 1

    def tokens(self, i: int) -> float:
        """What the router expects request i to cost: its prompt + the expected output, tokens."""
        return float(self.w.prompt_len[i]) + self.exp_out

    def load(self, k: int, t: float) -> float:
        """Outstanding tokens of instance k at time t (drained since the last update)."""
        o = self.out[k] - self.drains[k].rate * (t - self.last[k])
        return o if o > 0 else 0.0

    def backlog_s(self, k: int, t: float) -> float:
        """Seconds instance k needs to serve what it holds at time t (fluid estimate)."""
        return self.load(k, t) / self.drains[k].rate

    def waiting(self, k: int, t: float) -> float:
        """Estimated requests queued at instance k at time t (beyond its typical batch)."""
        d = self.drains[k]
        q = self.load(k, t) / d.req_tokens - d.batch
        return q if q > 0 else 0.0

    def add(self, k: int, t: float, tokens: float) -> None:
        self.out[k] = self.load(k, t) + tokens
        self.last[k] = t

    def route(self, i: int, t: float, up: list[int]) -> int:
        """The instance of ``up`` (non-empty) that request i goes to, and count it there."""
        if self.mode == "least_loaded":
            n, rr = len(self.drains), self._rr  # ties (idle instances) taken in turn
            k = min(up, key=lambda j: (self.backlog_s(j, t), (j - rr) % n))
            self._rr = k + 1
        elif self._first is not None and self._first[i] >= 0:
            k = up[affinity_hash(int(self._first[i])) % len(up)]
        else:
            k = up[self._rr % len(up)]
            self._rr += 1
        self.add(k, t, self.tokens(i))
        return k
