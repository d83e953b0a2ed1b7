"""Admission control: what to do with an arriving request before it joins the waiting queue.

Three independent tests (each off by default), any of which refuses the request:
  queue depth   ``max_queue_depth`` requests already wait;
  KV headroom   free KV (free + evictable blocks) is below ``min_kv_headroom`` of the pool;
  TTFT          ``ttft_admission``: predicted TTFT exceeds the request's TTFT SLO, where
                predicted = (prefill tokens queued ahead) × (s per prefill token at a full
                token budget) + CostModel.prefill_time(own prompt).
A refused request is rejected, or deferred (``admission_action``): it arrives again after
``defer_s`` and is tested again, up to ``MAX_DEFERRALS`` times (a client's retry budget: 8 s at
the default 0.5 s back-off), then rejected.
Ordering (which waiting request goes first) is ``queue.py``'s business, not this module's.
"""

from __future__ import annotations

import enum

from backends.sim.costmodel import CostModel
from tuner.policy import Policy

MAX_DEFERRALS = 16
RATE_WINDOW = 32


class Verdict(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    DEFER = "defer"


class AdmissionControl:
    """Per-run admission decisions (no state beyond the policy and cost estimates)."""

    __slots__ = ("active", "depth", "headroom", "ttft", "defer", "s_per_token", "_prefill_s", "cm")

    def __init__(self, policy: Policy, cm: CostModel, total_blocks: int) -> None:
        self.depth = policy.max_queue_depth
        self.headroom = int(policy.min_kv_headroom * total_blocks)
        self.ttft = policy.ttft_admission
        self.defer = policy.admission_action == "defer"
        self.active = bool(self.depth or self.headroom or self.ttft)
        b = policy.max_num_batched_tokens
        self.s_per_token = cm.prefill_time(b) / b
        self.cm = cm
        self._prefill_s: dict[int, float] = {}

    def predicted_ttft_s(self, prompt: int, queued_tokens: int, waiting: int = 0, done_rate: float = 0.0) -> float:
        """Predicted TTFT (s) of a prompt arriving behind ``queued_tokens`` prefill tokens of
        ``waiting`` requests, with requests completing at ``done_rate`` per s (0 = unknown)."""
        own = self._prefill_s.get(prompt)
        if own is None:
            own = self._prefill_s[prompt] = self.cm.prefill_time(prompt)
        wait = queued_tokens * self.s_per_token
        if waiting and done_rate > 0 and waiting / done_rate > wait:
            wait = waiting / done_rate
        return wait + own

    def decide(self, prompt: int, ttft_slo_s: float, waiting: int, avail_blocks: int,
               queued_tokens: int, retries: int, done_rate: float = 0.0) -> Verdict:
        """The verdict for one arrival given the instance's state now."""
        if not self.active:
            return Verdict.ACCEPT
        refuse = (
            (self.depth and waiting >= self.depth)
            or (self.headroom and avail_blocks < self.headroom)
            or (self.ttft and self.predicted_ttft_s(prompt, queued_tokens, waiting, done_rate) > ttft_slo_s)
        )
        if not refuse:
            return Verdict.ACCEPT
        if self.defer and retries < MAX_DEFERRALS:
            return Verdict.DEFER
        return Verdict.REJECT
