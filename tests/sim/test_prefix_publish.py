"""When a prefix-cache entry becomes hittable (``EnginePreset.prefix_cache_at_schedule``):
vLLM V1 caches a block's hash when it allocates the block for a scheduled step, so a request
scheduled right after (same step) reuses it; otherwise an entry is hittable once the chunk
computing it has run, not only when its request's whole prefill ends."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from backends.base import Deployment
from backends.sim import engines
from backends.sim.engine import Simulation
from tuner.policy import Policy
from workloads.workload import build_workload

DEP = Deployment("llama-3.1-8b", "h100")
PREFIX = [[11, 12, 13, 14]]  # four 256-token entries: 1,024 shared tokens


def _run(at_schedule: bool, arrivals, prompts, outputs, budget, monkeypatch) -> Simulation:
    monkeypatch.setitem(engines.ENGINES, "vllm-v1", dataclasses.replace(
        engines.ENGINES["vllm-v1"], prefix_cache_at_schedule=at_schedule))
    n = len(arrivals)
    w = build_workload("pub", np.asarray(arrivals, float), np.asarray(prompts), np.asarray(outputs),
                       prefix_blocks=PREFIX * n, prefix_block_tokens=256)
    return Simulation(Policy(max_num_batched_tokens=budget, max_num_seqs=16), w, DEP, check=True).run()


def test_same_step_requests_share_a_scheduled_prefix(monkeypatch):
    """Two 1,200-token prompts with the same 1,024-token prefix arrive together; one 4,096-token
    step holds both. At scheduling, B hits A's four entries; after the run, B computes them again."""
    args = ([0.0, 0.0], [1200, 1200], [4, 4], 4096)
    sched = _run(True, *args, monkeypatch=monkeypatch)
    after = _run(False, *args, monkeypatch=monkeypatch)
    assert list(sched.cached) == [0, 1024]
    assert list(after.cached) == [0, 0]
    assert sched.first_tok[1] < after.first_tok[1]  # 176 tokens to compute instead of 1,200


def test_an_entry_is_hittable_once_its_chunk_has_run(monkeypatch):
    """A 3,000-token prompt prefills in 512-token chunks (six steps); B (same prefix) arrives after
    A's first two (1,024 tokens: the whole prefix) and is admitted into A's last step, beside A's
    last 440 tokens. A's prefix entries were computed four steps earlier: B hits them with either
    engine (it did not when entries became hittable only at the end of A's prefill)."""
    for at_schedule in (True, False):
        probe = _run(at_schedule, [0.0], [3000], [2], 512, monkeypatch)
        step = probe.first_tok[0] / 6  # ~ one 512-token chunk, s
        sim = _run(at_schedule, [0.0, 2.5 * step], [3000, 1100], [2, 2], 512, monkeypatch)
        assert sim.cached[1] == 1024, at_schedule


def test_no_prefix_caching_no_hits(monkeypatch):
    monkeypatch.setitem(engines.ENGINES, "vllm-v1", engines.ENGINES["vllm-v1"])
    w = build_workload("pub", np.zeros(2), np.full(2, 1200), np.full(2, 4), prefix_blocks=PREFIX * 2,
                       prefix_block_tokens=256)
    sim = Simulation(Policy(max_num_batched_tokens=4096, prefix_caching=False), w, DEP, check=True).run()
    assert list(sim.cached) == [0, 0]
    assert pytest.approx(sim.first_tok[0]) == sim.first_tok[1]
