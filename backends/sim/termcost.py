"""``TermsCostModel``: the simulator's ``CostModel`` priced by fitted operator-class terms.

Step times come from ``backends.sim.terms.FittedTerms`` (GPU work per operator class, overlapped
with the host's launch floor by a smooth max); FLOPs and HBM bytes stay the roofline's analytical
counts (MFU / MBU are unchanged). The simulator relies on a step being AFFINE in its summed decode
context (``decode_segment`` / ``iters_within`` skip many decode steps in closed form), while the
smooth max is convex in it. A decode-only step is therefore priced by the line through the smooth
max that fits it best (least relative squared error) at ``ctx_per_seq`` × 2^k tokens per decoding
sequence, k = -2..3 (256 … 8192 by default), computed once per batch size; ``iteration``, the
decode segments and the engine's memoised decode coefficients all use that line, so the closed
forms stay exact sums of ``iteration`` calls. A step with prefill tokens is priced exactly. The
context-free parts are memoised per token count. All times in seconds.
"""

from __future__ import annotations

from backends.sim.catalog import GPUSpec, ModelSpec
from backends.sim.costmodel import CostModel, Efficiency
from backends.sim.engines import EnginePreset
from backends.sim.terms import FittedTerms, dense_features, step_features


class TermsCostModel(CostModel):
    """``CostModel`` whose step times are ``terms`` (see module doc)."""

    def __init__(self, model: ModelSpec, gpu: GPUSpec, tp: int = 1, weight_dtype: str = "bf16",
                 kv_dtype: str = "bf16", engine: EnginePreset | None = None,
                 efficiency: Efficiency | None = None, *, terms: FittedTerms, ctx_per_seq: float = 1024.0) -> None:
        if ctx_per_seq <= 0:
            raise ValueError(f"ctx_per_seq={ctx_per_seq}: must be > 0")
        super().__init__(model, gpu, tp, weight_dtype, kv_dtype, engine, efficiency)
        self.terms, self.ctx_per_seq = terms, ctx_per_seq
        self._w = tuple(float(x) for x in terms.work)
        self._f = tuple(float(x) for x in terms.floor)
        self._q = terms.q
        self.source = "fitted operator-class terms"
        self._dense_terms: dict[int, tuple[float, float, float, float, float, float]] = {}

    def _fresh_memos(self) -> None:
        super()._fresh_memos()
        self._dense_terms = {}

    def _parts(self, prefill_tokens: int, pairs: float, decode_seqs: int, decode_tokens: int,
               prefill_seqs: int) -> tuple[float, float, float]:
        """(work at zero context s, work per context token s, floor s) of one step."""
        T = prefill_tokens + decode_tokens
        dense = self._dense_terms.get(T)
        if dense is None:
            if len(self._dense_terms) >= 8192:
                self._dense_terms.clear()
            dense = self._dense_terms[T] = dense_features(self, T)
        work, floor = step_features(self, prefill_tokens, pairs, prefill_seqs, decode_seqs, decode_tokens, 1.0, dense)
        with_ctx = sum(c * x for c, x in zip(self._w, work, strict=True))
        work[3] = work[4] = 0.0  # the decode-attention terms are per context token (ctx = 1 above)
        w0 = sum(c * x for c, x in zip(self._w, work, strict=True))
        return w0, with_ctx - w0, sum(c * x for c, x in zip(self._f, floor, strict=True))

    def _smax(self, work: float, floor: float) -> float:
        q = self._q
        return (work ** q + floor ** q) ** (1.0 / q)

    def step(self, prefill_tokens: int, prefill_attn_pairs: float, decode_seqs: int, decode_tokens: int,
             decode_ctx: float, prefill_seqs: int = 1) -> tuple[float, float, float]:
        """As ``CostModel.step`` (and so ``iteration``); a step with prefill tokens is priced
        exactly (its context is known), a decode-only step by the affine form (see module doc)."""
        if not prefill_tokens:
            return super().step(prefill_tokens, prefill_attn_pairs, decode_seqs, decode_tokens, decode_ctx,
                                prefill_seqs)
        _, f, b, _, fs, bs = CostModel._fixed(self, prefill_tokens, prefill_attn_pairs, decode_seqs, decode_tokens,
                                              prefill_seqs)  # analytical FLOPs and bytes
        w0, slope, fl = self._parts(prefill_tokens, prefill_attn_pairs, decode_seqs, decode_tokens, prefill_seqs)
        return self._smax(w0 + slope * decode_ctx, fl), f + fs * decode_ctx, b + bs * decode_ctx

    def _fixed(self, prefill_tokens: int, prefill_attn_pairs: float, decode_seqs: int,
               decode_tokens: int, prefill_seqs: int) -> tuple[float, float, float, float, float, float]:
        _, f, b, _, fs, bs = super()._fixed(prefill_tokens, prefill_attn_pairs, decode_seqs, decode_tokens, prefill_seqs)
        if prefill_tokens + decode_tokens <= 0:
            return 0.0, f, b, 0.0, fs, bs
        w0, slope, fl = self._parts(prefill_tokens, prefill_attn_pairs, decode_seqs, decode_tokens, prefill_seqs)
        if not decode_seqs:
            return self._smax(w0, fl), f, b, 0.0, fs, bs
        # the line through the smooth max that minimises the relative squared error at contexts
        # of ctx_per_seq × 2^k tokens per sequence, k = -2..3
        xs = [decode_seqs * self.ctx_per_seq * 2.0 ** k for k in range(-2, 4)]
        ys = [self._smax(w0 + slope * x, fl) for x in xs]
        ws = [1.0 / (y * y) for y in ys]
        sw = sum(ws)
        mx = sum(w * x for w, x in zip(ws, xs, strict=True)) / sw
        my = sum(w * y for w, y in zip(ws, ys, strict=True)) / sw
        sxx = sum(w * (x - mx) ** 2 for w, x in zip(ws, xs, strict=True))
        ts = sum(w * (x - mx) * (y - my) for w, x, y in zip(ws, xs, ys, strict=True)) / sxx
        return max(my - ts * mx, 0.0), f, b, ts, fs, bs


__all__ = ["TermsCostModel"]
