"""QueueManager: a pure ordering of the waiting queue (admission is ``admission.py``).

Orders (``Policy.queue``):
  fcfs        arrival order (a deque: O(1)).
  sjf         shortest prompt first (ties: arrival).
  sjf_output  shortest *predicted* output first. The predictor is imperfect on purpose:
              predicted = output_len × exp(σ·z), z ~ N(0, 1) per request, σ = 0.5, drawn from
              the run's own RNG (so a seed fixes it). A perfect oracle would overstate SJF.
  priority    lowest ``priority`` value first, then arrival (vLLM's convention).
  edf         earliest deadline first: arrival + the request's TTFT SLO.
  vtc         virtual token counters per tenant (``fairness.VTCQueue``; built by the engine,
              which counts the tenants' service in its decode pool).
``pop_entry`` / ``restore`` set requests aside and put them back in place (requests skipped
for want of a LoRA slot keep their position). Preempted requests re-enter at the FRONT (vLLM:
``waiting.prepend_request``), most recently
preempted first, ahead of every order's key.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable

import numpy as np
from mypy_extensions import mypyc_attr

from backends.sim.request_state import Req
from workloads.workload import Workload

SJF_OUTPUT_SIGMA = 0.5


@mypyc_attr(native_class=False)  # (builtin container subclasses stay Python classes when compiled)
class FCFSQueue(deque):
    """Arrival order; preempted requests go to the front (a deque: len/push/pop are C calls)."""

    __slots__ = ()
    push = deque.append
    push_front = deque.appendleft
    pop = deque.popleft
    pop_entry = deque.popleft

    def restore(self, entries: list) -> None:
        """Put entries taken by ``pop_entry`` back at the front, in their order."""
        self.extendleft(reversed(entries))

    def set_aside(self, running: dict, out: list) -> Req | None:
        """Move head entries whose LoRA adapter is not in ``running`` into ``out`` (``pop_entry``
        entries, in order); return the new head (base model or a running adapter), or None."""
        while self:
            req = self[0]
            a = req.adapter
            if a < 0 or a in running:
                return req
            out.append(self.popleft())
        return None

    def peek(self) -> Req:
        return self[0]


@mypyc_attr(native_class=False)
class KeyedQueue(list):
    """A heap ordered by ``key(req)`` (smaller first); preempted requests ahead of all."""

    __slots__ = ("_key", "_seq")

    def __init__(self, key: Callable[[Req], object]) -> None:
        super().__init__()
        self._key = key
        self._seq = 0

    def push(self, req: Req) -> None:
        self._seq += 1
        heapq.heappush(self, (1, self._key(req), self._seq, req))

    def push_front(self, req: Req) -> None:
        self._seq += 1
        heapq.heappush(self, (0, (), -self._seq, req))

    def peek(self) -> Req:
        return self[0][3]

    def pop(self) -> Req:  # type: ignore[override]
        return heapq.heappop(self)[3]

    def pop_entry(self) -> tuple:
        """Take the head with its key (``restore`` puts it back where it was)."""
        return heapq.heappop(self)

    def restore(self, entries: list) -> None:
        for e in entries:
            heapq.heappush(self, e)

    def set_aside(self, running: dict, out: list) -> Req | None:
        """As ``FCFSQueue.set_aside``."""
        while self:
            req = self[0][3]
            a = req.adapter
            if a < 0 or a in running:
                return req
            out.append(heapq.heappop(self))
        return None

    def __iter__(self):
        return (e[3] for e in list.__iter__(self))


def make_queue(order: str, workload: Workload, rng: np.random.Generator) -> FCFSQueue | KeyedQueue:
    """The waiting queue for ``order`` (a ``Policy.queue`` value other than vtc: see ``fairness.py``).

    Keys read the workload's columns by request id, so they cost nothing per request.
    """
    if order == "fcfs":
        return FCFSQueue()
    if order == "vtc":
        raise ValueError("queue=vtc is built by engine.Simulation (fairness.VTCQueue over its decode pool)")
    if order == "sjf":
        return KeyedQueue(lambda r: (r.prompt, r.arrival))
    if order == "sjf_output":
        noise = np.exp(SJF_OUTPUT_SIGMA * rng.standard_normal(workload.n))
        pred = (workload.output_len * noise).tolist()
        return KeyedQueue(lambda r: pred[r.rid])
    if order == "priority":
        return KeyedQueue(lambda r: (r.prio, r.arrival))
    if order == "edf":
        slo_s = (workload.ttft_slo_ms() / 1e3).tolist()
        return KeyedQueue(lambda r: r.arrival + slo_s[r.rid])
    raise ValueError(f"policy knob queue={order!r}: unknown queue order")
