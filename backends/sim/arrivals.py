"""Arrivals of one Simulation: requests enter in arrival order, read in chunks from the
workload's columns (no per-request object until a request arrives), pass admission control,
and join the waiting queue; deferred ones come back through a retry heap.

A base layer of ``engine.Simulation`` (``Scheduling`` → ``Arrivals`` → ``Simulation``): it declares
the state it reads, which ``Simulation.__init__`` builds.
"""

from __future__ import annotations

import heapq
import math
from collections import deque

import numpy as np

from backends.sim.admission import AdmissionControl, Verdict
from backends.sim.request_state import Req
from backends.sim.scheduler import Scheduling
from tuner.policy import Policy
from workloads.workload import Workload

ARRIVAL_CHUNK = 8192


class Arrivals(Scheduling):
    """Arrival stream and admission control: the second layer of ``Simulation`` (see
    ``scheduler.Scheduling``). It declares the state it reads beyond that layer's;
    ``Simulation.__init__`` builds it."""

    w: Workload
    policy: Policy
    n_stream: int                  # rows that arrive by themselves (the rest are injection slots)
    max_len: int                   # tokens
    admission: AdmissionControl
    _parked: list[tuple[int, Req]]
    prefilled: np.ndarray | None
    retry: list[tuple[float, int, Req]]
    recent_done: deque[float]
    rejected: np.ndarray
    c_defer: int
    _seq: int
    _next: int                     # row of the next arrival
    _ta: float                     # s, time of the next arrival
    _c0: int                       # first row of the loaded chunk
    _ca: list[float]               # the chunk's columns, as Python lists
    _cp: list[int]
    _co: list[int]
    _cm: list[int]
    _cr: list[int]
    _cs: list[float]
    _cl: list[int] | None
    _cf: list[bool] | None         # the chunk's later turns of multi-turn sessions (sent by their parent)
    kids: dict[int, list[int]]
    released: np.ndarray | None

    def n_waiting(self) -> int:
        """Waiting requests, those set aside for want of a LoRA slot included."""
        return len(self.waiting) + len(self._parked)

    # ============================================================== arrivals
    def _load_chunk(self, i0: int) -> None:
        w, i1 = self.w, min(self.n_stream, i0 + ARRIVAL_CHUNK)
        self._c0 = i0
        self._ca = w.arrival_s[i0:i1].tolist()
        self._cp = w.prompt_len[i0:i1].tolist()
        self._co = w.output_len[i0:i1].tolist()
        self._cm = w.max_output[i0:i1].tolist()
        self._cr = w.priority[i0:i1].tolist()
        self._cs = (self.w.ttft_slo_ms()[i0:i1] / 1e3).tolist()
        self._cl = w.adapter[i0:i1].tolist() if self.lora is not None else None  # type: ignore[index]
        self._cf = (w.parent[i0:i1] >= 0).tolist() if self.released is not None else None  # type: ignore[index]

    def _new_req(self, i: int) -> Req | None:
        """Row ``i`` of the arrival stream (its chunk loaded), or None: a later turn of a session
        (sent when its parent finishes: ``Simulation._next_turns``), or a prompt that does not fit."""
        k = i - self._c0
        if self._cf is not None and self._cf[k]:
            return None
        return self._make_req(i, self._ca[k], self._cp[k], self._co[k], self._cm[k], self._cr[k], self._cs[k],
                              self._cl[k] if self._cl is not None else -1, ())

    def _row_req(self, i: int, t: float, head: tuple[int, ...]) -> Req | None:
        """Request ``i`` (a later turn of a session) sent at ``t`` s, read from the workload's
        columns; its prefix entries are ``head`` (the previous turn's, prompt and output) then its
        own listed ones."""
        w = self.w
        return self._make_req(i, t, int(w.prompt_len[i]), int(w.output_len[i]), int(w.max_output[i]),
                              int(w.priority[i]), float(w.slo_classes[int(w.slo_class[i])].ttft_ms) / 1e3,
                              int(w.adapter[i]) if self.lora is not None else -1, head)  # type: ignore[index]

    def _make_req(self, i: int, t: float, prompt: int, out: int, max_out: int, prio: int, slo_s: float,
                  adapter: int, head: tuple[int, ...]) -> Req | None:
        """Request ``i`` arriving at ``t`` s with ``out`` tokens to generate (``max_out`` allowed)
        cut to the model's context; None (failed) when its prompt leaves no room to generate."""
        room = self.max_len - prompt
        if room < 1:
            self.failed[i] = True
            return None
        ids = self._prefix_ids(i, prompt, head)
        req = Req(i, t, prompt, min(out, room), min(max_out, room), prio, ids, len(ids) * self.pbt)
        req.ttft_slo_s = slo_s
        req.adapter = adapter
        return req

    def _prefix_ids(self, i: int, prompt: int, head: tuple[int, ...]) -> tuple[int, ...]:
        """The prefix-cache entries of request ``i`` within its prompt: ``head`` (a previous turn's),
        then its own listed block ids; none for a prefilled request (its KV arrives whole from
        elsewhere: private blocks, no prefix-cache use)."""
        if not self.pbt or (self.prefilled is not None and self.prefilled[i]):
            return ()
        k = prompt // self.pbt
        ids = head[:k]
        off = self.w.prefix_offsets
        if off is not None and len(ids) < k:
            n = min(int(off[i + 1] - off[i]), k - len(ids))  # type: ignore[index]
            if n:
                ids = tuple(dict.fromkeys(ids + tuple(self.w.prefix_ids[off[i]: off[i] + n].tolist())))  # type: ignore[index]
        return ids

    def _enqueue(self, req: Req) -> None:
        if self.prefilled is not None and self.prefilled[req.rid] and not req.preemptions:
            self.transferred.append(req)
        else:
            self.waiting.push(req)
            self.queued_tokens += req.num_tokens

    def _arrive(self, req: Req) -> None:
        if not self.admission.active:
            self._enqueue(req)
            return
        recent = self.recent_done
        rate = (len(recent) - 1) / (self.t - recent[0]) if len(recent) > 1 and self.t > recent[0] else 0.0
        v = self.admission.decide(req.prompt, req.ttft_slo_s, self.n_waiting(), self.mem.avail,
                                  self.queued_tokens, req.retries, rate)
        if v is Verdict.ACCEPT:
            self._enqueue(req)
        elif v is Verdict.DEFER:
            req.retries += 1
            self.c_defer += 1
            self._seq += 1
            heapq.heappush(self.retry, (max(self.t, req.arrival) + self.policy.defer_s, self._seq, req))
        else:
            self.rejected[req.rid] = True

    def _arrivals(self, t: float) -> None:
        """Admission decisions for every arrival and deferral retry due by ``t`` (s: now, or
        the start of the step in flight when the engine plans a step ahead), in time order."""
        n, retry = self.n_stream, self.retry
        while True:
            i = self._next
            ta = self._ta
            tr = retry[0][0] if retry else math.inf
            if ta <= tr:
                if ta > t:
                    return
                req = self._new_req(i)  # (reads row i's chunk: before the next chunk replaces it)
                self._next = i + 1
                if i + 1 < n:
                    if i + 1 - self._c0 >= len(self._ca):
                        self._load_chunk(i + 1)
                    self._ta = self._ca[i + 1 - self._c0]
                else:
                    self._ta = math.inf
                if req is not None:
                    self._arrive(req)
            else:
                if tr > t:
                    return
                self._arrive(heapq.heappop(retry)[2])

    def _next_event(self) -> float:
        if self.retry:
            tr = self.retry[0][0]
            return tr if tr < self._ta else self._ta
        return self._ta
