"""LoRA adapters of a workload: which requests name one, and the adapters' rank.

A workload's ``adapter`` column indexes its ``adapters`` names (-1 = the base model). The rank
of the adapters travels in ``Workload.meta["lora_rank"]`` (one rank for all of them: engines
size their LoRA slots by the largest rank, vLLM's ``--max-lora-rank``); without it an engine's
default rank applies (``DEFAULT_LORA_RANK``).
"""

from __future__ import annotations

import numpy as np

from workloads.workload import Workload

DEFAULT_LORA_RANK = 16
"""vLLM's default ``--max-lora-rank``."""
RANK_KEY = "lora_rank"


def uses_adapters(w: Workload) -> bool:
    """True when the workload declares LoRA adapters: its server runs with LoRA enabled (a
    subset of it, e.g. one replica's share, keeps the table and so the same server setup)."""
    return bool(w.adapters)


def adapter_rank(w: Workload) -> int:
    """The LoRA rank of ``w``'s adapters (``meta["lora_rank"]``, default 16)."""
    raw = w.meta.get(RANK_KEY, DEFAULT_LORA_RANK)
    try:
        r = int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"workload meta lora_rank={raw!r} is not an integer") from None
    if not 1 <= r <= 1024:
        raise ValueError(f"workload meta lora_rank={r} must be in 1..1024")
    return r


def assign_adapters(w: Workload, n: int, *, zipf: float = 1.0, share: float = 1.0, rank: int = DEFAULT_LORA_RANK,
                    seed: int = 0) -> Workload:
    """Give requests LoRA adapters ``lora-0 .. lora-(n-1)`` with Zipf popularity: a request
    names an adapter with probability ``share`` (else the base model) and adapter i with
    probability ∝ (i + 1)^−zipf (0 = uniform). ``rank``: the adapters' LoRA rank. Deterministic
    for a seed (``numpy.random.default_rng([seed, n])``)."""
    if int(n) != n or not 1 <= n <= 100_000:
        raise ValueError(f"assign_adapters: n={n!r} must be an integer in 1..100000")
    if not (np.isfinite(zipf) and 0 <= zipf <= 10):
        raise ValueError(f"assign_adapters: zipf={zipf!r} must be in 0..10")
    if not 0 <= share <= 1:
        raise ValueError(f"assign_adapters: share={share!r} must be in 0..1")
    if int(rank) != rank or not 1 <= rank <= 1024:
        raise ValueError(f"assign_adapters: rank={rank!r} must be an integer in 1..1024")
    n, rank = int(n), int(rank)
    rng = np.random.default_rng([seed, n])
    p = (np.arange(n) + 1.0) ** -float(zipf)
    a = rng.choice(n, size=w.n, p=p / p.sum()).astype(np.int32)
    if share < 1:
        a[rng.random(w.n) >= share] = -1
    meta = dict(w.meta)
    step = f"assign_adapters({n}, zipf={zipf:g}, share={share:g}, rank={rank})"
    meta["transforms"] = f"{meta['transforms']}; {step}" if meta.get("transforms") else step
    meta[RANK_KEY] = str(rank)
    return w.replace(adapter=a, adapters=tuple(f"lora-{i}" for i in range(n)), meta=meta)
