"""Paged KV-cache blocks of one instance: free pool and prefix cache (LRU). Lower tiers: tiers.py.

Every GPU KV block is in exactly one of three places: ``free``; held privately by a running
sequence (the engine counts these: explicit ``Req.priv`` plus the lazily grown DecodePool);
or held by a prefix-cache entry (``cached``, referenced by running sequences or evictable).
Invariant (checked by the engine): free + private + cached == total.

Prefix cache (vLLM's automatic prefix caching, simplified): the workload names each full
prompt block of ``block_tokens`` tokens by an id; equal ids mean identical KV. An entry
holds ceil(block_tokens / block_size) KV blocks, is shared by every running request that
references it, becomes hittable ("ready") once the request that created it has computed it,
and when no longer referenced it stays cached (evictable) until LRU eviction needs its
blocks. Hits count only the leading run of ready ids (block hashes chain on the prefix).
With lower KV tiers (``tiers.py``) an evicted entry goes to ``demote`` (the tiers' store) instead
of vanishing, and a hit run continues through entries held there (``hits_through``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from mypy_extensions import mypyc_attr


@mypyc_attr(native_class=False)  # (a builtin exception's subclass stays a Python class when compiled)
class OutOfBlocks(RuntimeError):
    """Raised when an allocation was not checked against ``avail`` first (an engine bug)."""


class BlockManager:
    """KV blocks of one instance. Units: blocks, except ``block_tokens`` (tokens)."""

    __slots__ = ("total", "block_size", "block_tokens", "entry_blocks", "free", "cached", "evictable",
                 "_ref", "_ready", "_lru", "evictions", "demote")

    def __init__(self, total_blocks: int, block_size: int, block_tokens: int = 0) -> None:
        if total_blocks < 1:
            raise ValueError(f"KV pool needs >= 1 block (got {total_blocks})")
        self.total = total_blocks
        self.block_size = block_size
        self.block_tokens = block_tokens
        self.entry_blocks = -(-block_tokens // block_size) if block_tokens else 0
        self.free = total_blocks
        self.cached = 0       # blocks held by prefix-cache entries (referenced or not)
        self.evictable = 0    # blocks of unreferenced entries (reclaimable)
        self._ref: dict[int, int] = {}
        self._ready: set[int] = set()
        self._lru: OrderedDict[int, None] = OrderedDict()  # unreferenced entries, oldest first
        self.evictions = 0
        self.demote: Callable[[int], None] | None = None  # given each evicted entry id (lower tiers)

    # -------------------------------------------------------------- queries
    @property
    def avail(self) -> int:
        """Blocks an allocation can get now: free + evictable cache."""
        return self.free + self.evictable

    def hits(self, ids: tuple[int, ...]) -> int:
        """Number of leading ids whose KV is cached and ready."""
        ready = self._ready
        k = 0
        for i in ids:
            if i not in ready:
                break
            k += 1
        return k

    def hits_through(self, ids: tuple[int, ...], k: int, lower) -> tuple[int, list[int]]:
        """Continue a hit run of ``k`` leading ids through entries absent from the GPU but held in
        ``lower`` (a container of ids): (run length, the ids to load from there)."""
        ready, ref, load = self._ready, self._ref, []
        for i in ids[k:]:
            if i not in ready:
                if i in ref or i not in lower:
                    break
                load.append(i)
            k += 1
        return k, load

    def claim_blocks(self, ids: tuple[int, ...]) -> int:
        """Blocks that ``acquire(ids)`` would take out of ``avail``: new entries, and cached
        entries that are evictable now (referencing them pins them)."""
        ref = self._ref
        return self.entry_blocks * sum(1 for i in ids if not ref.get(i))

    def refcount(self, i: int) -> int:
        return self._ref.get(i, 0)

    # ------------------------------------------------------------ mutation
    def take(self, n: int) -> None:
        """Allocate n blocks, evicting LRU cache entries when the free pool is short."""
        if n > self.free:
            self.evict(n - self.free)
        self.free -= n

    def give(self, n: int) -> None:
        self.free += n

    def acquire(self, ids: tuple[int, ...]) -> None:
        """Reference the entries of ``ids``, creating (and allocating) the missing ones."""
        ref, lru, eb = self._ref, self._lru, self.entry_blocks
        new = 0
        for i in ids:
            c = ref.get(i)
            if c is None:
                new += 1
            elif c == 0:
                del lru[i]
                self.evictable -= eb
                ref[i] = 1
            else:
                ref[i] = c + 1
        if new:
            self.take(new * eb)  # evicts only unreferenced entries, never the ones just referenced
            for i in ids:
                if i not in ref:
                    ref[i] = 1
            self.cached += new * eb

    def mark_ready(self, ids: Sequence[int]) -> None:
        """The KV of these entries has been computed: later requests may hit them."""
        self._ready.update(ids)

    def release(self, ids: tuple[int, ...]) -> None:
        """Drop one reference per id; unreferenced ready entries become evictable (most recent
        last), unreferenced never-computed entries are freed at once. ``ids`` is a request's prefix
        chain: it is released last entry first, so that its tail is evicted before its head (vLLM
        frees a request's blocks in reverse order; SGLang's radix cache evicts leaves first)."""
        ref, lru, eb, ready = self._ref, self._lru, self.entry_blocks, self._ready
        for i in reversed(ids):
            c = ref[i] - 1
            if c:
                ref[i] = c
            elif i in ready:
                ref[i] = 0
                lru[i] = None
                self.evictable += eb
            else:
                del ref[i]
                self.cached -= eb
                self.free += eb

    def evict(self, need: int) -> None:
        """Free at least ``need`` blocks by evicting unreferenced entries, oldest first."""
        lru, ref, eb, demote = self._lru, self._ref, self.entry_blocks, self.demote
        got = 0
        while got < need:
            if not lru:
                raise OutOfBlocks(f"KV allocation of {need} blocks beyond free={self.free}, cache exhausted")
            i, _ = lru.popitem(last=False)
            del ref[i]
            self._ready.discard(i)
            if demote is not None:
                demote(i)
            got += eb
            self.evictions += 1
        self.cached -= got
        self.evictable -= got
        self.free += got

    # -------------------------------------------------------------- checks
    def check(self) -> None:
        """Full recount of the cache's own books (debug)."""
        eb = self.entry_blocks
        if self.cached != eb * len(self._ref):
            raise AssertionError(f"cache blocks {self.cached} != {eb} × {len(self._ref)} entries")
        unref = [i for i, c in self._ref.items() if c == 0]
        if set(unref) != set(self._lru) or self.evictable != eb * len(unref):
            raise AssertionError("evictable cache entries disagree with reference counts")
        if any(c < 0 for c in self._ref.values()) or self.free < 0:
            raise AssertionError(f"negative count: free={self.free}")
        if not self._ready <= set(self._ref):
            raise AssertionError("a ready id has no cache entry")

