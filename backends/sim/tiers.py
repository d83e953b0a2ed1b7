"""KV tiers below the GPU of one instance: CPU (host DRAM over PCIe), then SSD (NVMe).

LMCache / vLLM KV-offloading-connector semantics, simplified. Two kinds of KV live here:

* **paged-out sequences**: a preemption victim's KV moves down instead of being dropped for
  recompute; it stays put (pinned) until its request runs again and loads it back whole.
  vLLM's ``preemption_mode=swap`` is the case "CPU tier = swap_space (4 GiB per GPU), no SSD,
  no prefix entries".
* **prefix-cache entries** (``caching``): a GPU prefix entry that is evicted, or paged out above
  the paging threshold, is stored here instead of dropped; a later request whose hit run
  continues into an entry held here loads it (bytes / bandwidth) instead of recomputing it.
  The tiers are a cache: a loaded entry keeps its copy here (LRU refreshed), so evicting the GPU
  copy again moves nothing.
* **write-through** (``write_through``: vLLM V1's offloading connector, SGLang's HiCache under
  its default write policy; ``EnginePreset.kv_tier_write_through``): instead of taking what
  the GPU evicts, the CPU tier stores every full block a request computes, as it is computed
  (``OffloadingConnectorScheduler._get_reqs_to_store``: blocks already held are skipped), and
  every lookup of a request refreshes all of its blocks held here, its first block most recent
  (``manager.touch``). The tier is then an LRU over the blocks most recently computed or
  referenced, largely a copy of what the GPU holds: it serves a hit only for a block the GPU has
  evicted while its copy here is still among the tier's most recent. Blocks no prefix entry names
  (a request's own prompt tail and its generated tokens) pass through it as anonymous runs
  (``write_anon``): they are never hit, but they push older entries out.

Placement: CPU first, then SSD. To make room in a tier its least recently used entries spill
down (CPU → SSD: host-side, off the GPU's critical path) or are dropped (SSD); a sequence never
moves once placed and displaces entries, never other sequences.

Timing (who waits for a move) is the engine's: ``EnginePreset.kv_tier_async`` (vLLM V1) loads
entries beside the running batch while the request that needs them waits (``scheduler``), and
writes stores through on their own stream without a stall; otherwise a move's seconds go to the
next iteration. ``tier_rules`` gathers what an engine does with its tiers (paging threshold,
victims paged out or recomputed, loads beside the batch).

Units: blocks (the GPU pool's block size); bytes and bytes/s for the whole instance (the tp
GPUs move their shards over their own PCIe links in parallel: CPU bandwidth = tp × PCIe). The
GPU-side time of a move is blocks × ``block_bytes`` / the tier's bandwidth (a GPU↔SSD move is
bound by the drive; its PCIe hop is pipelined under it).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backends.sim.engines import EnginePreset
    from tuner.policy import Policy

GIB = 1 << 30
SWAP_SPACE_BYTES = 4 * GIB
"""vLLM's default ``swap_space`` per GPU, bytes: the CPU tier of ``preemption_mode=swap``."""
SSD_BYTES_S = 6.0e9
"""NVMe bandwidth per instance, bytes/s, both directions. A PCIe 4.0 x4 datacenter drive reads
6.8-7 GB/s and writes 4-5.3 GB/s sequentially (Micron 7450 PRO, Samsung PM1733 datasheets);
~6 GB/s is LMCache's local-disk ballpark for large KV chunks."""
ANON_KEYS = 1 << 100
"""LRU keys of anonymous block runs (write-through stores of blocks no prefix entry names) start
here: past every prefix entry id (workload ids are int64, preemption victims' ids start at 2**64)."""


class Tier:
    """One tier's books (blocks): ``used`` = ``seq`` (pinned sequences) + entry blocks."""

    __slots__ = ("name", "capacity", "bytes_s", "used", "seq", "lru", "moved")

    def __init__(self, name: str, capacity: int, bytes_s: float) -> None:
        self.name = name
        self.capacity = capacity        # blocks
        self.bytes_s = bytes_s          # GPU <-> tier, bytes/s (instance)
        self.used = 0
        self.seq = 0
        # key -> blocks, oldest first: prefix entries (entry_blocks each) and anonymous runs
        self.lru: OrderedDict[int, int] = OrderedDict()
        self.moved = 0                  # blocks moved to or from the GPU


class KVTiers:
    """The lower tiers of one instance (see module doc). Mutators return GPU-side seconds."""

    __slots__ = ("tiers", "block_bytes", "entry_blocks", "caching", "write_through", "where", "busy_s",
                 "spilled", "_anon", "_pending")

    def __init__(self, tiers: list[Tier], block_bytes: float, entry_blocks: int, caching: bool,
                 write_through: bool = False) -> None:
        self.tiers = tiers
        self.block_bytes = block_bytes  # one KV block, all tp shards, bytes
        self.entry_blocks = entry_blocks
        self.caching = caching and entry_blocks > 0
        self.write_through = write_through and self.caching  # (see module doc)
        self.where: dict[int, int] = {}  # prefix entry id -> tier index
        self.busy_s = 0.0               # GPU-side transfer time so far, s
        self.spilled = 0                # blocks spilled CPU -> SSD (host side)
        self._anon = ANON_KEYS          # next anonymous run's key
        self._pending = 0               # anonymous blocks written since the last LRU operation (flush)

    # -------------------------------------------------------------- queries
    def seconds(self, t: int, blocks: int) -> float:
        return blocks * self.block_bytes / self.tiers[t].bytes_s

    def can_store_entry(self) -> bool:
        """Whether some tier could take a prefix entry (making room among its entries)."""
        eb = self.entry_blocks
        return self.caching and any(t.capacity - t.seq >= eb for t in self.tiers)

    @property
    def moved_bytes(self) -> float:
        return sum(t.moved for t in self.tiers) * self.block_bytes

    # ------------------------------------------------------------ mutation
    def move_s(self, t: int, blocks: int) -> float:
        """Count a GPU <-> tier ``t`` move of ``blocks``; its seconds."""
        self.tiers[t].moved += blocks
        s = blocks * self.block_bytes / self.tiers[t].bytes_s
        self.busy_s += s
        return s

    def store_seq(self, blocks: int) -> int:
        """Place a paged-out sequence's ``blocks`` in the first tier that can hold them (its
        entries make room); the tier index, or -1 (nowhere: the victim recomputes)."""
        self.flush()
        for k in range(len(self.tiers)):
            if self._room(k, blocks):
                tier = self.tiers[k]
                tier.used += blocks
                tier.seq += blocks
                return k
        return -1

    def load_seq(self, t: int, blocks: int) -> float:
        """A paged-out sequence's KV goes back to the GPU."""
        self.drop_seq(t, blocks)
        return self.move_s(t, blocks)

    def drop_seq(self, t: int, blocks: int) -> None:
        tier = self.tiers[t]
        tier.used -= blocks
        tier.seq -= blocks

    def store_entry(self, i: int) -> float:
        """The GPU drops prefix entry ``i`` (ready KV): keep it here if room can be made."""
        self.flush()
        t = self.where.get(i)
        if t is not None:               # a copy is here already: refresh it, move nothing
            self.tiers[t].lru.move_to_end(i)
            return 0.0
        t = self._place(i, self.entry_blocks, 0)
        return self.move_s(t, self.entry_blocks) if t >= 0 else 0.0

    def write_entries(self, ids: tuple[int, ...]) -> None:
        """Write-through: a request is scheduled with prefix entries ``ids`` (its hits and the
        entries it computes). Its lookup refreshes those held here, the first most recent
        (``touch``); those not held are stored (host-side seconds, no GPU stall), after which all
        are refreshed again (vLLM touches a request's blocks after storing new ones)."""
        where, eb = self.where, self.entry_blocks
        self.touch(ids)  # (flushes)
        stored = False
        for i in ids:
            if i not in where:
                t = self._place(i, eb, 0)
                if t >= 0:
                    self.move_s(t, eb)
                    stored = True
        if stored:
            self.touch(ids)

    def name_written(self, ids: tuple[int, ...]) -> None:
        """Write-through: blocks a request stored anonymously as it computed them become the
        prefix entries ``ids`` (a preempted or finished request's own blocks, kept as entries).
        As many blocks leave the anonymous runs at the CPU tier's most recent end (where the
        request's stores and refreshes left its blocks) as the new entries take, and the entries
        go there: the tier holds those blocks once. Only blocks no longer held anywhere are stored
        again (and move over PCIe)."""
        self.flush()
        tier, eb, where = self.tiers[0], self.entry_blocks, self.where
        new = [i for i in ids if i not in where]
        left = len(new) * eb
        lru, cut, got = tier.lru, [], 0
        for key in reversed(lru):  # the newest anonymous runs, as far as needed
            if got >= left:
                break
            if key >= ANON_KEYS:
                cut.append(key)
                got += lru[key]
        for key in cut:
            b = lru[key]
            if b > left:  # (the run's older part stays where it is)
                lru[key] = b - left
                tier.used -= left
                left = 0
                break
            del lru[key]
            tier.used -= b
            left -= b
        for i in new:  # at the most recent end; what no run held any more is stored again
            t = self._place(i, eb, 0)
            if t >= 0 and left > 0:
                self.move_s(t, min(eb, left))
                left -= eb
        self.touch(ids)

    def touch(self, ids: tuple[int, ...]) -> None:
        """Refresh the entries of ``ids`` held here, the first most recent; store nothing."""
        self.flush()
        where, tiers = self.where, self.tiers
        for i in reversed(ids):
            t = where.get(i)
            if t is not None:
                tiers[t].lru.move_to_end(i)

    def write_anon(self, blocks: int) -> None:
        """Write-through of ``blocks`` full blocks no prefix entry names: an anonymous run at the
        CPU tier's most recent end (merged with the run there, if any). Placed lazily: consecutive
        writes with no other tier operation between them form one run (``flush``)."""
        self._pending += blocks

    def flush(self) -> None:
        """Place the anonymous blocks written since the last tier operation (every other operation,
        and the engine at the end of a run, calls this first: the LRU order is the same as if each
        write had been placed at once)."""
        blocks = self._pending
        if blocks <= 0:
            return
        self._pending = 0
        if self._room(0, blocks):
            self._append(0, ANON_KEYS, blocks)
            self.move_s(0, blocks)

    def load_entry(self, i: int) -> float:
        """A request hits entry ``i`` here: its KV is copied to the GPU (the copy stays)."""
        self.flush()
        t = self.where[i]
        self.tiers[t].lru.move_to_end(i)
        return self.move_s(t, self.entry_blocks)

    def _place(self, i: int, blocks: int, t0: int) -> int:
        """Put item ``i`` (a prefix entry, or an anonymous run of ``blocks``) in the first tier
        from ``t0`` that can make room; its index, or -1."""
        for k in range(t0, len(self.tiers)):
            if self._room(k, blocks):
                self._append(k, i, blocks)
                return k
        return -1

    def _append(self, k: int, i: int, blocks: int) -> None:
        """Put item ``i`` at tier ``k``'s most recent end (room made): a prefix entry under its id,
        an anonymous run (any ``i`` >= ``ANON_KEYS``) merged with the run there, if any, or under
        a new key."""
        tier = self.tiers[k]
        lru = tier.lru
        tier.used += blocks
        if i < ANON_KEYS:
            lru[i] = blocks
            self.where[i] = k
            return
        last = next(reversed(lru), -1) if lru else -1
        if last >= ANON_KEYS:
            lru[last] += blocks
        else:
            lru[self._anon] = blocks
            self._anon += 1

    def _room(self, t: int, need: int) -> bool:
        """Free ``need`` blocks in tier ``t`` by spilling its oldest items down (or dropping them
        from the last tier; an anonymous run only as far as needed); False (nothing changed) when
        even that cannot."""
        tier = self.tiers[t]
        if tier.capacity - tier.seq < need:
            return False
        lru = tier.lru
        while tier.capacity - tier.used < need:
            i, b = lru.popitem(last=False)
            short = need - (tier.capacity - tier.used)
            if i >= ANON_KEYS and b > short:  # keep the run's newer part
                lru[i] = b - short
                lru.move_to_end(i, last=False)
                b = short
            tier.used -= b
            if i < ANON_KEYS:
                del self.where[i]
            if t + 1 < len(self.tiers) and self._place(i, b, t + 1) >= 0:
                self.spilled += b
        return True

    # -------------------------------------------------------------- checks
    def over_capacity(self) -> bool:
        """O(tiers) check of every step."""
        return any(t.used > t.capacity or t.seq < 0 for t in self.tiers)

    def check(self, seq_blocks: list[int]) -> None:
        """Full recount; ``seq_blocks[k]``: blocks the engine's paged-out sequences hold in tier k."""
        self.flush()
        eb = self.entry_blocks
        named = 0
        for k, t in enumerate(self.tiers):
            items = sum(t.lru.values())
            if t.used != t.seq + items or not 0 <= t.used <= t.capacity:
                raise AssertionError(f"{t.name} tier: used {t.used} != {t.seq} sequence + {items} entry and "
                                     f"anonymous blocks, or outside 0..{t.capacity}")
            if t.seq != seq_blocks[k]:
                raise AssertionError(f"{t.name} tier holds {t.seq} sequence blocks, paged-out requests {seq_blocks[k]}")
            for i, b in t.lru.items():
                if i < ANON_KEYS:
                    named += 1
                    if self.where.get(i) != k or b != eb:
                        raise AssertionError(f"{t.name} tier: entry {i} misplaced or of {b} != {eb} blocks")
                elif b <= 0 or not self.write_through:
                    raise AssertionError(f"{t.name} tier: anonymous run of {b} blocks (write-through {self.write_through})")
        if len(self.where) != named:
            raise AssertionError("tier entry index disagrees with the tiers' entries")


def make_tiers(*, cpu_offload_gb: float, ssd_offload_gb: float, swap: bool, tp: int, block_bytes_gpu: float,
               pcie_bytes_s: float, entry_blocks: int, write_through: bool = False) -> KVTiers | None:
    """The tiers of one instance, or None (no CPU tier: victims recompute, entries are dropped).
    ``cpu_offload_gb`` > 0: a CPU tier of that size (GiB per instance) that also caches prefix
    entries, plus the SSD tier when ``ssd_offload_gb`` > 0. Otherwise ``swap``: a CPU tier of
    ``SWAP_SPACE_BYTES`` per GPU for paged-out sequences only. ``block_bytes_gpu``: one GPU's
    shard of a KV block, bytes. ``write_through``: the CPU tier stores blocks as they are computed
    (``EnginePreset.kv_tier_write_through``), not as the GPU evicts them."""
    if cpu_offload_gb > 0:
        cpu_blocks = int(cpu_offload_gb * GIB // (block_bytes_gpu * tp))
    elif swap:
        cpu_blocks = int(SWAP_SPACE_BYTES // block_bytes_gpu)
    else:
        return None
    tiers = [Tier("cpu", cpu_blocks, pcie_bytes_s * tp)]
    if cpu_offload_gb > 0 and ssd_offload_gb > 0:
        tiers.append(Tier("ssd", int(ssd_offload_gb * GIB // (block_bytes_gpu * tp)), SSD_BYTES_S))
    return KVTiers(tiers, block_bytes_gpu * tp, entry_blocks, caching=cpu_offload_gb > 0, write_through=write_through)


@dataclass(frozen=True, slots=True)
class TierRules:
    """How one engine uses its lower KV tiers under one policy (``tier_rules``). Units: blocks."""

    tiers: KVTiers | None
    threshold: float
    """The paging threshold in force, fraction of GPU KV blocks (1: none)."""
    async_loads: bool
    """Prefix loads from a tier run beside the batch (the connector, token-budget steps only)."""
    page_above: int
    """GPU KV blocks in use above which cold prefix entries are paged out (the paging threshold)."""
    headroom: int
    """Free blocks a page-in leaves (0 at threshold 1)."""
    page_victims: bool
    """A preemption victim's KV moves down a tier instead of being recomputed."""


def tier_rules(policy: Policy, engine: EnginePreset, *, total_blocks: int, tp: int, block_bytes_gpu: float,
               pcie_bytes_s: float, entry_blocks: int, reserve: bool) -> TierRules:
    """The tiers of one instance (``make_tiers``: swap space for ``preemption_mode=swap``, or the
    CPU/SSD offload tiers) and the engine's rules for them:

    * the paging threshold (``offload_threshold``): above it cold prefix entries move down, and
      paged-out sequences come back only while GPU KV use stays below it (hysteresis against
      page-in / page-out ping-pong); an engine that writes its tier through has none, with or
      without prefix caching (the GPU prefix cache keeps its own LRU);
    * victims page out instead of being recomputed on an engine that does so
      (``EnginePreset.victims_to_tier``) or when swap is asked for; vLLM V1 and SGLang have no swap:
      their victims recompute, the victim's blocks coming back as prefix hits, from the GPU cache or
      the tier's copy; never under request-level reservation (``reserve``: nothing is preempted)."""
    tiers = make_tiers(cpu_offload_gb=policy.cpu_offload_gb, ssd_offload_gb=policy.ssd_offload_gb,
                       swap=policy.preemption_mode == "swap" and not reserve, tp=tp, block_bytes_gpu=block_bytes_gpu,
                       pcie_bytes_s=pcie_bytes_s, entry_blocks=entry_blocks,
                       write_through=engine.kv_tier_write_through)
    caching = tiers is not None and tiers.caching
    thr = policy.offload_threshold if policy.cpu_offload_gb > 0 and not engine.kv_tier_write_through else 1.0
    return TierRules(
        tiers=tiers, threshold=thr,
        async_loads=caching and engine.kv_tier_async and policy.batching in ("chunked", "decode_maximal"),
        page_above=int(thr * total_blocks) if caching else total_blocks,
        headroom=total_blocks - int(thr * total_blocks),
        page_victims=tiers is not None and not reserve and (engine.victims_to_tier or policy.preemption_mode == "swap"))
