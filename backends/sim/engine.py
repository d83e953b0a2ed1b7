"""The iteration loop of one simulated serving instance (event-driven, O(1) per event).

Each pass of the loop is one *step* at an iteration boundary: admit arrivals (admission
control → waiting queue), make sure the decoding sequences can get their next KV block
(preempting victims if not), ask the BatchPlanner for prefill chunks, then either run ONE
iteration (prefill chunks + all decodes) or, when no prefill is scheduled, a decode-only
*segment*: the batch is fixed until the next event, so n iterations are priced in closed form
(``CostModel`` decode time is affine in the summed context) with
n = min(steps to the earliest finish, steps to the next arrival that could join, steps until
the free KV blocks run out). Sequence state in the decode pool advances lazily
(``request_state.DecodePool``), so a segment costs O(1) whatever its length and batch.

Units: seconds, tokens, KV blocks. Invariants are checked every step in O(block_size)
(KV blocks conserved, running <= max_num_seqs, token budget, monotone time); with
``check=True`` a full recount runs every step (tests; ``invariants.recount``). A violation raises
``SimInvariantError``: a broken simulation is never scored.
"""

from __future__ import annotations

import heapq
import math
from collections import deque

import numpy as np

from backends.base import Deployment
from backends.sim.admission import RATE_WINDOW, AdmissionControl
from backends.sim.arrivals import Arrivals
from backends.sim.batching import PLANNERS
from backends.sim.calibrated import calibration_of
from backends.sim.catalog import context_len, default_activation_reserve, get_gpu, get_model, kv_budget
from backends.sim.chrome_trace import TraceWriter
from backends.sim.costmodel import weight_bytes_per_gpu
from backends.sim.engines import get_engine
from backends.sim.fairness import CountingPool, TenantService, VTCQueue
from backends.sim.invariants import SimInvariantError, recount
from backends.sim.itl_counter import ITLCounter
from backends.sim.lora import AdapterSlots, LoraCost
from backends.sim.memory import BlockManager
from backends.sim.profiled import instance_cost_model
from backends.sim.queue import make_queue
from backends.sim.request_state import DecodePool, Req
from backends.sim.speculation import Speculator
from backends.sim.telemetry import TelemetryRecorder
from backends.sim.tiers import tier_rules
from tuner.policy import Policy
from workloads.adapters import adapter_rank, uses_adapters
from workloads.workload import Workload

STALL_ITERATIONS = 1_000_000
"""Iterations in a row that sample no token before the run is declared livelocked (a bug: e.g.
prefill chunks computed and thrown away by preemption over and over). The longest legitimate
stretch is one prompt's chunked prefill: 128k tokens at a 16-token budget is 8,192 steps."""


class Simulation(Arrivals):
    """One run of one policy on one workload on one instance (tp GPUs). Use ``run()`` once.

    This class holds the state and the loop; the scheduling actions admit/grow/swap-in/preempt
    (``scheduler.py``) and arrivals (``arrivals.py``) are its base layers over the same state."""

    def __init__(self, policy: Policy, workload: Workload, deployment: Deployment, *, seed: int = 0,
                 check: bool = False, trace: bool = False, max_sim_time_s: float | None = None,
                 segment_cap: int = 0, prefilled: np.ndarray | None = None, n_stream: int | None = None,
                 expert_dp: int = 1) -> None:
        """``segment_cap`` (tests): most decode iterations per segment (1 = step every iteration,
        the brute-force reference for the closed-form skipping; 0 = no cap).
        ``prefilled`` (bool per request, or None): requests whose prompt KV was computed
        elsewhere (a prefill instance, disaggregated serving). On admission such a request
        allocates its prompt's KV blocks (all private: no prefix-cache hits) but computes
        nothing; it joins the decoding pool at once and its first output token is sampled by
        its first decode iteration. Prefilled requests are admitted FCFS ahead of the waiting
        queue (they hold no prefill work); a prefilled request preempted by recompute
        prefills normally afterwards.
        ``n_stream`` (default: all): only the first n_stream rows arrive by themselves; the
        others are slots that ``inject`` fills (live migration into this instance).
        ``expert_dp``: data-parallel ranks this instance is one of; with an engine whose ranks
        share an MoE model's experts (``EnginePreset.dp_shares_experts``) its steps and weights
        are those of one such rank (``CostModel.sharing_experts``); otherwise ignored."""
        self.policy, self.w, self.dep = policy, workload, deployment
        self.segment_cap = segment_cap or (1 << 62)
        self.check_full = check
        self.rng = np.random.default_rng(seed)
        if prefilled is not None:
            prefilled = np.asarray(prefilled, dtype=bool)
            if prefilled.shape != (workload.n,):
                raise ValueError(f"prefilled: needs one bool per request ({workload.n}), got shape {prefilled.shape}")
        self.prefilled = prefilled if prefilled is not None and prefilled.any() else None
        self.transferred: deque[Req] = deque()  # prefilled requests waiting for KV blocks and a seat
        self._fresh: list[tuple[Req, int]] = []  # (joined the pool with gen=0, its ver): first token due
        self._resumed: list[tuple[Req, int]] = []  # (paged back into the pool mid-decode, its ver): see _itl
        model, gpu = get_model(deployment.model), get_gpu(deployment.gpu)
        tp = policy.tp
        engine = get_engine(deployment.engine)
        self.cm = cm = instance_cost_model(model, gpu, tp, deployment.weight_dtype, deployment.kv_dtype, engine,
                                           deployment.profile, deployment.cost_model, calibration_of(deployment))
        if expert_dp < 1:
            raise ValueError(f"expert_dp={expert_dp}: must be >= 1")
        if engine.dp_shares_experts:  # (a dense model's cost model stays as it is)
            cm = self.cm = cm.sharing_experts(expert_dp)
        self.expert_dp = cm.expert_dp
        bs = self.bs = policy.block_size
        B = policy.max_num_batched_tokens
        total = kv_budget(model, gpu, tp, policy.gpu_memory_utilization, deployment.weight_dtype,
                          deployment.kv_dtype, bs, activation_reserve=default_activation_reserve(model, tp, B),
                          expert_shards=self.expert_dp)
        self.spec: Speculator | None = None
        if policy.speculation != "off":
            draft = None
            if policy.speculation == "draft":
                dm = get_model(policy.spec_draft_model)
                draft = instance_cost_model(dm, gpu, tp, deployment.weight_dtype, deployment.kv_dtype, engine,
                                            deployment.profile, deployment.cost_model)
                # the draft's weights and its own KV (same tokens, its bytes per token) share the pool
                total -= int(weight_bytes_per_gpu(dm, tp, deployment.weight_dtype) // (bs * cm.kv_bytes_per_token))
                total = int(total * cm.kv_bytes_per_token / (cm.kv_bytes_per_token + draft.kv_bytes_per_token))
                if total < 1:
                    raise ValueError(f"policy knob spec_draft_model={policy.spec_draft_model!r}: the draft model "
                                     "leaves no KV memory")
            self.spec = Speculator(policy, workload, cm, draft)
        self.c_draft = self.c_acc = self._spec_frac = 0.0
        self.lora: AdapterSlots | None = None  # LoRA slots (backends/sim/lora.py), None without adapters
        self.lora_blocks = 0
        if uses_adapters(workload):
            rank = adapter_rank(workload)
            self.lora_cost = LoraCost(cm, rank)
            # max_loras adapter slots are allocated before the KV cache (vLLM): they shrink it
            self.lora_blocks = -(-int(policy.max_loras * self.lora_cost.bytes_adapter) // int(bs * cm.kv_bytes_per_token))
            total -= self.lora_blocks
            if total < 1:
                raise ValueError(f"policy knob max_loras={policy.max_loras}: {policy.max_loras} LoRA slots of rank "
                                 f"{rank} leave no KV memory")
            self.lora = AdapterSlots(policy.max_loras, self.lora_cost.bytes_adapter / gpu.pcie_bytes_s)
        self._parked = []           # waiting entries set aside for want of a LoRA slot (see _lora_head)
        self._park_ver = 0          # lora.version at which they were all seen unable to run
        # prefix-cache entry size, tokens: the workload's prefix blocks; without any, KV blocks
        # (only a preempted request's own blocks are cached then: Scheduling._cache_victim)
        self.pbt = (workload.prefix_block_tokens if workload.prefix_offsets is not None else bs) \
            if policy.prefix_caching else 0
        self.mem = BlockManager(total, bs, self.pbt)
        self.reserve = policy.preemption == "request" or policy.batching == "static"
        # lower KV tiers and how this engine uses them (tiers.tier_rules)
        rules = tier_rules(policy, engine, total_blocks=total, tp=tp, block_bytes_gpu=bs * cm.kv_bytes_per_token,
                           pcie_bytes_s=gpu.pcie_bytes_s, entry_blocks=self.mem.entry_blocks, reserve=self.reserve)
        self.tiers = tiers = rules.tiers
        self.wt = tiers if tiers is not None and tiers.write_through else None  # (write-through stores)
        self.tier_hits = tiers is not None and tiers.caching  # hit runs continue into the tiers
        self.async_loads = rules.async_loads
        self.threshold, self.page_above, self.headroom = rules.threshold, rules.page_above, rules.headroom
        self.page_victims = rules.page_victims
        self.keep_victim_kv = self.pbt > 0 and not self.reserve  # else a recompute victim's KV is dropped
        self.victim_prompt_only = not engine.victim_keeps_output  # (SGLang: its decoded tokens are freed)
        self.dres = engine.decode_reserve  # (SGLang's admission: KV set aside for future decode tokens)
        self.ratio = self.dres.init if self.dres is not None else 0.0
        self.idle_step_s = engine.iteration_overhead_s  # an engine step with nothing to compute, s
        # the next step is planned when this one starts; not with n-gram or draft-model speculation,
        # which turn vLLM's async scheduling off (only EAGLE-style and GPU n-gram drafts keep it) and
        # SGLang's overlap scheduler
        self.ahead = engine.schedule_ahead and policy.speculation == "off"
        self.cache_at_schedule = engine.prefix_cache_at_schedule and self.pbt > 0
        self.t_vis = 0.0  # arrivals up to this time are visible to the scheduler now, s
        if self.tier_hits and self.wt is None:  # (written through: what the GPU evicts is there, or LRU-dropped)
            self.mem.demote = self._demote
        self.c_tier_hit = self.c_paged = 0  # prefix tokens loaded from a tier; preemptions paged out
        self._tier_busy = 0.0  # tiers.busy_s at the last step check
        self.fair = TenantService(policy, workload) if policy.queue == "vtc" else None  # VTC (fairness.py)
        self.pool = DecodePool(bs, grow=not self.reserve) if self.fair is None else \
            CountingPool(bs, not self.reserve, self.fair)
        if self.dres is not None:
            self.pool.clip = self.dres.clip
        self.budget = B
        self.chunk_cap = policy.long_prefill_token_threshold or (1 << 60)
        self.seat_cap = min(policy.max_num_seqs, B) if policy.batching in ("chunked", "decode_maximal") \
            else policy.max_num_seqs
        self.watermark = int(policy.kv_watermark * total)
        self.planner = PLANNERS[policy.batching]
        self.waiting = make_queue(policy.queue, workload, self.rng) if self.fair is None else \
            VTCQueue(self.fair, policy, workload, clock=lambda: self.t)
        self.head = self.waiting.peek if self.lora is None else self._lora_head
        self.admission = AdmissionControl(policy, cm, total)
        self.max_len = context_len(model, deployment.max_model_len)
        self.max_t = math.inf if max_sim_time_s is None else float(max_sim_time_s)
        # running state
        self.prefilling: list[Req] = []
        self.swapped: deque[Req] = deque()
        self.priv_explicit = 0      # Σ Req.priv of running sequences (blocks)
        self.t = 0.0
        self.pending_s = 0.0        # KV tier transfer time to add to the next iteration, s
        self.steps = 0              # iterations so far (asynchronous tier loads count them)
        self._pf_steps = 0          # iterations that ran a prefill chunk, and their summed time, s
        self._pf_time = 0.0         # (the lockstep of data-parallel ranks sharing experts: _lockstep_wait)
        self._stall = 0             # iterations in a row that sampled no token
        self.stall_limit = STALL_ITERATIONS
        self.n_held = 0             # admitted requests whose prefix KV still loads (Req.hold)
        self.lagged = self.finishing = 0  # seats held one plan longer under schedule_ahead (seats_free)
        self.kv_lagged = self.kv_finishing = 0  # their private KV blocks, likewise
        self.queued_tokens = 0      # Σ prefill tokens of waiting requests (admission's TTFT guess)
        self.retry: list[tuple[float, int, Req]] = []
        self._adm = 0
        self.round_adm = 0
        self._seq = 0
        self._next = 0              # index of the next arrival
        self._c0 = 0
        self._ca = []
        self._cf = None
        self._ta = math.inf         # time of the next arrival
        self._ran = False
        self._last_t = 0.0
        self.n_done = 0
        self.recent_done: deque[float] = deque(maxlen=RATE_WINDOW + 1)  # finish times (admission's rate)
        self.stopped = 0
        self.static = policy.batching == "static"
        self.chunked = policy.batching in ("chunked", "decode_maximal")
        self._coef: dict[int, tuple[float, float, float, float, float, float]] = {}
        # records
        n = self.n = workload.n
        self.n_stream = n if n_stream is None else n_stream
        self._served = bytearray(n)
        self.first_tok = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.out_done = np.zeros(n, np.int64)
        self.preempts = np.zeros(n, np.int64)
        self.cached = np.zeros(n, np.int64)
        self.rejected = np.zeros(n, bool)
        self.failed = np.zeros(n, bool)
        # multi-turn sessions: a later turn is sent when its parent finishes (``_next_turns``)
        self.kids: dict[int, list[int]] = {}
        self.turn_lag = (0.0, 0.0)  # (steps, s) of client lag before the user sees a turn's last token
        self.released: np.ndarray | None = None  # s, when each request was sent (later turns: at run time)
        if workload.has_sessions:
            if self.prefilled is not None:
                raise ValueError("multi-turn sessions and prefilled (disaggregated) requests cannot be combined")
            par = workload.parent.tolist()  # type: ignore[union-attr]
            for i, p in enumerate(par):
                if p >= 0:
                    self.kids.setdefault(p, []).append(i)
            self.released = workload.arrival_s.copy()
        self.tel = TelemetryRecorder(total, bs)
        self.itl: ITLCounter = self.tel.itl  # (typed: a compiled call from the hot loop)
        self.trace = TraceWriter() if trace else None
        self.c_preempt = self.c_swapped = self.c_pq = self.c_ph = self.c_defer = 0
        self.c_prefill = 0     # prefill tokens computed (prompts, and again after a recompute preemption)
        self.no_admit = False  # this step preempted to make room for the decodes: admit no waiting request

    # ================================================================== LoRA
    def _lora_head(self) -> Req | None:
        """``head`` with LoRA slots: the first waiting request whose adapter may run now (vLLM
        skips the others and keeps them waiting). Those before it are set aside (``_parked``,
        still waiting: they count in the queue's length) until the set of running adapters
        changes, when ``_unpark`` puts them back in place: each is looked at once per change,
        not once per step. Every entry set aside could not run at ``lora.version`` = ``_park_ver``."""
        lora: AdapterSlots = self.lora  # type: ignore[assignment]  # (only called with LoRA slots)
        w = self.waiting
        if lora.version != self._park_ver:
            self._unpark()
        running = lora.running
        if len(running) < lora.max_loras:  # a free slot: any adapter may run (inline can_run)
            return w.peek() if w else None
        return w.set_aside(running, self._parked)

    def _unpark(self) -> None:
        self._park_ver = self.lora.version  # type: ignore[union-attr]
        if self._parked:
            self.waiting.restore(self._parked)
            self._parked.clear()

    def _lora_extra(self, chunks: list[tuple[Req, int]], decode_tokens: int) -> tuple[float, float, float]:
        """LoRA's extra (s, FLOPs, bytes) in one iteration: the chunks' adapter tokens and
        ``decode_tokens`` per decoding sequence with an adapter (running ones with an adapter
        minus those still prefilling)."""
        lora: AdapterSlots = self.lora  # type: ignore[assignment]  # (only called with LoRA slots)
        tok = 0
        if decode_tokens:
            tok = lora.n_lora
            for q in self.prefilling:
                if q.adapter >= 0:
                    tok -= 1
            tok *= decode_tokens
        for req, c in chunks:
            if req.adapter >= 0:
                tok += c
        return self.lora_cost.cost(tok, len(lora.running))

    # ============================================================ completion
    def _done(self, req: Req, t: float) -> None:
        rid = req.rid
        if self._served[rid]:
            raise SimInvariantError(f"request {rid} finished twice")
        self._served[rid] = 1
        kids = self.kids.pop(rid, None) if self.kids else None
        if kids is not None and self.pbt:  # its KV (prompt and output) stays cached for the next turn
            self._cache_victim(req, self.mem.free, req.prompt + req.gen - 1)
        if req.ids:
            self.mem.release(req.ids)
            if self.wt is not None:  # (its blocks were refreshed with its last store: most recent as it leaves)
                self.wt.touch(req.ids)
        if self.lora is not None:
            self.lora.release(req.adapter)
        self.finish[rid] = t
        self.out_done[rid] = req.gen
        self.preempts[rid] = req.preemptions
        self.n_done += 1
        if self.ahead:
            self.finishing += 1
        self.recent_done.append(t)
        if self.trace is not None:
            self.trace.request(rid, req.arrival, req.first_token, t, req.prompt, req.gen, req.preemptions)
        if kids is not None:
            self._next_turns(kids, t, req)

    def _next_turns(self, kids: list[int], t: float, req: Req) -> None:
        """Turn ``req`` finished at ``t``: each later turn ``kids`` (rows) is sent ``think_s`` after
        the client sees that (``turn_lag``: the client lag ``simulate`` adds to the records), not
        before its own ``arrival_s``, with ``req``'s prefix entries (its prompt's and output's
        KV) as the start of its prefix. It arrives through the retry heap."""
        w = self.w
        steps, lag = self.turn_lag
        if steps and req.gen >= 2:
            lag += steps * (t - req.first_token) / (req.gen - 1)
        ids = req.ids
        for i in kids:
            ta = max(t + lag + float(w.think_s[i]), float(w.arrival_s[i]))  # type: ignore[index]
            self.released[i] = ta  # type: ignore[index]
            nxt = self._row_req(i, ta, ids)
            if nxt is not None:
                self._seq += 1
                heapq.heappush(self.retry, (ta, self._seq, nxt))

    def _sampled(self, req: Req, t: float) -> None:
        """A prefill (or recompute) caught up: one token is sampled at time t."""
        req.gen += 1
        req.num_tokens += 1
        if self.fair is not None:
            self.fair.sampled(req)
        if req.first_token < 0:
            req.first_token = t
            self.first_tok[req.rid] = t
        elif req.t_last >= 0:  # recomputed after a preemption: this token ends the gap across the wait
            self.itl.add(t - req.t_last, 1.0)
            req.t_last = -1.0
        if req.ids:
            self.mem.mark_ready(req.ids)
        self.prefilling.remove(req)
        if req.gen >= req.out:
            self.mem.give(req.priv)
            if self.ahead:
                self.kv_finishing += req.priv
            self.priv_explicit -= req.priv
            req.priv = 0
            self._done(req, t)
        else:
            if self.pool.grow:
                self.priv_explicit -= req.priv
                req.priv = 0
            self.pool.add(req)

    def _pool_finished(self, t: float) -> None:
        mem = self.mem
        for req, blocks in self.pool.pop_finished():
            if req.priv:  # request-level reservation
                blocks += req.priv
                self.priv_explicit -= req.priv
                req.priv = 0
            mem.give(blocks)
            if self.ahead:
                self.kv_finishing += blocks
            self._done(req, t)

    # ============================================================ iterations
    def _coef_of(self, r: int) -> tuple[float, float, float, float, float, float]:
        """Decode-only iteration of r sequences: (time, FLOPs, bytes) = x0 + x1 × context."""
        c = self._coef.get(r)
        if c is None:
            base, per_ctx = self.cm.decode_affine(r)
            c = self._coef[r] = (base.time_s, per_ctx.time_s, base.flops, per_ctx.flops,
                                 base.hbm_bytes, per_ctx.hbm_bytes)
        return c

    def _iteration(self, chunks: list[tuple[Req, int]], decodes: bool) -> None:
        """One iteration: prefill chunks (+ one token for every decoding sequence)."""
        pool = self.pool
        r = pool.n if decodes else 0
        pf, pairs = 0, 0.0
        for req, c in chunks:
            pf += c
            pairs += c * (req.computed + (c + 1) * 0.5)
        if pf + r > self.budget and self.chunked:
            raise SimInvariantError(f"token budget exceeded: {pf + r} > {self.budget}")
        self.c_prefill += pf
        if r and self.dres is not None:  # (SGLang's new_token_ratio decays every decode step)
            self.ratio = max(self.dres.floor, self.ratio - self.dres.decay)
        spec, m = self.spec, 1
        if spec is not None and r:
            ctx = pool.ctx()
            sc = spec.step_coef(r, ctx)
            k = int(sc[7])
            dt, flops, nbytes = self.cm.step(pf, pairs, r, r * (k + 1), ctx, len(chunks))
            if spec.draft is not None and k:
                db, dp = spec.draft.decode_affine(r)
                dt += k * (db.time_s + dp.time_s * ctx)
                flops += k * (db.flops + dp.flops * ctx)
                nbytes += k * (db.hbm_bytes + dp.hbm_bytes * ctx)
            self._spec_frac += sc[6]
            m = int(self._spec_frac)  # tokens this step: the expectation, carried over (deterministic)
            self._spec_frac -= m
            fin = pool.heap[0][0] - pool.g if pool.heap[0][2] == pool.heap[0][3].ver else pool.next_finish() - pool.g
            if m > fin:
                m = fin
            if m > 1 and pool.grow and ((self.mem.free + self.mem.evictable) // r) * self.bs < m:
                m = max(pool.steps_fitting(self.mem.free + self.mem.evictable, m), 1)
            self.c_draft += r * k
            self.c_acc += r * (m - 1)
        else:
            dt, flops, nbytes = self.cm.step(pf, pairs, r, r, pool.ctx() if r else 0, len(chunks))
        if self.lora is not None:  # (with speculation: one token per decoding sequence)
            lt, lf, lb = self._lora_extra(chunks, 1 if r else 0)
            dt, flops, nbytes = dt + lt, flops + lf, nbytes + lb
        if self.expert_dp > 1:  # (a step with a prefill chunk: _lockstep_wait's statistics; decode-only
            self._pf_steps += 1  # steps run in _segment)
            self._pf_time += dt
        t0 = self.t_vis = self.t
        dt += self.pending_s
        self.pending_s = 0.0
        t = self.t = t0 + dt
        self.steps += 1
        if r:
            if self._fresh or self._resumed:
                self._itl(dt, r, t)
            else:  # (the common case, inline: the hot loop)
                self.itl.add(dt, r)
            d = pool.advance(m)
            self.mem.take(d)
            if self.wt is not None:
                self.wt.write_anon(d)
        for req, c in chunks:
            req.computed += c
            if req.ids:  # the entries this chunk completed (all engines; vLLM V1 had them at scheduling)
                self.publish(req, req.computed)
        held, used = self._kv_now()  # held during the iteration, before anything is released
        sampled = r
        for req, _c in chunks:
            if req.computed == req.num_tokens:
                self._sampled(req, t)
                sampled += 1
        if sampled:
            self._stall = 0
        else:
            self._stall += 1
            if self._stall > self.stall_limit:
                raise SimInvariantError(f"no token sampled in {self.stall_limit:,} iterations in a row (t={t:.1f} s, "
                                        f"{len(self.prefilling)} prefilling, {len(self.waiting)} waiting, "
                                        f"{len(self.swapped)} paged out): a livelock")
        if r and pool.heap[0][0] <= pool.g:
            self._pool_finished(t)
        if r and self._fresh:
            self._first_decode_tokens(t)
        self._record(t0, dt, flops, nbytes, 1, r + len(chunks), r + pf, held, held, used, used)
        if self.trace is not None:
            self.trace.iteration(t0, dt, 1, r, pf, len(chunks))

    @staticmethod
    def _steps_until(dt: float, r: int, ctx: int, a: float, ts: float) -> int:
        """Smallest n >= 1 whose n decode iterations (time n·a + ts·(n·ctx + r·n(n−1)/2)) last
        at least ``dt`` seconds."""
        if dt <= 0:
            return 1
        qa = ts * r * 0.5
        qb = a + ts * ctx - qa
        n = math.ceil((-qb + math.sqrt(qb * qb + 4.0 * qa * dt)) / (2.0 * qa)) if qa > 0 else math.ceil(dt / qb)
        if n < 1:
            n = 1
        while n * a + ts * (n * ctx + r * n * (n - 1) * 0.5) < dt:
            n += 1
        while n > 1 and (n - 1) * a + ts * ((n - 1) * ctx + r * (n - 1) * (n - 2) * 0.5) >= dt:
            n -= 1
        return n

    def _segment(self) -> None:
        """Decode-only iterations of the fixed pool until the next event (closed form)."""
        pool, mem = self.pool, self.mem
        r, g, t0 = pool.n, pool.g, self.t
        ctx = pool.sum_b + pool.sum_s + r * g
        spec = self.spec
        c = self._coef.get(r) or self._coef_of(r) if spec is None else spec.step_coef(r, ctx)
        a, ts = c[0], c[1]
        lf = lb = 0.0
        if self.lora is not None:  # a fixed batch: the same LoRA cost every iteration
            lt, lf, lb = self._lora_extra([], 1)
            a += lt
        if self.expert_dp > 1:  # (the same expected wait every step of the segment)
            a += self._lockstep_wait(a + ts * ctx)
        heap = pool.heap
        while heap[0][2] != heap[0][3].ver:  # drop entries of members that left
            heapq.heappop(heap)
        n = heap[0][0] - g
        if (not self.waiting or self._parked) and not self.static and len(self.prefilling) + r < self.seat_cap:
            te = self._ta
            if self.retry and self.retry[0][0] < te:
                te = self.retry[0][0]
            dt = te - t0 - self.pending_s
            # (inline _steps_until, the hottest path; skipped when the n steps to the next finish
            # end before te: then no earlier iteration reaches it)
            if te < math.inf and n * a + ts * (n * ctx + r * n * (n - 1) * 0.5) >= dt:
                k = 1
                if dt > 0:
                    qa = ts * r * 0.5
                    qb = a + ts * ctx - qa
                    k = math.ceil((-qb + math.sqrt(qb * qb + 4.0 * qa * dt)) / (2.0 * qa)) if qa > 0 else \
                        math.ceil(dt / qb)
                    if k < 1:
                        k = 1
                    while k * a + ts * (k * ctx + r * k * (k - 1) * 0.5) < dt:
                        k += 1
                    while k > 1 and (k - 1) * a + ts * ((k - 1) * ctx + r * (k - 1) * (k - 2) * 0.5) >= dt:
                        k -= 1
                    if self.ahead:  # seen when the step after the one it arrives in is planned
                        k += 1
                if k < n:
                    n = k
        if self.max_t < math.inf:
            n = min(n, self._steps_until(self.max_t - t0 - self.pending_s, r, ctx, a, ts))
        if n > self.segment_cap:
            n = self.segment_cap
        if (self._fresh or self._resumed or self.n_held or self.no_admit
                or ((self.lagged or self.kv_lagged) and self.waiting)):
            n = 1  # a first token (or a gap across a wait) due / a held request's load to see finish
            # / admission resumes next step / a seat or KV held by a request finished in the last
            # step frees for the next plan
        if self.prefilling or mem.cached:
            held0, used0 = self._kv_now()
        else:  # (inline fast path of _kv_now)
            held0, used0 = mem.total - mem.free - mem.evictable, pool.sum_b + r * g
        d1 = pool.next_step_blocks()
        if pool.grow:
            avail = mem.free + mem.evictable
            if (avail // r) * self.bs < n:
                n = pool.steps_fitting(avail, n)
                if n < 1:
                    raise SimInvariantError("decode segment of 0 steps: blocks were not reserved")
            d = pool.advance(n)
            if d <= mem.free:
                mem.free -= d
            else:
                mem.take(d)
            if self.wt is not None:
                self.wt.write_anon(d)
        else:
            pool.g = g + n
        csum = n * ctx + r * n * (n - 1) * 0.5
        dt = n * a + ts * csum + self.pending_s
        if self.dres is not None:
            self.ratio = max(self.dres.floor, self.ratio - n * self.dres.decay)
        if n == 1:
            if self._fresh or self._resumed:
                self._itl(dt, r, t0 + dt)
            else:
                self.itl.add(dt, r)
        else:  # token step k lasts a + ts·(ctx + r·k), the first also waits pending_s; with speculation
            # n token steps are n / E iterations of E × that each (one stream chunk per iteration)
            e = c[6] if spec is not None else 1.0
            self.itl.add_steps((a + ts * ctx) * e, (a + ts * (ctx + r * (n - 1))) * e, n / e, r, self.pending_s)
        self.pending_s = 0.0
        t = self.t = t0 + dt
        self.t_vis = t - a - ts * (ctx + r * (n - 1))  # the last step's start
        self.steps += n
        self._stall = 0
        held = mem.total - mem.free - mem.evictable  # during the last iteration
        if heap[0][0] <= g + n:
            self._pool_finished(t)
        if self._fresh:
            self._first_decode_tokens(t)
        iters = float(n)
        if spec is not None:  # n token steps = n / E speculative iterations
            iters = n / c[6]
            self.c_draft += r * iters * c[7]
            self.c_acc += r * (n - iters)
        self._record(t0, dt, n * (c[2] + lf) + c[3] * csum, n * (c[4] + lb) + c[5] * csum, iters, r * iters, r,
                     held0 + d1, held, used0 + r, used0 + r * n)
        if self.trace is not None:
            self.trace.iteration(t0, dt, n, r, 0, 0)

    def _lockstep_wait(self, dt: float) -> float:
        """Expected extra time of a decode-only step of ``dt`` s on one of ``expert_dp`` ranks that
        step together (``EnginePreset.dp_shares_experts``): the step lasts as long as the longest
        rank's, so it waits out another rank's prefill step whenever one of the other
        ``expert_dp − 1`` ranks runs one. Mean field over balanced ranks: each runs a prefill chunk
        in this rank's share q of its steps, lasting this rank's mean prefill step T, so the
        wait is (1 − (1 − q)^(dp − 1)) × (T − dt) when T > dt, s."""
        if self._pf_steps == 0:  # (else steps >= _pf_steps > 0)
            return 0.0
        mean = self._pf_time / self._pf_steps
        if mean <= dt:
            return 0.0
        q = self._pf_steps / self.steps
        return (1.0 - (1.0 - q) ** (self.expert_dp - 1)) * (mean - dt)

    def _itl(self, dt: float, r: int, t: float) -> None:
        """Inter-token gaps of one decode step of ``r`` sequences lasting ``dt`` s and ending at
        ``t``: one gap of ``dt`` per sequence whose last token came out when the step began; a
        first token (``_fresh``) is TTFT, not a gap; a sequence paged back in (``_resumed``) ends
        a gap across its wait (from ``Req.t_last``). (Without either, the callers add ``dt`` × r
        themselves: the hot loop's common case.)"""
        skip = 0
        for req, ver in self._fresh:
            if req.ver == ver:
                skip += 1
        itl = self.itl
        if self._resumed:
            for req, ver in self._resumed:
                if req.ver == ver and req.t_last >= 0:
                    skip += 1
                    itl.add(t - req.t_last, 1.0)
                    req.t_last = -1.0
            self._resumed.clear()
        itl.add(dt, r - skip)

    def _first_decode_tokens(self, t: float) -> None:
        """Prefilled requests that joined the pool before this decode step sampled their first
        token at ``t`` (unless preempted before it ran)."""
        for req, ver in self._fresh:
            if req.ver == ver or (self._served[req.rid] and self.finish[req.rid] == t):
                req.first_token = t
                self.first_tok[req.rid] = t
        self._fresh.clear()

    def _demote(self, i: int) -> None:
        """The GPU evicts prefix entry ``i``: it moves down a tier (if one can hold it); with
        asynchronous tier transfers (write-through stores on their own stream) no step waits."""
        s = self.tiers.store_entry(i)  # type: ignore[union-attr]
        if not self.async_loads:
            self.pending_s += s

    def _held_step(self) -> None:
        """Nothing to compute but requests whose KV loads from a tier: the engine keeps stepping
        (empty steps of ``idle_step_s``); time jumps to the first load's end (or the next
        arrival) when that is later."""
        t = self.t
        te = t + self.idle_step_s
        first = min((r.hold_t for r in self.prefilling if r.hold >= 0), default=te)
        if first > te:
            te = min(first, max(self._next_event(), te))
        self.tel.idle(t, te - t, *self._kv_now())
        self.t = te
        self.t_vis = t
        self.steps += 1

    def _page_out_cold(self) -> None:
        """GPU KV use is above the paging threshold: cold (unreferenced, oldest first) prefix
        entries move down a tier until it is not, while a tier can take them."""
        mem = self.mem
        if self.tiers.can_store_entry():  # type: ignore[union-attr]
            mem.evict(min(mem.total - mem.free - self.page_above, mem.evictable))

    def _kv_now(self) -> tuple[int, int]:
        """(KV blocks held: private + referenced cache, KV tokens in them) right now."""
        mem, pool = self.mem, self.pool
        used = pool.sum_b + pool.n * pool.g
        if mem.cached:
            used += (mem.cached - mem.evictable) // mem.entry_blocks * self.pbt
        for req in self.prefilling:
            if req.computed > req.shared:
                used += req.computed - req.shared
        return mem.total - mem.free - mem.evictable, used

    def _record(self, t0: float, dt: float, flops: float, nbytes: float, iters: float, seqs: float,
                tokens: int, held_first: int, held_last: int, used_first: int, used_last: int) -> None:
        """Check the step's invariants and hand its totals to telemetry (held/used: KV blocks and
        tokens during the step's first and last iteration)."""
        mem, pool = self.mem, self.pool
        if self.check_full:
            self.check()
        else:  # the O(1) checks of every step
            if mem.free + self.priv_explicit + pool.cur + mem.cached != mem.total or mem.free < 0:
                self.check()
                raise SimInvariantError("KV blocks not conserved")
            tiers = self.tiers
            if tiers is not None and tiers.busy_s != self._tier_busy:  # something moved this step
                self._tier_busy = tiers.busy_s
                if tiers.over_capacity():
                    self.check()
                    raise SimInvariantError("a KV tier holds more than its capacity")
            if len(self.prefilling) + pool.n > self.seat_cap or dt < 0:
                raise SimInvariantError(f"running {len(self.prefilling) + pool.n} > {self.seat_cap} seats "
                                        f"or time went back (dt={dt})")
        self.tel.step(t0, dt, flops, nbytes, iters, seqs, tokens, held_first, held_last, used_first, used_last,
                      len(self.prefilling) + pool.n, len(self.waiting) + len(self._parked))

    # ================================================================= checks
    def check(self) -> None:
        """Full recount of every invariant (O(running + cache); ``invariants.recount``)."""
        recount(self)

    # ================================================================== run
    def use_cost_model(self, cm) -> None:
        """Price this run's steps with ``cm`` (a fitted cost model under evaluation, for the same
        model and GPU: ``tuner.calibration.simrun``) instead of the one the deployment selects.
        Before ``run``."""
        if self._ran:
            raise RuntimeError("use_cost_model: the simulation has run")
        if self.expert_dp > 1 and cm.expert_dp == 1:
            cm = cm.sharing_experts(self.expert_dp)
        self.cm = cm
        self.admission = AdmissionControl(self.policy, cm, self.mem.total)
        self._coef.clear()

    def run(self) -> Simulation:
        """Serve the whole workload (or until ``max_sim_time_s``)."""
        if self._ran:
            raise RuntimeError("a Simulation runs once; make a new one")
        self._loop()
        self._finish_run()
        return self

    def advance(self, until: float) -> None:
        """Run to the first iteration boundary at or after ``until`` s (at most one iteration
        past it) and pause there; ``run_rest`` runs the rest (live migration, ``cluster``)."""
        end, self.max_t = self.max_t, until
        self._loop()
        self.max_t = end

    def run_rest(self) -> Simulation:
        """Run what is left after ``advance`` calls, then close the books as ``run`` does."""
        self._loop()
        self._finish_run()
        return self

    def depart(self, row: int) -> Req | None:
        """Take request ``row`` out while it decodes (live migration away from this instance):
        its KV blocks are freed, its record ends as failed with the tokens generated so far
        (``out_done``). Returns it (``gen`` up to date), or None when it is not decoding now."""
        pool = self.pool
        req = next((r for r in pool.members() if r.rid == row), None)
        if req is None or any(r is req for r, _ in self._fresh):
            return None
        blocks = pool.remove(req)
        if self.reserve:
            blocks = req.priv
            self.priv_explicit -= blocks
        self.mem.give(blocks)
        req.priv = 0
        if req.ids:
            self.mem.release(req.ids)
        if self.lora is not None:
            self.lora.release(req.adapter)
        self.failed[row] = True
        self.out_done[row] = req.gen
        self.preempts[row] = req.preemptions
        return req

    def inject(self, row: int, t: float, prompt: int, out: int, max_out: int) -> None:
        """Slot ``row`` (beyond ``n_stream``, marked ``prefilled``) arrives at ``t`` s with
        ``prompt`` tokens of KV computed elsewhere and ``out`` tokens to generate."""
        if row < self.n_stream or self.prefilled is None or not self.prefilled[row]:
            raise ValueError(f"row {row} is not a prefilled injection slot")
        req = Req(row, t, prompt, out, max_out, int(self.w.priority[row]), (), 0)
        req.ttft_slo_s = float(self.w.slo_classes[self.w.slo_class[row]].ttft_ms) / 1e3
        if self.lora is not None:
            req.adapter = int(self.w.adapter[row])  # type: ignore[index]
        self._seq += 1
        heapq.heappush(self.retry, (t, self._seq, req))

    def _loop(self) -> None:
        pool, mem = self.pool, self.mem
        if not self._ran:
            self._ran = True
            if self.n_stream:
                self._load_chunk(0)
                self._ta = self._ca[0]
        planner = self.planner
        grow = pool.grow
        bs = self.bs
        paging, page_above = self.tier_hits, self.page_above
        retry, prefilling, waiting, swapped = self.retry, self.prefilling, self.waiting, self.swapped
        lora = self.lora
        while True:
            t = self.t
            # requests that finished in the step just run still hold their seats and KV blocks at
            # this plan under async scheduling (it was made when that step started)
            self.lagged, self.finishing = self.finishing, 0
            self.kv_lagged, self.kv_finishing = self.kv_finishing, 0
            tv = self.t_vis if self.ahead else t
            if self._ta <= tv or (retry and retry[0][0] <= tv):
                self._arrivals(tv)
            if t >= self.max_t:
                break
            if paging and mem.total - mem.free > page_above and mem.evictable:
                self._page_out_cold()
            if lora is not None and lora.version != self._park_ver:
                self._unpark()  # a LoRA slot freed or an adapter started: set-aside requests may run
            if swapped:
                self.swap_in()  # resumed sequences first (vLLM), before the decodes' blocks are counted
            if self.transferred:
                self.admit_transferred()
            if self.n_held:
                self.release_holds()
            need = 0
            self.no_admit = False
            self.round_adm = self._adm
            kv_held = min(self.kv_lagged, mem.free)
            mem.free -= kv_held  # (given back below, once this step is planned)
            if grow and pool.n:
                need = pool.cnt[bs - 1 - pool.g % bs]
                if need > mem.free + mem.evictable:
                    p0 = self.c_preempt
                    need = self._make_room_for_decodes()
                    self.no_admit = self.c_preempt != p0
            if prefilling or waiting or swapped:
                if need:
                    mem.take(need)  # the decodes' next blocks, held while prefills are planned
                chunks, decodes = planner(self)
                if need:
                    mem.give(need)
            else:
                chunks = None
            mem.free += kv_held
            if chunks:
                self._iteration(chunks, decodes)
                continue
            if pool.n:
                self._segment()
                continue
            if self.lagged or kv_held:  # nothing else runs: the last step's finishers have left by the next plan
                continue
            if self.n_held:  # only loads from a tier in flight: empty steps until they finish
                self._held_step()
                continue
            if self.prefilling:  # prefills blocked on memory and nothing decodes
                if len(self.prefilling) == 1:
                    self._fail(self.prefilling[0])
                else:
                    self.preempt(self._victim())
                continue
            if self.waiting:  # the head cannot fit even in an empty instance
                req = self.waiting.pop()
                self.queued_tokens -= req.num_tokens
                self.failed[req.rid] = True
                self.out_done[req.rid] = req.gen
                self.preempts[req.rid] = req.preemptions
                continue
            if self.transferred:  # its prompt's KV cannot fit even in an empty instance
                req = self.transferred.popleft()
                self.failed[req.rid] = True
                continue
            if self.swapped:  # (the last running request left after this step's swap-in: try again)
                n_out = len(self.swapped)
                self.swap_in()
                if len(self.swapped) < n_out:
                    continue
                r = self.swapped[0]
                raise SimInvariantError(
                    f"paged-out requests cannot come back into an empty instance (request {r.rid}: "
                    f"{self._blocks_for(r.computed)} + 1 blocks, {mem.avail} available of {mem.total}"
                    + (f", its LoRA adapter can run: {self.lora.can_run(r.adapter)})" if self.lora is not None else ")"))
            te = self._next_event()
            if te == math.inf:
                break
            if te <= t:  # arrived while the last step ran; an idle engine plans at once
                self.t_vis = t
                continue
            te = min(te, self.max_t)
            if self.dres is not None:  # (SGLang resets its new_token_ratio when idle)
                self.ratio = self.dres.init
            self.tel.idle(self.t, te - self.t, *self._kv_now())
            self.t = self.t_vis = te

    def _finish_run(self) -> None:
        """Mark what never finished (time limit) and check that nothing was lost."""
        if self.wt is not None:
            self.wt.flush()  # (anonymous write-through blocks still pending)
        fin = np.isfinite(self.finish)
        if self.released is not None and self.t < self.max_t:  # later turns never sent: an earlier one
            self.failed |= ~fin & ~self.rejected & (self.w.parent >= 0)  # type: ignore[operator]  # ended unserved
        if self.t >= self.max_t:
            lost = ~fin & ~self.rejected & ~self.failed
            self.stopped = int(lost.sum())
            self.failed |= lost
        ok = fin.astype(int) + self.rejected + self.failed
        w, ns = self.w, self.n_stream
        want = np.minimum(w.output_len[:ns], self.max_len - w.prompt_len[:ns])
        wrong = fin[:ns] & (self.out_done[:ns] != want)  # (a request served with another's row)
        if wrong.any():
            i = int(np.flatnonzero(wrong)[0])
            raise SimInvariantError(f"request {i} generated {self.out_done[i]} tokens, its row asks {want[i]}")
        if np.any(ok != 1):
            i = int(np.flatnonzero(ok != 1)[0])
            raise SimInvariantError(f"request {i}: finished={fin[i]} rejected={self.rejected[i]} "
                                    f"failed={self.failed[i]} (must be exactly one)")
        if self.check_full:
            self.check()
