"""A cost model driven by a fitted calibration profile, with the API of ``CostModel``.

``ProfiledCostModel`` is a ``CostModel`` whose efficiency factors are fitted from a profile
(``tuner.calibration.profile`` schema) and whose operator times come from the profile's fitted
curves where the profile measured this (model, GPU, TP):

* linear operators (QKV, O, MLP up/down): the fitted per-layer curve replaces the roofline term
  (``tuner.calibration.fit.LinearCurve``) — it depends on the step's token count only;
* decode attention: the fitted ``lat + a·(batch·context) + b·batch`` replaces the roofline's
  KV-read term, so a decode-only step stays AFFINE in the summed context and
  ``decode_segment`` / ``iters_within`` remain exact closed forms;
* prefill attention: the fitted ``lat + a·pairs + b·tokens`` replaces the roofline term;
* everything else (norms, LM head, all-reduce, engine CPU overhead) is the roofline with the
  fitted efficiency.

``.source`` says what was used, e.g. ``"profile:a245570a649a (vidur h100-sxm llama-2-7b tp1)"``,
``"roofline (efficiency fitted to profile:… h100-sxm rows)"`` or ``"roofline (default efficiency)"``.
All times in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backends.sim.catalog import GPUSpec, ModelSpec, get_gpu, get_model
from backends.sim.costmodel import CostModel, Efficiency
from backends.sim.engines import EnginePreset, get_engine

_OP_NAMES = {"qkv": "qkv_proj", "o": "o_proj", "mlp_up": "mlp_up", "mlp_down": "mlp_down"}


class ProfiledCostModel(CostModel):
    """``CostModel`` + a fitted profile (see module doc). ``profile``: a ``ProfileFit``, a
    profile DataFrame, a profile file or a shared table name; None = the plain roofline."""

    def __init__(self, model: ModelSpec, gpu: GPUSpec, tp: int = 1, weight_dtype: str = "bf16",
                 kv_dtype: str = "bf16", engine: EnginePreset | None = None,
                 efficiency: Efficiency | None = None, profile: Any = None, kv_mem: float = 0.0) -> None:
        if not 0.0 <= kv_mem <= 1.5:
            raise ValueError(f"kv_mem={kv_mem}: must be in [0, 1.5] (0 = the efficiency's mem)")
        self.kv_mem = kv_mem
        """Fraction of HBM bandwidth reached reading KV in decode attention (0 = ``efficiency.mem``):
        paged decode attention streams long contiguous blocks and can run closer to peak than
        the GEMVs' weight reads."""
        self._curves: dict[str, Any] = {}
        self._attn: dict[str, Any] = {}
        source = "roofline (given efficiency)" if efficiency is not None else "roofline (default efficiency)"
        if profile is not None:
            from tuner.calibration.fit import ProfileFit

            fit = profile if isinstance(profile, ProfileFit) else ProfileFit(profile)
            self.profile_fit = fit
            if efficiency is None:
                eff, scope = fit.efficiency(model.name, gpu.name, tp, engine)
                if scope != "none":
                    efficiency = eff
                    source = f"roofline (efficiency fitted to profile:{fit.key} {gpu.name} rows)"
            self._curves = dict(fit.linear_curves(model.name, gpu.name, tp))
            self._attn = dict(fit.attention_curves(model.name, gpu.name, tp))
            if self._curves or self._attn:
                srcs = "+".join(fit.sources(model.name, gpu.name, tp))
                ops = ",".join([*self._curves, *self._attn])
                source = f"profile:{fit.key} ({srcs} {gpu.name} {model.name} tp{tp}: {ops})"
        super().__init__(model, gpu, tp, weight_dtype, kv_dtype, engine, efficiency)
        self.source = source
        """Which cost model answered: the profile (and which ops) or the roofline."""
        self._lin = [(_OP_NAMES.get(n, n), i) for i, n in enumerate(self._op_names) if _OP_NAMES.get(n, n) in self._curves]

    # ------------------------------------------------------------ overrides
    def _roofline_op(self, i: int, tokens: int) -> float:
        """The base class's time of linear op ``i`` for ``tokens`` tokens (all layers, with op latency)."""
        fo, wo, ao = self._ops[i]
        tc, tm = fo * tokens * self._inv_pc, (wo + ao * tokens) * self._inv_bw
        return (tc ** self._p + tm ** self._p) ** self._ip + self.model.layers * self.eff.op_latency_s

    def _fixed(self, prefill_tokens: int, prefill_attn_pairs: float, decode_seqs: int,
               decode_tokens: int, prefill_seqs: int) -> tuple[float, float, float, float, float, float]:
        t, f, b, ts, fs, bs = super()._fixed(prefill_tokens, prefill_attn_pairs, decode_seqs, decode_tokens,
                                             prefill_seqs)
        T = prefill_tokens + decode_tokens
        if T <= 0:
            return t, f, b, ts, fs, bs
        L = self.model.layers
        for name, i in self._lin:
            t += L * self._curves[name](T) - self._roofline_op(i, T)
        pre = self._attn.get("attn_prefill")
        if pre is not None and prefill_tokens:
            tc = self._attn_f_pair * prefill_attn_pairs * self._inv_pa
            tm = self._attn_pf_a * prefill_tokens * self._inv_bw
            t += L * pre(prefill_attn_pairs, prefill_tokens) - max(tc, tm)
        dec = self._attn.get("attn_decode")
        if self.kv_mem and decode_seqs and dec is None:
            tc = self._attn_f_pair * decode_tokens / decode_seqs * self._inv_pa
            tm = self._kv_tok / (self.gpu.hbm_bytes_s * self.kv_mem)
            ts = tc if tc > tm else tm
        if dec is not None and decode_seqs:
            t += L * (dec.lat + dec.b * decode_seqs) - self._attn_pf_a * decode_tokens * self._inv_bw
            ts = L * dec.a
        return t, f, b, ts, fs, bs

    def linear_op_times(self, tokens: int) -> dict[str, float]:
        out = super().linear_op_times(tokens)
        for name, _ in self._lin:
            key = next(k for k, v in _OP_NAMES.items() if v == name)
            out[key] = self.model.layers * self._curves[name](tokens)
        return out


def cost_model_for(model: str | Path | ModelSpec, gpu: str | Path | GPUSpec, tp: int = 1, weight_dtype: str = "bf16",
                   kv_dtype: str = "bf16", engine: str | EnginePreset = "vllm-v1", profile: Any = None,
                   efficiency: Efficiency | None = None, kv_mem: float = 0.0) -> ProfiledCostModel:
    """The cost model the simulator should use for one instance: the profile's fitted operators
    where ``profile`` covers (model, GPU, TP), the fitted roofline elsewhere; ``.source`` says
    which. ``profile``: a ``ProfileFit`` (reuse one across trials: its fits are memoised), a
    DataFrame, a profile file, a shared table name, or None (the plain roofline)."""
    m = model if isinstance(model, ModelSpec) else get_model(model)
    g = gpu if isinstance(gpu, GPUSpec) else get_gpu(gpu)
    e = engine if isinstance(engine, EnginePreset) else get_engine(engine)
    return ProfiledCostModel(m, g, tp, weight_dtype, kv_dtype, e, efficiency, profile, kv_mem)


__all__ = ["ProfiledCostModel", "cost_model_for"]
