"""Speculative decoding (SpecInfer / EAGLE / AdaSpec) priced in closed form.

Each speculative iteration a drafter proposes k tokens per sequence (ngram: free prompt lookup;
draft: k sequential decode steps of a small catalog model, priced by its own ``CostModel``),
then the target verifies k + 1 tokens per sequence in one forward (``decode_tokens = seqs ×
(k + 1)``). With per-token acceptance α, a sequence gains E(k) = (1 − α^(k+1)) / (1 − α)
tokens per iteration in expectation (accepted drafts + the bonus token).

The engine's decode pool counts *tokens* (one pool step = one token per sequence). A
speculative iteration is therefore priced per token step as (iteration cost) / E(k): over n
token steps of a fixed batch the time stays affine in the summed context, so decode segments
keep their closed form, and KV grows by accepted tokens only. This is the expectation, not a
sample: runs are deterministic. Mixed iterations (prefill chunks
+ decodes) verify k + 1 tokens too and advance each decode by floor(E) or floor(E) + 1 tokens
(the fraction carried from one mixed iteration to the next, so their mean is E). A draft model's weights and its KV (same tokens,
its own bytes per token) are taken out of the KV pool.

α per run: ``spec_acceptance`` if set, else the request-weighted mean over the workload of
``spec_acceptance_by_tenant`` (missing tenants: the method default), else the method default
(ngram 0.5, draft 0.7). Per-request α in one batch is not modelled (the batch advances at
the mean). ``spec_dynamic`` picks k in 1..spec_k per batch size and context (bucketed) to
maximise expected tokens per second of iteration time (k = 0: no speculation, as AdaSpec /
vLLM's dynamic speculation turn it off at large batches).
"""

from __future__ import annotations

from backends.sim.costmodel import CostModel
from tuner.policy import Policy
from workloads.workload import Workload

DEFAULT_ACCEPTANCE = {"ngram": 0.5, "draft": 0.7}


def expected_tokens(alpha: float, k: int) -> float:
    """E(k) = (1 − α^(k+1)) / (1 − α): tokens a sequence gains per speculative iteration."""
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def run_acceptance(policy: Policy, workload: Workload) -> float:
    """The α this run assumes (see module doc)."""
    if policy.spec_acceptance > 0:
        return policy.spec_acceptance
    base = DEFAULT_ACCEPTANCE[policy.speculation]
    if not policy.spec_acceptance_by_tenant or workload.n == 0:
        return base
    by = dict(policy.spec_acceptance_by_tenant)
    per = [by.get(name, base) for name in workload.tenants]
    counts = [0] * len(per)
    for i, c in zip(*_unique(workload.tenant), strict=True):
        counts[i] = c
    return sum(a * c for a, c in zip(per, counts, strict=True)) / max(sum(counts), 1)


def _unique(a):
    import numpy as np

    u, c = np.unique(a, return_counts=True)
    return u.tolist(), c.tolist()


class Speculator:
    """Per-token-step decode coefficients under speculation, memoised per (seqs, k)."""

    __slots__ = ("cm", "draft", "alpha", "k_max", "dynamic", "ngram", "_memo", "_smemo")

    def __init__(self, policy: Policy, workload: Workload, cm: CostModel, draft: CostModel | None) -> None:
        self.cm, self.draft = cm, draft
        self.alpha = run_acceptance(policy, workload)
        self.k_max = policy.spec_k
        self.dynamic = policy.spec_dynamic
        self._memo: dict[tuple[int, int], tuple[float, ...]] = {}
        self._smemo: dict[int, tuple[float, ...]] = {}

    def iteration_terms(self, r: int, k: int) -> tuple[float, float, float, float, float, float]:
        """ONE speculative iteration of r sequences: (time, time/ctx, flops, flops/ctx, bytes,
        bytes/ctx) with ctx the summed context: k draft steps + target verification of k+1."""
        base, per = self.cm.decode_affine(r, k + 1)
        t, ts, f, fs, b, bs = base.time_s, per.time_s, base.flops, per.flops, base.hbm_bytes, per.hbm_bytes
        if self.draft is not None:
            db, dp = self.draft.decode_affine(r)
            t += k * db.time_s
            ts += k * dp.time_s
            f += k * db.flops
            fs += k * dp.flops
            b += k * db.hbm_bytes
            bs += k * dp.hbm_bytes
        return t, ts, f, fs, b, bs

    def coef(self, r: int, k: int) -> tuple[float, ...]:
        """Per TOKEN step (engine pool step): ``iteration_terms / E(k)``, then E(k) and k."""
        c = self._memo.get((r, k))
        if c is None:
            e = expected_tokens(self.alpha, k)
            c = self._memo[(r, k)] = (*(x / e for x in self.iteration_terms(r, k)), e, k)
        return c

    def step_coef(self, r: int, ctx: int) -> tuple[float, ...]:
        """``coef(r, pick_k(r, ctx))`` memoised on one int key (the engine's per-step call;
        ``[7]`` is the k chosen)."""
        key = r << 7 | (ctx // r + 1).bit_length() if self.dynamic else r << 7
        c = self._smemo.get(key)
        if c is None:
            c = self._smemo[key] = self.coef(r, self.pick_k(r, ctx))
        return c

    def pick_k(self, r: int, ctx: int) -> int:
        """k for a batch of r sequences with summed context ctx (fixed, or dynamic: most
        expected tokens per second at this batch size, context bucketed by powers of 2; the same
        buckets as ``step_coef``, which memoises it)."""
        if not self.dynamic:
            return self.k_max
        bucket = (ctx // r + 1).bit_length() - 1  # = floor(log2(ctx / r + 1)), exactly
        c_avg = r * (2.0 ** bucket)
        best, k = -1.0, 1
        for kk in range(0, self.k_max + 1):  # k = 0: no speculation
            t, ts, *_ = self.iteration_terms(r, kk)
            rate = expected_tokens(self.alpha, kk) / (t + ts * c_avg)
            if rate > best:
                best, k = rate, kk
        return k
