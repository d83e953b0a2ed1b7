"""Fitted operator-class terms: a richer, still mechanistic step-time model for measured batches.

The plain roofline (``CostModel``) prices each operator at max(FLOPs/compute, bytes/bandwidth)
with a few global efficiencies. Fitted to the Splitwise tables it cannot at once fit the
launch-bound short steps (decode at TP8, 128-token prefills) and the long compute-bound ones, and
its fitted efficiencies do not transfer between GPUs (``docs/calibration.md``). ``FittedTerms``
prices one step as two streams that overlap, the GPU's work and the host's kernel-launch floor::

    work  = Σ_k θ_k · ideal_k            (s; ideal_k = operator class k at peak, per GPU)
    floor = (c_step + c_layer·L) · REF_HBM / hbm_bytes_s + c_seq·seqs + c_prefill·[prefill]
    time  = (work^q + floor^q)^(1/q)     (a smooth max: whichever stream is longer sets the pace)

Operator classes (``WORK_TERMS``; each ideal time is per GPU of the instance):

* ``gemm``: Σ over linear operators (and the LM head) of max(FLOPs/peak, bytes/HBM bw);
* ``gemm_ridge``: Σ of min(FLOPs/peak, bytes/HBM bw) — the slow-down near the ridge point;
* ``prefill_attn``: causal query-key pair FLOPs / peak (quadratic in a prompt);
* ``kv_read``: decode attention's KV-cache bytes / HBM bw (summed context);
* ``decode_attn``: decode attention FLOPs / peak (per query token × context);
* ``elementwise``: norms, rope, activation, residual adds, q/o and KV writes: bytes / HBM bw;
* ``activation_spill``: the elementwise traffic again × T / (T + T_c), T_c = 32 MiB / (2·hidden):
  a step's activations (T × hidden × 2 B per layer) outgrow the on-chip cache and are re-read
  from HBM; measured on Splitwise (per-token prefill cost rises ~40 % between 2k and 4k tokens
  alike for one long prompt and for a batch of short ones, so it is not attention);
* ``allreduce_bytes``: 2 ring all-reduces per layer: 2(tp−1)/tp × T × hidden × 2 B / link bw;
* ``allreduce_hop``: 2 all-reduces per layer × log2(tp) (s per hop: the coefficient is a latency).

The floor (``FLOOR_TERMS``, s) is the eager engine's cost per step, per layer, per sequence and
per prefill step, in two parts that behave differently across GPUs (measured on Splitwise):

* the launch floor, per step and per layer (``step_s``, ``layer_s``): a chain of small kernels,
  latency-bound on the GPU; expressed at ``REF_HBM`` (A100-80GB) and scaled by the GPU's memory
  speed (a one-sequence decode step of Llama-2-70B at TP4/TP8 takes ~44 ms on DGX-A100 and ~30 ms
  on DGX-H100 whatever the weight bytes per GPU: ratio ~1.5, HBM bandwidth ratio 1.64);
* the host's bookkeeping, per sequence and per prefill step (``seq_s``, ``prefill_s``): Python
  work on the CPU, in seconds, the same on any GPU. Decode steps of Llama-2-70B at TP4/TP8 grow by
  0.25-0.26 ms per sequence from b = 1 to 32 on both hosts (A100 8.0-7.9 ms, H100 7.6-8.2 ms for
  31 sequences), and a 128-token prefill costs 22-25 ms more than a one-sequence decode step on
  both (A100 24.2 / 22.1 ms, H100 20.5 / 25.3 ms at TP4 / TP8): neither scales with the GPU.
  Scaling them too (as the launch floor) put Splitwise leave-one-GPU-out at p90 17.0 % instead
  of 13.0 % (docs/calibration.md).

Fitting (``fit_terms``): log-space least squares on the log error, each coefficient pulled weakly
toward a prior (``DEFAULT_PRIOR``, or another table's fit), so unidentified terms stay put. The
coefficients are multiples of the ideal times (1 = peak), the floor in seconds. All times in s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from functools import lru_cache

import numpy as np

from backends.sim.catalog import get_gpu, get_model
from backends.sim.costmodel import ACT_BYTES, CostModel, Efficiency

WORK_TERMS = ("gemm", "gemm_ridge", "prefill_attn", "kv_read", "decode_attn", "elementwise", "activation_spill",
              "allreduce_bytes", "allreduce_hop")
FLOOR_TERMS = ("step_s", "layer_s", "seq_s", "prefill_s")
REF_HBM = 2.039e12
"""HBM bytes/s at which the launch-floor coefficients (``step_s``, ``layer_s``) are stated (A100-80GB)."""
SPILL_BYTES = 32 * 2**20
"""Activation working set (bytes per layer) at which half of the elementwise traffic spills."""
_UNIT = Efficiency(gemm=1.0, attn=1.0, mem=1.0, comm=1.0, allreduce_base_s=0.0, allreduce_latency_s=0.0,
                   overhead_scale=0.0, layer_overhead_s=0.0, seq_overhead_s=0.0, op_latency_s=0.0,
                   prefill_overhead_s=0.0, roofline_p=64.0)


@dataclass(frozen=True, slots=True)
class FittedTerms:
    """Coefficients of the step-time model (see module doc): one per ``WORK_TERMS`` (multiples
    of the ideal time), one per ``FLOOR_TERMS`` (s; the launch floor at ``REF_HBM``), and the
    smooth-max power."""

    gemm: float = 1.3
    gemm_ridge: float = 0.3
    prefill_attn: float = 2.0
    kv_read: float = 1.5
    decode_attn: float = 10.0
    elementwise: float = 5.0
    activation_spill: float = 10.0
    allreduce_bytes: float = 2.0
    allreduce_hop: float = 2e-5
    step_s: float = 5e-3
    layer_s: float = 2e-4
    seq_s: float = 1e-4
    prefill_s: float = 5e-3
    q: float = 4.0

    def __post_init__(self) -> None:
        for f in fields(self):
            if not getattr(self, f.name) >= 0.0:
                raise ValueError(f"fitted terms {f.name}={getattr(self, f.name)}: must be >= 0")
        if not 1.0 <= self.q <= 64.0:
            raise ValueError(f"fitted terms q={self.q}: must be in [1, 64]")

    @property
    def work(self) -> np.ndarray:
        return np.array([getattr(self, k) for k in WORK_TERMS])

    @property
    def floor(self) -> np.ndarray:
        return np.array([getattr(self, k) for k in FLOOR_TERMS])

    def step_time(self, work_ideal: np.ndarray, floor_counts: np.ndarray) -> np.ndarray:
        """Times (s) of steps given their ideal times (n × WORK_TERMS) and floor counts (n × FLOOR_TERMS)."""
        w, f = work_ideal @ self.work, floor_counts @ self.floor
        return (w ** self.q + f ** self.q) ** (1.0 / self.q)

    def to_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> FittedTerms:
        known = {f.name for f in fields(cls)}
        if set(data) - known:
            raise ValueError(f"fitted terms: unknown keys {sorted(set(data) - known)}")
        return cls(**{k: float(v) for k, v in data.items()})  # type: ignore[arg-type]


DEFAULT_PRIOR = FittedTerms()
"""Physically plausible starting point (rounded from a fit to Splitwise)."""
REFERENCE_PRIOR_WEIGHT = 0.3
"""Pull of the reference prior (``reference_prior``: Splitwise's work terms) on a fit to a
smaller table (Sarathi: 32 rows; a ``servetune calibrate`` profile's batch rows)."""


@lru_cache(maxsize=256)
def _unit_cm(model: str, gpu: str, tp: int, weight_dtype: str) -> CostModel:
    return CostModel(get_model(model), get_gpu(gpu), tp, weight_dtype, "bf16", None, _UNIT)


def dense_features(cm: CostModel, tokens: int) -> tuple[float, float, float, float, float, float]:
    """The ideal times that depend only on a step's token count (s): GEMM max and ridge terms of
    the linear operators (MoE experts included), elementwise, activation spill, all-reduce bytes,
    and the all-reduce hop count. Data-parallel ranks sharing the experts (``cm.expert_dp``,
    ``CostModel.sharing_experts``): experts touched by all ranks' rows, and their gather and
    reduce-scatter counted with the all-reduces."""
    m, gpu, tp, L, T = cm.model, cm.gpu, cm.tp, cm.model.layers, tokens
    bw, eff_gemm = gpu.hbm_bytes_s, cm.eff.gemm
    shapes = [(fo * T, wo + ao * T, 1.0 / (ipc * eff_gemm)) for fo, wo, ao, ipc in cm._ops]
    if cm._moe:
        touched = m.n_experts * (1.0 - cm._moe_miss ** (T * cm.expert_dp))
        shapes.append(((cm._moe_f + cm._moe_router) * T, cm._moe_w * touched + cm._moe_a * T,
                       gpu.peak_flops(cm.weight_dtype)))
    big = small = 0.0
    for fl, by, peak in shapes:
        tc, tm = fl / peak, by / bw
        big += max(tc, tm)
        small += min(tc, tm)
    t_c = SPILL_BYTES / (2.0 * m.hidden)
    spill = cm._elem_a * T * (T / (T + t_c)) / bw if T else 0.0
    if tp > 1:
        ar_b = 2 * L * 2.0 * (tp - 1) / tp * m.hidden * ACT_BYTES * T / gpu.interconnect_bytes_s
        ar_h = 2 * L * math.log2(tp)
    else:
        ar_b = ar_h = 0.0
    if cm.expert_dp > 1:
        dp = cm.expert_dp
        ar_b += 2 * L * (dp - 1) * m.hidden * ACT_BYTES * T / gpu.interconnect_bytes_s
        ar_h += 2 * L * math.log2(dp)
    return big, small, (cm._elem_a + cm._attn_pf_a) * T / bw, spill, ar_b, ar_h


def step_features(cm: CostModel, prefill_tokens: int, prefill_pairs: float, prefill_seqs: int, decode_seqs: int,
                  decode_tokens: int, decode_ctx: float,
                  dense: tuple[float, float, float, float, float, float] | None = None) -> tuple[list[float], list[float]]:
    """Ideal times (s, ``WORK_TERMS`` order) and floor counts (``FLOOR_TERMS`` order: steps and
    layers scaled by REF_HBM / HBM bw, sequences and prefill steps as they are: see the module
    doc) of one step; ``cm`` is any ``CostModel`` of the instance (its shapes are read);
    ``dense``: ``dense_features`` of the step's token count, if memoised by the caller."""
    gpu, L = cm.gpu, cm.model.layers
    bw, pk16 = gpu.hbm_bytes_s, gpu.peak_flops("bf16")
    big, small, elem, spill, ar_b, ar_h = dense or dense_features(cm, prefill_tokens + decode_tokens)
    n_sample = decode_tokens + (prefill_seqs if prefill_tokens else 0)
    if n_sample:  # LM head on the sampled tokens (16-bit)
        tc, tm = cm._lm_f * n_sample / pk16, (cm._lm_w + cm._lm_a * n_sample) / bw
        big, small = big + max(tc, tm), small + min(tc, tm)
    dec_q = decode_tokens / decode_seqs if decode_seqs else 0.0
    work = [big, small, cm._attn_f_pair * prefill_pairs / pk16, cm._kv_tok * decode_ctx / bw,
            cm._attn_f_pair * decode_ctx * dec_q / pk16, elem, spill, ar_b, ar_h]
    s = REF_HBM / bw
    floor = [s, s * L, float(decode_seqs + (prefill_seqs if prefill_tokens else 0)), 1.0 if prefill_tokens else 0.0]
    return work, floor


def row_features(rows: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-step features of iteration rows (``profiles.ProfileRow`` with ``batches``): work
    (steps × WORK_TERMS), floor (steps × FLOOR_TERMS) and the row index of each step."""
    work, floor, idx = [], [], []
    for i, r in enumerate(rows):
        if r.op or not r.batches:
            raise ValueError(f"fitted terms price iteration rows; {r.label!r} is an operator row")
        cm = _unit_cm(r.model, r.gpu, r.tp, r.weight_dtype)
        for pt, pairs, ps, ds, dt, ctx in r.batches:
            w, f = step_features(cm, pt, pairs, ps, ds, dt, ctx)
            work.append(w)
            floor.append(f)
            idx.append(i)
    return np.array(work), np.array(floor), np.array(idx)


def predict_terms(rows: Sequence, terms: FittedTerms) -> np.ndarray:
    """Predicted times (s) of iteration rows: the sum of their steps' times."""
    work, floor, idx = row_features(rows)
    return np.bincount(idx, terms.step_time(work, floor), minlength=len(rows))


def terms_ape(rows: Sequence, terms: FittedTerms) -> list[float]:
    """Absolute percentage errors of ``predict_terms``, %."""
    meas = np.array([r.measured_s for r in rows])
    return list(np.abs(predict_terms(rows, terms) / meas - 1.0) * 100.0)


_NAMES = WORK_TERMS + FLOOR_TERMS
PHYSICAL_BOUNDS = {"prefill_attn": (1.0, 4.0)}
"""Coefficients with a physical range (multiples of the ideal time): prefill attention runs as a
fused FlashAttention-class kernel, at most at peak (1) and at no less than a quarter of it (4).
Without the bound, a fit on one model at one TP degree (Splitwise: BLOOM-176B at TP8 alone) put
its long-prompt cost into attention at 11.4x ideal and carried it over to Llama-2-70B at TP2
(docs/calibration.md). Other coefficients: [1e-9, 1e3]."""
_BLO = np.array([math.log(PHYSICAL_BOUNDS.get(k, (1e-9, 1e3))[0]) for k in _NAMES])
_BHI = np.array([math.log(PHYSICAL_BOUNDS.get(k, (1e-9, 1e3))[1]) for k in _NAMES])


def fit_terms(rows: Sequence, *, prior: FittedTerms = DEFAULT_PRIOR, prior_weight: float = 0.01) -> FittedTerms:
    """Coefficients minimising the log error of ``predict_terms`` on ``rows`` (scipy least
    squares in log space, within [1e-9, 1e3] or ``PHYSICAL_BOUNDS``); each is pulled toward ``prior`` with weight
    ``prior_weight`` per row (a prior fitted on another table makes a better start than the
    default for a small table). The smooth-max power stays the prior's."""
    from scipy.optimize import least_squares

    rows = list(rows)
    if not rows:
        raise ValueError("fit_terms: no rows")
    work, floor, idx = row_features(rows)
    meas = np.log([r.measured_s for r in rows])
    nw, q = len(WORK_TERMS), prior.q
    x0 = np.clip(np.log(np.maximum([getattr(prior, k) for k in _NAMES], 1e-9)), _BLO + 1e-9, _BHI - 1e-9)
    w = math.sqrt(prior_weight * len(rows) / len(x0))

    def resid(x: np.ndarray) -> np.ndarray:
        c = np.exp(x)
        t = ((work @ c[:nw]) ** q + (floor @ c[nw:]) ** q) ** (1.0 / q)
        pred = np.log(np.maximum(np.bincount(idx, t, minlength=len(rows)), 1e-12))
        return np.concatenate([pred - meas, w * (x - x0) / 3.0])

    sol = least_squares(resid, x0, bounds=(_BLO, _BHI), ftol=1e-12, xtol=1e-12,
                        gtol=1e-12, max_nfev=200 * len(x0))
    return FittedTerms(**{k: float(v) for k, v in zip(_NAMES, np.exp(sol.x), strict=True)}, q=q)


@lru_cache(maxsize=1)
def reference_prior() -> FittedTerms:
    """The prior of a fit to another engine's table (Sarathi, a ``servetune calibrate`` profile):
    the Splitwise fit's WORK coefficients (how fast the GPU's kernels run relative to peak: they
    carry over between engines on the same kind of GPU) with the default FLOOR coefficients (the
    launch and host bookkeeping costs of the engine that Splitwise measured: another engine has its
    own). With the Splitwise floor as prior, Sarathi's 128-token prefill was predicted 53 % too slow
    out of sample: Splitwise's engine spends ~22 ms more on a small prefill step than on a decode
    step, Sarathi's 1.3 ms (48.1 vs 46.8 ms). Immutable, memoised."""
    sw = splitwise_terms()
    return replace(sw, **{k: getattr(DEFAULT_PRIOR, k) for k in FLOOR_TERMS})


@lru_cache(maxsize=1)
def splitwise_terms() -> FittedTerms:
    """The terms fitted to the bundled Splitwise table (``profiles.load_rows("splitwise")``): the
    reference prior of smaller fits. Immutable, memoised."""
    from backends.sim.profiles import load_rows

    return fit_terms(load_rows("splitwise"))


__all__ = ["DEFAULT_PRIOR", "PHYSICAL_BOUNDS", "REFERENCE_PRIOR_WEIGHT", "FLOOR_TERMS", "REF_HBM", "WORK_TERMS", "FittedTerms", "dense_features", "fit_terms",
           "predict_terms", "reference_prior", "row_features", "splitwise_terms", "step_features", "terms_ape"]
