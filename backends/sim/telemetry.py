"""Telemetry of one simulated run: totals, slot-second integrals and a bounded timeline.

The engine calls ``step`` once per iteration or decode segment (and ``idle`` for gaps).
The timeline keeps at most ``MAX_ROWS`` samples: when full, every other row is dropped and
the sampling stride doubles, so a million-request run costs the same few hundred kB.
KV slot-seconds integrate held (private + referenced cache blocks × block size) and used (KV
tokens) slots: an iteration holds its blocks for its whole duration; a decode segment of n
iterations, whose holdings grow linearly, is integrated with the trapezoid rule between its first
and last iteration; idle gaps hold what is left. Fragmentation = 1 − used/allocated.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from backends.base import Telemetry
from backends.sim.itl_counter import ITLCounter
from tuner.policy import Policy

DEFAULT_THRESHOLD = Policy().offload_threshold

MAX_ROWS = 4096


class TelemetryRecorder:
    """Accumulates one run's telemetry (all units: s, FLOPs/bytes per GPU, blocks, tokens)."""

    __slots__ = ("total", "bs", "busy", "flops", "bytes", "iters", "batch_sum", "alloc_ss", "used_ss",
                 "peak_used", "peak_running", "peak_waiting", "_rows",
                 "_stride", "_skip", "t_end", "itl")

    def __init__(self, total_blocks: int, block_size: int) -> None:
        self.total, self.bs = total_blocks, block_size
        self.busy = self.flops = self.bytes = 0.0
        self.iters = self.batch_sum = 0
        self.alloc_ss = self.used_ss = 0.0
        self.peak_used = self.peak_running = self.peak_waiting = 0
        self._rows: list[tuple[float, float, int, int, int]] = []
        self._stride, self._skip = 1, 0
        self.t_end = 0.0
        self.itl = ITLCounter()  # the engine adds each step's token gaps (backends/itl.py)

    def step(self, t0: float, dt: float, flops: float, nbytes: float, iters: float, seqs: float, tokens: int,
             held_first: int, held_last: int, used_first: int, used_last: int, running: int, waiting: int) -> None:
        """One iteration (or ``iters`` decode iterations) from t0 lasting dt seconds; KV blocks
        held and tokens used during its first and last iteration; queue sizes after it."""
        self.busy += dt
        self.flops += flops
        self.bytes += nbytes
        self.iters += iters
        self.batch_sum += seqs
        self.alloc_ss += dt * 0.5 * (held_first + held_last) * self.bs
        self.used_ss += dt * 0.5 * (used_first + used_last)
        if held_last > self.peak_used:
            self.peak_used = held_last
        self.t_end = t = t0 + dt
        self._skip += 1
        if self._skip >= self._stride:
            self._skip = 0
            if running > self.peak_running:
                self.peak_running = running
            if waiting > self.peak_waiting:
                self.peak_waiting = waiting
            rows = self._rows
            rows.append((t, held_last / self.total, running, waiting, tokens))
            if len(rows) >= MAX_ROWS:
                del rows[1::2]
                self._stride *= 2

    def idle(self, t0: float, dt: float, held: int, used: int) -> None:
        """Nothing runs from t0 for dt seconds while ``held`` blocks / ``used`` tokens stay allocated."""
        self.alloc_ss += dt * held * self.bs
        self.used_ss += dt * used
        self.t_end = t0 + dt

    def timeline(self) -> pd.DataFrame:
        a = np.array(self._rows, dtype=float).reshape(-1, 5)
        return pd.DataFrame({
            "t_s": a[:, 0], "kv_used_frac": a[:, 1], "running": a[:, 2].astype(np.int64),
            "waiting": a[:, 3].astype(np.int64), "batch_tokens": a[:, 4].astype(np.int64)})

    def build(self, *, makespan_s: float, tp: int, peak_flops: float, peak_bw: float, kv_capacity_tokens: int,
              price: float, spot_price: float, offload_bytes: float, offload_bw: float,
              counters: dict[str, float]) -> Telemetry:
        """The contract's Telemetry (FLOPs and bytes summed over the tp GPUs)."""
        c = {"iterations": float(self.iters), "batch_size_sum": float(self.batch_sum),
             "kv_allocated_slot_s": self.alloc_ss, "kv_used_slot_s": self.used_ss,
             "peak_kv_blocks": float(self.peak_used), "peak_running_sampled": float(self.peak_running),
             "peak_waiting_sampled": float(self.peak_waiting)}
        c.update(counters)
        return Telemetry(
            makespan_s=makespan_s, busy_s=self.busy, n_gpus=tp, instances=1, flops=self.flops * tp,
            hbm_bytes=self.bytes * tp, peak_flops_per_gpu=peak_flops, peak_hbm_bytes_s_per_gpu=peak_bw,
            offload_bytes=offload_bytes, offload_bytes_s_capacity=offload_bw,
            kv_capacity_tokens=kv_capacity_tokens, gpu_hour_usd=price, spot_gpu_hour_usd=spot_price,
            timeline=self.timeline(), counters=c, itl=self.itl.freeze())


def build_result(sim, policy, notes: tuple[str, ...]):
    """The RunResult of a finished ``engine.Simulation`` (records from ``empty_records``)."""
    from backends.base import RunResult, empty_records

    rec = empty_records(sim.w)
    served = np.isfinite(sim.finish)
    rec["first_token_s"] = sim.first_tok
    if sim.released is not None:  # later turns of multi-turn sessions: sent when their parent finished
        rec["arrival_s"] = sim.released
    rec["finish_s"] = sim.finish
    rec["output_len"] = sim.out_done
    rec["rejected"] = sim.rejected
    rec["failed"] = sim.failed
    rec["preemptions"] = sim.preempts
    rec["cached_tokens"] = sim.cached
    rec["replica"] = np.where(served | sim.failed & np.isfinite(sim.first_tok), 0, -1).astype(np.int64)
    t_first = float(sim.w.arrival_s[0]) if sim.w.n else 0.0
    t_end = max(sim.tel.t_end, float(np.nanmax(sim.finish)) if served.any() else 0.0)
    makespan = max(t_end - t_first, 0.0)
    cm, gpu = sim.cm, sim.cm.gpu
    tiers = sim.tiers
    counters = {"preemptions": float(sim.c_preempt), "swapped_blocks": float(sim.c_swapped),
                "prefix_query_tokens": float(sim.c_pq), "prefix_hit_tokens": float(sim.c_ph),
                "prefill_tokens": float(sim.c_prefill),
                "cache_evictions": float(sim.mem.evictions), "kv_capacity_blocks": float(sim.mem.total),
                "deferrals": float(sim.c_defer)}
    if tiers is not None:
        counters["paged_out_preemptions"] = float(sim.c_paged)
    if tiers is not None and tiers.caching:
        counters.update({f"offload_{t.name}_blocks_moved": float(t.moved) for t in tiers.tiers})
        counters.update(offload_hit_tokens=float(sim.c_tier_hit), offload_transfer_s=tiers.busy_s,
                        offload_spill_bytes=tiers.spilled * tiers.block_bytes)
    if sim.spec is not None:
        counters.update(spec_draft_tokens=float(sim.c_draft), spec_accepted_tokens=float(sim.c_acc),
                        spec_alpha=sim.spec.alpha)
    if sim.lora is not None:
        counters.update(lora_loads=float(sim.lora.loads), lora_load_s=sim.lora.load_total_s,
                        lora_kv_blocks=float(sim.lora_blocks))
    tel = sim.tel.build(
        makespan_s=makespan, tp=cm.tp, peak_flops=cm.peak_flops, peak_bw=gpu.hbm_bytes_s,
        kv_capacity_tokens=sim.mem.total * sim.bs, price=gpu.price_hour, spot_price=gpu.spot_price_hour,
        offload_bytes=tiers.moved_bytes if tiers is not None else 0.0,
        offload_bw=tiers.tiers[0].bytes_s if tiers is not None else 0.0,  # every move crosses PCIe
        counters=counters)
    if sim.stopped:
        notes = (*notes, f"stopped at max_sim_time_s={sim.max_t:g}: {sim.stopped} unfinished requests marked failed")
    if policy.offload_threshold not in (sim.threshold, DEFAULT_THRESHOLD) and policy.cpu_offload_gb > 0:  # one set, not in force
        notes = (*notes, f"offload_threshold={policy.offload_threshold:g}: {sim.dep.engine}'s CPU tier is written through and "
                         "has no paging threshold (the GPU prefix cache keeps its LRU); ran with 1")
    source = getattr(cm, "source", "roofline")
    meta = {"engine": sim.dep.engine, "model": cm.model.name, "gpu": gpu.name, "tp": str(cm.tp),
            "kv_blocks": str(sim.mem.total), "workload": sim.w.name, "cost_model": source}
    notes = (*notes, f"cost model: {source}")
    return RunResult(records=rec, telemetry=tel, policy=policy, backend="sim", notes=tuple(notes), meta=meta)
