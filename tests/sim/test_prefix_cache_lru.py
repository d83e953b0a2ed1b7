"""Prefix-cache LRU eviction: the BlockManager's order (unit), and on Mooncake data (a slice of
the bundled FAST'25 trace with hash_ids, 512-token blocks) the hit rate grows with KV capacity
while a small cache evicts."""

from __future__ import annotations

import numpy as np
import pytest

from backends.base import Deployment
from backends.sim import simulate
from backends.sim.memory import BlockManager, OutOfBlocks
from tuner.policy import Policy
from tuner.scorecard import score
from workloads.traces import load_mooncake


def _cache_with(entries: list[int], total: int = 8) -> BlockManager:
    """A manager of ``total`` blocks (1 block per entry) holding ``entries``, computed and
    released in that order (so evictable, oldest first)."""
    m = BlockManager(total, block_size=16, block_tokens=16)
    for i in entries:
        m.acquire((i,))
        m.mark_ready((i,))
        m.release((i,))
    return m


def test_lru_evicts_the_oldest_released_entry_first():
    m = _cache_with([1, 2, 3, 4])
    m.take(m.free + 1)  # one block short: one entry goes
    assert m.hits((1,)) == 0 and m.hits((2,)) == 1 and m.evictions == 1
    m.take(2)
    assert [m.hits((i,)) for i in (2, 3, 4)] == [0, 0, 1]
    m.check()


def test_a_hit_refreshes_an_entry_so_the_most_recently_released_survives():
    m = _cache_with([1, 2, 3])
    m.acquire((1,))   # hit on the oldest: referenced, then released again -> most recent
    m.release((1,))
    m.take(m.free + 2)
    assert m.hits((1,)) == 1 and m.hits((2,)) == 0 and m.hits((3,)) == 0
    m.check()


def test_referenced_entries_are_never_evicted():
    m = _cache_with([1, 2, 3], total=4)
    m.acquire((1,))   # pinned by a running request
    m.take(m.free + 2)  # takes 2 and 3, not 1
    assert m.hits((1,)) == 1 and m.refcount(1) == 1
    with pytest.raises(OutOfBlocks):
        m.take(1)  # only the referenced entry is left: nothing evictable
    m.release((1,))
    m.take(1)
    assert m.hits((1,)) == 0
    m.check()


def test_uncomputed_entries_are_freed_not_cached():
    m = BlockManager(4, block_size=16, block_tokens=16)
    m.acquire((7,))
    m.release((7,))  # never marked ready: nothing to hit, freed at once
    assert m.free == 4 and m.cached == 0 and m.hits((7,)) == 0


@pytest.fixture(scope="module")
def mooncake_slice():
    return load_mooncake("synthetic").take(np.arange(3000))


def test_hit_rate_grows_with_kv_capacity_on_mooncake(mooncake_slice):
    """Qwen2.5-7B on one H200: 0.4 → 0.9 of the memory holds ~1.5k → ~4k cached 512-token
    blocks, far below the slice's reuse distances (an unbounded cache would hit ~50 %)."""
    w = mooncake_slice
    dep = Deployment("qwen2.5-7b", "h200", n_gpus=1)
    rates, evictions = [], []
    for util in (0.4, 0.6, 0.9):
        res = simulate(Policy(gpu_memory_utilization=util, prefix_caching=True), w, dep)
        card, c = score(res, w), res.telemetry.counters
        # the scorecard field is the simulator's hit tokens over the prompt tokens it looked up
        assert card.prefix_hit_rate == pytest.approx(c["prefix_hit_tokens"] / c["prefix_query_tokens"])
        if res.records["preemptions"].sum() == 0:  # each request looked the cache up once
            assert res.records["cached_tokens"].sum() == c["prefix_hit_tokens"]
        rates.append(card.prefix_hit_rate)
        evictions.append(c["cache_evictions"])
    assert rates[0] < rates[1] < rates[2]
    assert rates[2] > 1.8 * rates[0]
    assert evictions[0] > 0 and evictions[0] > evictions[2]


def test_without_prefix_caching_nothing_hits(mooncake_slice):
    w = mooncake_slice.take(np.arange(500))
    res = simulate(Policy(prefix_caching=False), w, Deployment("qwen2.5-7b", "h200", n_gpus=1))
    assert score(res, w).prefix_hit_rate == 0.0
