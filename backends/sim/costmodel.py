"""Analytical (roofline) cost of one engine iteration on one tensor-parallel instance.

Time of an iteration = Σ over operators of max(FLOPs / (peak × eff), bytes / (HBM bw × eff))
(a smooth max for GEMMs, see ``Efficiency.roofline_p``) + tensor-parallel all-reduce (2 per
layer, ring over NVLink/PCIe) + fixed costs (engine CPU overhead, kernel launches).
Linear layers read their weights once per iteration (MoE: the experts the batch's tokens touch);
prefill attention is quadratic (query-key pairs); decode attention reads each sequence's KV and
is its own roofline term, so a decode-only iteration's time is AFFINE in the summed context —
``decode_segment`` and ``iters_within`` use that to skip many iterations in O(1).

All times are seconds, FLOPs and bytes are per GPU of the instance, tokens are tokens.
``iteration`` is pure float math on constants precomputed in ``__init__`` (a few µs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from backends.sim.catalog import GPUSpec, ModelSpec, dtype_bytes, kv_bytes_per_token_per_gpu
from backends.sim.engines import EnginePreset, get_engine

ACT_BYTES = 2.0  # activations are bf16/fp16
MOE_LAYER_KERNELS = 8
"""Kernels of one MoE layer besides the shared expert (vLLM fused MoE): router GEMM, top-k,
token sort/align, activation quantisation, two grouped expert GEMMs, activation, weighted
combine. Each pays ``Efficiency.op_latency_s`` (a dense MLP pays it once per GEMM)."""


def cuda_graph_size(tokens: int, max_size: int = 512) -> int:
    """Token count a vLLM V1 step is padded to when it replays a CUDA graph: the captured sizes
    are 1, 2, 4, multiples of 8 up to 256, then multiples of 16 up to ``max_size``; above it
    the step runs unpadded. Padded rows run through every GEMM (and are routed in MoE layers:
    they carry the stale token ids left in the input buffer)."""
    if tokens > max_size or tokens <= 0:
        return tokens
    if tokens <= 4:
        return 1 if tokens == 1 else (2 if tokens == 2 else 4)
    step = 8 if tokens <= 256 else 16
    return min(-(-tokens // step) * step, max_size)


@dataclass(frozen=True, slots=True)
class IterCost:
    """Cost of one (or a run of) iteration(s): time s, FLOPs and HBM bytes per GPU."""

    time_s: float
    flops: float
    hbm_bytes: float


@dataclass(frozen=True, slots=True)
class Efficiency:
    """Achieved fractions of peak, and fixed costs. Defaults: rounded from fits to real vLLM V1
    (v0.15.1) serving runs on H100 with the ``vllm-v1`` preset and to Vidur's per-operator GEMM
    profiles (``benchmarks/bench_fidelity.py``); refit them for another engine/GPU with
    ``profiles.fit_efficiency``."""

    gemm: float = 0.70
    """Fraction of peak dense FLOP/s reached by large GEMMs."""
    attn: float = 0.45
    """Fraction of peak FLOP/s reached by (flash) attention."""
    mem: float = 0.88
    """Fraction of peak HBM bandwidth reached by memory-bound kernels."""
    comm: float = 0.80
    """Fraction of interconnect bandwidth reached by all-reduce."""
    allreduce_base_s: float = 3e-6
    """Fixed latency of one all-reduce, s."""
    allreduce_latency_s: float = 3e-6
    """Further latency of one all-reduce per log2(tp) step, s (2 GPUs pay it once, 8 GPUs three times)."""
    overhead_scale: float = 1.0
    """Multiplies the engine preset's CPU overheads."""
    layer_overhead_s: float = 1e-5
    """Fixed cost per layer per iteration (kernel launches not hidden by CUDA graphs), s."""
    seq_overhead_s: float = 0.0
    """Extra cost per sequence per iteration on top of the engine preset's, s."""
    roofline_p: float = 4.0
    """GEMMs take (t_compute^p + t_memory^p)^(1/p): a smooth max (p → ∞ is the hard roofline);
    finite p models the slow-down near the ridge point (tile and wave quantisation)."""
    prefill_overhead_s: float = 0.0
    """Extra fixed cost of an iteration that carries prefill tokens (eager, non-graph path), s."""
    op_latency_s: float = 3e-6
    """Shortest time of one GEMM kernel (launch + tail), s; added per linear operator per layer."""

    def __post_init__(self) -> None:
        for k in ("gemm", "attn", "mem", "comm"):
            v = getattr(self, k)
            if not 0.0 < v <= 1.5:
                raise ValueError(f"efficiency {k}={v}: must be in (0, 1.5]")
        if not 1.0 <= self.roofline_p <= 64.0:
            raise ValueError(f"efficiency roofline_p={self.roofline_p}: must be in [1, 64]")
        for k in ("allreduce_base_s", "allreduce_latency_s", "overhead_scale", "layer_overhead_s",
                  "seq_overhead_s", "op_latency_s", "prefill_overhead_s"):
            if getattr(self, k) < 0:
                raise ValueError(f"efficiency {k}={getattr(self, k)}: must be >= 0")


def linear_weight_params(model: ModelSpec) -> int:
    """Parameters of the transformer blocks' linear layers (all experts), whole model."""
    return model.layers * (model.attn_params_per_layer + model.dense_mlp_params_per_layer
                           + model.n_experts * (model.expert_params + model.hidden))


def quantized_params(model: ModelSpec, weight_dtype: str) -> int:
    """Parameters stored in ``weight_dtype`` when it is narrower than 16 bits: the block linear
    layers, less the attention projections where the model's checkpoints keep them 16-bit
    (``ModelSpec.quantize_attention``); all linear parameters for a 16-bit dtype."""
    n = linear_weight_params(model)
    if dtype_bytes(weight_dtype) < 2.0 and not model.quantize_attention:
        n -= model.layers * model.attn_params_per_layer
    return n


def weight_bytes_per_gpu(model: ModelSpec, tp: int = 1, weight_dtype: str = "bf16", expert_shards: int = 1) -> float:
    """Weight bytes on one GPU: block linear layers in ``weight_dtype`` (see ``quantized_params``);
    embeddings, LM head and norms stay 16-bit (as in FP8 checkpoints); everything is split over tp,
    the routed experts of an MoE model over tp × ``expert_shards`` (data-parallel ranks sharing
    the expert layers, ``EnginePreset.dp_shares_experts``)."""
    if expert_shards < 1:
        raise ValueError(f"expert_shards={expert_shards}: must be >= 1")
    q = quantized_params(model, weight_dtype)
    w = (q * dtype_bytes(weight_dtype) + (model.params - q) * 2.0) / tp
    if expert_shards > 1 and model.is_moe:
        w -= expert_weight_bytes(model, weight_dtype) / tp * (1.0 - 1.0 / expert_shards)
    return w


def expert_weight_bytes(model: ModelSpec, weight_dtype: str = "bf16") -> float:
    """Bytes of all routed experts' weights, whole model (always stored in ``weight_dtype``)."""
    return model.layers * model.n_experts * model.expert_params * dtype_bytes(weight_dtype)


class CostModel:
    """Iteration cost of ``model`` on ``tp`` × ``gpu`` under an engine preset."""

    def __init__(self, model: ModelSpec, gpu: GPUSpec, tp: int = 1, weight_dtype: str = "bf16",
                 kv_dtype: str = "bf16", engine: EnginePreset | None = None,
                 efficiency: Efficiency | None = None) -> None:
        if tp < 1:
            raise ValueError(f"tp={tp}: must be >= 1")
        self.model, self.gpu, self.tp = model, gpu, tp
        self.weight_dtype, self.kv_dtype = weight_dtype, kv_dtype
        self.engine = engine or get_engine("vllm-v1")
        self.eff = eff = efficiency or Efficiency()
        self.source = "roofline (default efficiency)" if efficiency is None else "roofline (given efficiency)"
        """Which cost model answers (``backends.sim.profiled`` says which profile, if any)."""
        m, L = model, model.layers
        wb = dtype_bytes(weight_dtype)
        self.weight_bytes = weight_bytes_per_gpu(model, tp, weight_dtype)
        """Weight bytes per GPU."""
        self.kv_bytes_per_token = kv_bytes_per_token_per_gpu(model, tp, kv_dtype)
        """KV-cache bytes per token per GPU."""

        self._inv_pc = 1.0 / (gpu.peak_flops(weight_dtype) * eff.gemm)     # s per GEMM FLOP
        attn_dt = weight_dtype if quantized_params(model, weight_dtype) == linear_weight_params(model) else "bf16"
        self._inv_pc16 = 1.0 / (gpu.peak_flops("bf16") * eff.gemm)        # LM head (16-bit)
        self._inv_pa = 1.0 / (gpu.peak_flops("bf16") * eff.attn)          # s per attention FLOP
        self._inv_bw = 1.0 / (gpu.hbm_sim_bytes_s * eff.mem)              # s per HBM byte
        q, kv, h = m.heads * m.head_dim, m.kv_heads * m.head_dim, m.hidden
        # Dense linear operators over all layers, per GPU: (FLOPs/token, weight bytes, act bytes/token).
        ops = {"qkv": (h * (q + 2 * kv), h + q + 2 * kv), "o": (q * h, q + h)}
        if m.ffn:
            up = (m.mlp_mats - 1) * m.ffn
            ops["mlp_up"] = (h * up, h + up)
            ops["mlp_down"] = (m.ffn * h, m.ffn + h)
        if m.n_shared_experts:
            ops["shared_expert"] = (3 * h * m.shared_ffn * m.n_shared_experts, 2 * h + 2 * m.shared_ffn)
        self._op_names = tuple(ops)
        # per operator: (FLOPs/token, weight bytes, act bytes/token, s per FLOP); the attention
        # projections stay 16-bit in checkpoints that do not quantize them
        dts = {n: (attn_dt if n in ("qkv", "o") else weight_dtype) for n in ops}
        self._ops = tuple((2.0 * L * p / tp, L * p * dtype_bytes(dts[n]) / tp, L * a * ACT_BYTES / tp,
                           1.0 / (gpu.peak_flops(dts[n]) * eff.gemm)) for n, (p, a) in ops.items())
        # MoE: routed experts. FLOPs/token for its k experts; weight bytes of ONE expert (all layers).
        self._moe = m.is_moe
        if m.is_moe:
            self._moe_f = 2.0 * L * m.experts_per_token * m.expert_params / tp
            self._moe_w = L * m.expert_params * wb / tp
            self._moe_a = L * m.experts_per_token * (2 * h + 2 * m.moe_ffn) * ACT_BYTES / tp
            self._moe_miss = 1.0 - m.experts_per_token / m.n_experts
            self._moe_router = 2.0 * L * h * m.n_experts  # replicated router GEMM FLOPs/token
        self.expert_dp = 1
        """Data-parallel ranks sharing the expert layers (``sharing_experts``; 1 = this instance alone)."""
        self._ep_fixed = self._ep_tok = 0.0  # their gather / reduce-scatter per step: s, s per token
        # Attention: causal prefill FLOPs per query-key pair (QK^T and PV), decode per context token.
        self._attn_f_pair = 4.0 * L * m.heads * m.head_dim / tp
        self._attn_pf_a = L * (2 * q / tp) * ACT_BYTES + self.kv_bytes_per_token  # q,o + KV write, per token
        self._kv_tok = self.kv_bytes_per_token
        # Norms, rope, activation, residual adds: memory-bound, bytes per token (all layers).
        self._elem_a = L * 8 * h * ACT_BYTES  # replicated over the TP ranks
        # LM head (vocab-parallel, 16-bit) on the sampled tokens.
        self._lm_f = 2.0 * m.vocab * h / tp
        self._lm_w = m.vocab * h * 2.0 / tp
        self._lm_a = m.vocab * 4.0 / tp
        # Tensor-parallel all-reduce: 2 per layer, ring: 2(tp-1)/tp × message / bw + latency.
        if tp > 1:
            bw = gpu.interconnect_bytes_s * eff.comm
            self._ar_lat = eff.allreduce_base_s + eff.allreduce_latency_s * math.log2(tp)
            self._ar_fixed = 2 * L * self._ar_lat
            self._ar_tok = 2 * L * 2.0 * (tp - 1) / tp * h * ACT_BYTES / bw
        else:
            self._ar_fixed = self._ar_tok = self._ar_lat = 0.0
        self._memo: dict[tuple[int, int], tuple[float, float, float, float, float, float]] = {}
        self._dense_memo: dict[int, tuple[float, float, float]] = {}
        self._lm_memo: dict[int, tuple[float, float, float]] = {}  # LM head per sampled-token count
        self._p = eff.roofline_p
        self._ip = 1.0 / eff.roofline_p
        e = self.engine
        self._oh = (e.iteration_overhead_s * eff.overhead_scale + L * eff.layer_overhead_s
                    + L * (len(self._ops) + (MOE_LAYER_KERNELS if m.is_moe else 0)) * eff.op_latency_s)
        self._oh_seq = e.per_seq_overhead_s * eff.overhead_scale + eff.seq_overhead_s
        self._oh_eager = e.eager_launch_overhead_s * eff.overhead_scale
        self._oh_prefill = self._oh_eager + eff.prefill_overhead_s
        self._graph_max = e.cuda_graph_max_batch

    # ------------------------------------------------------------ core
    def _fixed(self, prefill_tokens: int, prefill_attn_pairs: float, decode_seqs: int,
               decode_tokens: int, prefill_seqs: int) -> tuple[float, float, float, float, float, float]:
        """Cost with zero decode context, and the decode-attention cost per context token:
        (time, flops, bytes, time/ctx, flops/ctx, bytes/ctx)."""
        T = prefill_tokens + decode_tokens
        if T <= 0:
            return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
        inv_bw, p, ip = self._inv_bw, self._p, self._ip
        d = self._dense_memo.get(T)
        if d is None:
            if len(self._dense_memo) >= 8192:
                self._dense_memo.clear()
            d = self._dense_memo[T] = self._dense(T)
        t, f, b = d
        if prefill_tokens:
            t += self.prefill_attention_time(prefill_attn_pairs, prefill_tokens)
            f += self._attn_f_pair * prefill_attn_pairs
            b += self._attn_pf_a * prefill_tokens
        # LM head on sampled tokens
        n_sample = decode_tokens + (prefill_seqs if prefill_tokens else 0)
        if n_sample:
            lm = self._lm_memo.get(n_sample)
            if lm is None:
                if len(self._lm_memo) >= 8192:
                    self._lm_memo.clear()
                fl, by = self._lm_f * n_sample, self._lm_w + self._lm_a * n_sample
                tc, tm = fl * self._inv_pc16, by * inv_bw
                lm = self._lm_memo[n_sample] = ((tc ** p + tm ** p) ** ip, fl, by)
            t += lm[0]
            f += lm[1]
            b += lm[2]
        t += self._oh + self._oh_seq * (decode_seqs + (prefill_seqs if prefill_tokens else 0))
        if prefill_tokens:
            t += self._oh_prefill
        elif decode_seqs > self._graph_max:
            t += self._oh_eager
        # decode attention: per context token, memory-bound KV read vs QK/PV FLOPs
        if decode_seqs:
            t0, ts = self.decode_attention_time(decode_seqs, decode_tokens)
            t += t0
            b += self._attn_pf_a * decode_tokens  # q and output of each decode token
            return t, f, b, ts, self._attn_f_pair * decode_tokens / decode_seqs, self._kv_tok
        return t, f, b, 0.0, 0.0, 0.0

    def _dense(self, T: int) -> tuple[float, float, float]:
        """(time s, FLOPs, bytes) of everything in a step that depends only on its token count
        ``T``: linear operators, MoE experts, elementwise ops, the all-reduces. ``_fixed`` memoises
        it per T on this instance (chunked prefill repeats its token budget)."""
        inv_pc, inv_bw, p, ip = self._inv_pc, self._inv_bw, self._p, self._ip
        Tg = cuda_graph_size(T, self._graph_max)  # rows the GEMMs run (CUDA-graph padding)
        t = self.linear_time(Tg)
        f = b = 0.0
        for fo, wo, ao, _ in self._ops:
            f += fo * T
            b += wo + ao * T
        if self._moe:  # (with ranks sharing the experts: their Tg rows each, this GPU's 1/dp of every expert)
            touched = self.model.n_experts * (1.0 - self._moe_miss ** (Tg * self.expert_dp))
            fl = self._moe_f * T + self._moe_router * T
            by = self._moe_w * touched + self._moe_a * T
            tc, tm = fl * inv_pc, by * inv_bw
            t += (tc ** p + tm ** p) ** ip + self._ep_fixed + self._ep_tok * Tg
            f += fl
            b += by
        by = self._elem_a * T  # elementwise (memory-bound)
        t += by * inv_bw + self._ar_fixed + self._ar_tok * T
        return t, f, b + by

    def sharing_experts(self, dp: int) -> CostModel:
        """This cost model for one of ``dp`` data-parallel ranks that share an MoE model's expert
        layers (``EnginePreset.dp_shares_experts``, vLLM V1): a copy (``self`` is unchanged; a
        dense model or ``dp`` = 1 returns ``self``).

        Per expert layer the ranks gather every rank's tokens, each GPU runs its 1/(dp·tp) slice
        of every expert on all of them, and a reduce-scatter returns each rank its tokens. The
        ranks step in lockstep, each padded to the largest rank's token count; the copy prices a
        step of ``T`` tokens as the largest rank's (the others' then match it: dp·T rows reach
        the experts). So per GPU: expert weight bytes read ÷ dp (fewer experts held), expert
        FLOPs unchanged (dp × the rows, 1/dp of each expert), experts touched counted over dp·T
        rows, plus an all-gather and a reduce-scatter of (dp − 1)·T hidden states over the
        GPU's link. Ranks less loaded than the largest are not priced apart (balanced routing)."""
        if dp < 1:
            raise ValueError(f"sharing_experts: dp={dp} must be >= 1")
        if dp == 1 or not self._moe:
            return self
        if self.expert_dp != 1:
            raise ValueError(f"sharing_experts: already shared by {self.expert_dp} ranks")
        import copy

        cm = copy.copy(self)
        m, L = self.model, self.model.layers
        cm.expert_dp = dp
        cm._moe_w = self._moe_w / dp
        cm.weight_bytes = weight_bytes_per_gpu(m, self.tp, self.weight_dtype, dp)
        bw = self.gpu.interconnect_bytes_s * self.eff.comm
        cm._ep_fixed = 2 * L * (self.eff.allreduce_base_s + self.eff.allreduce_latency_s * math.log2(dp))
        cm._ep_tok = 2 * L * (dp - 1) * m.hidden * ACT_BYTES / bw if bw > 0 else 0.0
        cm._fresh_memos()
        cm.source = f"{self.source}; experts shared by {dp} data-parallel ranks"
        return cm

    def _fresh_memos(self) -> None:
        """Give this object empty memo tables of its own (a ``sharing_experts`` copy prices
        differently from the object it was copied from)."""
        self._memo, self._dense_memo, self._lm_memo = {}, {}, {}

    # ------------------------------------------------------------ operator-time hooks
    # The three operator groups a calibration profile can measure. ``_fixed`` asks these for
    # TIMES only (FLOPs and bytes stay analytical, for MFU/MBU); ``backends.sim.profiled``
    # overrides them with fitted curves. Each is called once per priced step shape.
    def linear_time(self, tokens: int) -> float:
        """Time of the dense linear operators (QKV, O, MLP, shared experts; all layers, per GPU)
        for a step of ``tokens`` tokens, s. Excludes their kernel-launch floor
        (``Efficiency.op_latency_s``, part of the fixed per-step overhead)."""
        t = 0.0
        inv_bw, p, ip = self._inv_bw, self._p, self._ip
        for fo, wo, ao, ipc in self._ops:
            tc, tm = fo * tokens * ipc, (wo + ao * tokens) * inv_bw
            t += (tc ** p + tm ** p) ** ip
        return t

    def prefill_attention_time(self, pairs: float, tokens: int) -> float:
        """Time of prefill attention over ``pairs`` causal query-key pairs for ``tokens`` new
        tokens (all layers), s."""
        tc, tm = self._attn_f_pair * pairs * self._inv_pa, self._attn_pf_a * tokens * self._inv_bw
        return tc if tc > tm else tm

    def decode_attention_time(self, seqs: int, tokens: int) -> tuple[float, float]:
        """Decode attention of ``seqs`` sequences processing ``tokens`` tokens (all layers), as
        ``(fixed s, s per token of summed context)``: the step's time is AFFINE in the summed
        context, which the closed-form decode segments rely on."""
        tc, tm = self._attn_f_pair * tokens / seqs * self._inv_pa, self._kv_tok * self._inv_bw
        return self._attn_pf_a * tokens * self._inv_bw, (tc if tc > tm else tm)

    def iteration(self, prefill_tokens: int, prefill_attn_pairs: float, decode_seqs: int,
                  decode_tokens: int, decode_ctx: float, *, prefill_seqs: int = 1) -> IterCost:
        """Cost of one iteration (see module doc). ``prefill_seqs`` = sequences with a prefill
        chunk this iteration (their last-chunk tokens are sampled; default 1)."""
        return IterCost(*self.step(prefill_tokens, prefill_attn_pairs, decode_seqs, decode_tokens, decode_ctx,
                                   prefill_seqs))

    def step(self, prefill_tokens: int, prefill_attn_pairs: float, decode_seqs: int, decode_tokens: int,
             decode_ctx: float, prefill_seqs: int = 1) -> tuple[float, float, float]:
        """``iteration`` as a plain (time s, FLOPs, bytes) tuple (the engine's per-step call)."""
        if prefill_tokens:
            t, f, b, ts, fs, bs = self._fixed(prefill_tokens, prefill_attn_pairs, decode_seqs,
                                              decode_tokens, prefill_seqs)
        else:
            t, f, b, ts, fs, bs = self._decode_terms(decode_seqs, decode_tokens)
        return t + ts * decode_ctx, f + fs * decode_ctx, b + bs * decode_ctx

    def _decode_terms(self, decode_seqs: int, decode_tokens: int) -> tuple[float, float, float, float, float, float]:
        """``_fixed`` of a decode-only batch, memoised per (seqs, tokens) on this instance (the
        simulator's most frequent call; the memo is bounded)."""
        key = (decode_seqs, decode_tokens)
        hit = self._memo.get(key)
        if hit is None:
            if len(self._memo) >= 8192:
                self._memo.clear()
            hit = self._memo[key] = self._fixed(0, 0.0, decode_seqs, decode_tokens, 0)
        return hit

    def decode_affine(self, decode_seqs: int, tokens_per_seq: int = 1) -> tuple[IterCost, IterCost]:
        """A decode-only iteration of ``decode_seqs`` sequences costs ``base + per_ctx × decode_ctx``:
        returns (base, per_ctx), per_ctx being the cost per token of summed context."""
        t, f, b, ts, fs, bs = self._decode_terms(decode_seqs, decode_seqs * tokens_per_seq)
        return IterCost(t, f, b), IterCost(ts, fs, bs)

    def decode_segment(self, decode_seqs: int, decode_ctx: float, n_iters: int,
                       tokens_per_seq: int = 1) -> IterCost:
        """Total cost of ``n_iters`` decode-only iterations of a fixed set of ``decode_seqs``
        sequences (each processing ``tokens_per_seq`` tokens) whose summed context starts at
        ``decode_ctx`` and grows by decode_seqs × tokens_per_seq per iteration. Closed form,
        equal to the sum of the ``iteration`` calls."""
        if n_iters <= 0 or decode_seqs <= 0:
            return IterCost(0.0, 0.0, 0.0)
        t, f, b, ts, fs, bs = self._decode_terms(decode_seqs, decode_seqs * tokens_per_seq)
        ctx_sum = n_iters * decode_ctx + decode_seqs * tokens_per_seq * (n_iters * (n_iters - 1) / 2.0)
        return IterCost(n_iters * t + ts * ctx_sum, n_iters * f + fs * ctx_sum, n_iters * b + bs * ctx_sum)

    def iters_within(self, decode_seqs: int, decode_ctx: float, budget_s: float, tokens_per_seq: int = 1) -> int:
        """Most decode iterations (as in ``decode_segment``) whose total time is <= ``budget_s``."""
        if decode_seqs <= 0 or budget_s <= 0:
            return 0
        a, _, _, ts, _, _ = self._decode_terms(decode_seqs, decode_seqs * tokens_per_seq)
        g = decode_seqs * tokens_per_seq

        def total(n: int) -> float:
            return n * a + ts * (n * decode_ctx + g * (n * (n - 1) / 2.0))

        qa, qb = ts * g / 2.0, a + ts * decode_ctx - ts * g / 2.0
        if qa > 0:
            n = int((-qb + math.sqrt(qb * qb + 4.0 * qa * budget_s)) / (2.0 * qa))
        else:
            n = int(budget_s / qb)
        n = max(n, 0)
        while total(n + 1) <= budget_s:
            n += 1
        while n > 0 and total(n) > budget_s:
            n -= 1
        return n

    def prefill_time(self, prompt_tokens: int) -> float:
        """Time of a lone full prefill of ``prompt_tokens`` (no context), s."""
        if prompt_tokens <= 0:
            return 0.0
        return self.iteration(prompt_tokens, prompt_tokens * (prompt_tokens + 1) / 2.0, 0, 0, 0.0).time_s

    def linear_op_times(self, tokens: int) -> dict[str, float]:
        """Roofline time of each dense linear operator (qkv, o, mlp_up, mlp_down, ...) for
        ``tokens`` tokens, summed over all layers, s (for per-operator profiles)."""
        out = {}
        for name, (fo, wo, ao, ipc) in zip(self._op_names, self._ops, strict=True):
            tc, tm = fo * tokens * ipc, (wo + ao * tokens) * self._inv_bw
            out[name] = (tc ** self._p + tm ** self._p) ** self._ip + self.model.layers * self.eff.op_latency_s
        return out

    def allreduce_time(self, nbytes: float) -> float:
        """One ring all-reduce of ``nbytes`` over the instance's tp GPUs, s (0 at tp=1)."""
        if self.tp == 1:
            return 0.0
        bw = self.gpu.interconnect_bytes_s * self.eff.comm
        return self._ar_lat + 2.0 * (self.tp - 1) / self.tp * nbytes / bw

    def swap_time(self, tokens: float) -> float:
        """Moving the KV of ``tokens`` tokens between GPU and CPU memory over PCIe (each GPU
        moves its own shard in parallel), s."""
        return tokens * self.kv_bytes_per_token / self.gpu.pcie_bytes_s

    def kv_transfer_time(self, tokens: float, link_bytes_s: float | None = None, latency_s: float = 20e-6) -> float:
        """Sending the KV of ``tokens`` tokens to another instance (disaggregated prefill →
        decode), each GPU its shard over a link of ``link_bytes_s`` per direction (default: the
        GPU's NVLink, i.e. both instances in one node; e.g. 50e9 for 400 Gb/s InfiniBand), s."""
        bw = link_bytes_s or self.gpu.interconnect_bytes_s
        if bw <= 0:
            raise ValueError(f"kv_transfer_time: link_bytes_s={bw} must be > 0")
        return latency_s + tokens * self.kv_bytes_per_token / (bw * self.eff.comm)

    def blocks_per_gib(self, block_size: int = 16) -> float:
        """KV blocks per GiB of GPU memory."""
        return (1 << 30) / (block_size * self.kv_bytes_per_token)

    @property
    def peak_flops(self) -> float:
        """Peak dense FLOP/s per GPU for this weight dtype."""
        return self.gpu.peak_flops(self.weight_dtype)

    @classmethod
    def for_deployment(cls, deployment: object, tp: int = 1, efficiency: Efficiency | None = None) -> CostModel:
        """The cost model of one ``tp``-GPU instance of a ``backends.base.Deployment`` (model and
        GPU by catalog name or file path, engine preset by name, dtypes)."""
        from backends.sim.catalog import get_gpu, get_model

        d = deployment
        return cls(get_model(d.model), get_gpu(d.gpu), tp, d.weight_dtype, d.kv_dtype,  # type: ignore[attr-defined]
                   get_engine(d.engine), efficiency)  # type: ignore[attr-defined]


def efficiency_to_dict(eff: Efficiency) -> dict[str, float]:
    """The fields of ``eff`` (for YAML / MLflow params)."""
    return {f.name: float(getattr(eff, f.name)) for f in fields(eff)}


def efficiency_from_dict(data: dict[str, object]) -> Efficiency:
    """An Efficiency from a mapping (missing keys keep their defaults; unknown keys are an error)."""
    known = {f.name for f in fields(Efficiency)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"efficiency: unknown keys {sorted(unknown)} (known: {', '.join(sorted(known))})")
    return Efficiency(**{k: float(v) for k, v in data.items()})  # type: ignore[arg-type]
