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

from functools import lru_cache
from pathlib import Path
from typing import Any

from backends.base import COST_MODELS
from backends.sim.catalog import GPUSpec, ModelSpec, get_gpu, get_model
from backends.sim.costmodel import CostModel, Efficiency
from backends.sim.engines import EnginePreset, get_engine

_OP_NAMES = {"qkv": "qkv_proj", "o": "o_proj", "mlp_up": "mlp_up", "mlp_down": "mlp_down"}


def _catalog_gpu(name: str) -> str:
    """The catalog GPU ``name`` resolves to (by name or alias, case-insensitive), else ``name``
    lower-cased (a GPU the catalog does not know matches only itself)."""
    try:
        return get_gpu(name).name
    except (ValueError, OSError):
        return name.strip().lower()


def profile_device(fit: Any, model: str, gpu: str, tp: int) -> str | None:
    """The ``device`` under which ``fit`` measured (``model``, ``gpu``, ``tp``), or None: ``gpu``
    itself, else a device naming the same catalog GPU (an alias: ``cpu-host`` for ``cpu``, torch's
    'NVIDIA H100 80GB HBM3' for ``h100-sxm``, or the catalog name for a GPU YAML named by an alias)."""
    if fit.covers(model, gpu, tp):
        return gpu
    want = _catalog_gpu(gpu)
    return next((d for m, d, t in fit.groups() if m == model and t == tp and _catalog_gpu(d) == want), None)


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
            dev = profile_device(fit, model.name, gpu.name, tp) or gpu.name
            tag = gpu.name if dev == gpu.name else f"{gpu.name} (rows of {dev})"
            if efficiency is None:
                eff, scope = fit.efficiency(model.name, dev, tp, engine)
                if scope != "none":
                    efficiency = eff
                    source = f"roofline (efficiency fitted to profile:{fit.key} {tag} rows)"
            self._curves = dict(fit.linear_curves(model.name, dev, tp))
            self._attn = dict(fit.attention_curves(model.name, dev, tp))
            if self._curves or self._attn:
                srcs = "+".join(fit.sources(model.name, dev, tp))
                ops = ",".join([*self._curves, *self._attn])
                source = f"profile:{fit.key} ({srcs} {tag} {model.name} tp{tp}: {ops})"
        super().__init__(model, gpu, tp, weight_dtype, kv_dtype, engine, efficiency)
        self.source = source
        """Which cost model answered: the profile (and which ops) or the roofline."""
        self._lin = [(_OP_NAMES.get(n, n), i) for i, n in enumerate(self._op_names) if _OP_NAMES.get(n, n) in self._curves]

    # ------------------------------------------------------------ CostModel's operator-time hooks
    def linear_time(self, tokens: int) -> float:
        if not self._lin:
            return super().linear_time(tokens)
        # measured curves include the kernel-launch floor, which the base prices in its overhead
        floor = len(self._op_names) * self.model.layers * self.eff.op_latency_s
        return sum(self.linear_op_times(tokens).values()) - floor

    def prefill_attention_time(self, pairs: float, tokens: int) -> float:
        pre = self._attn.get("attn_prefill")
        if pre is None:
            return super().prefill_attention_time(pairs, tokens)
        return self.model.layers * pre(pairs, tokens)

    def decode_attention_time(self, seqs: int, tokens: int) -> tuple[float, float]:
        dec = self._attn.get("attn_decode")
        if dec is not None:
            L = self.model.layers
            return L * (dec.lat + dec.b * seqs), L * dec.a
        t0, ts = super().decode_attention_time(seqs, tokens)
        if self.kv_mem:
            tc = self._attn_f_pair * tokens / seqs * self._inv_pa
            tm = self._kv_tok / (self.gpu.hbm_sim_bytes_s * self.kv_mem)
            ts = tc if tc > tm else tm
        return t0, ts

    def linear_op_times(self, tokens: int) -> dict[str, float]:
        out = super().linear_op_times(tokens)
        for name, i in self._lin:
            out[self._op_names[i]] = self.model.layers * self._curves[name](tokens)
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


DEFAULT_PROFILE = "none"
"""The profile a simulation consults unless its ``Deployment.profile`` names another: none, i.e.
the roofline whose efficiency was fitted to real vLLM V1 runs. The bundled public tables (Vidur
operators, Splitwise and Sarathi batches) were measured on other stacks and predict vLLM V1
worse where they cover a model (docs/calibration.md: Llama-2-7B on H100, E2E error 6-8 % → 12-15 %;
against Vidur itself TPOT +3 % → +12 %): name them (``shared``, ``vidur``, ...) or a
``servetune calibrate`` profile of your own stack to use them."""
NO_PROFILE = ("", "none")


@lru_cache(maxsize=8)
def _fit_of(source: str, stamp: tuple[int, int]) -> Any:
    """The ``ProfileFit`` of a profile file or shared table name. A pure function of its
    arguments (``stamp`` = the file's (mtime ns, size), so an edited file is read again): one
    process reuses a profile and its memoised fits (keyed by the profile's content hash) across
    simulations."""
    from tuner.calibration.fit import ProfileFit

    return ProfileFit(source)


def profile_fit(profile: str) -> Any:
    """The cached ``ProfileFit`` of ``profile`` (a file or a shared table name), None for
    ``""`` / ``"none"``."""
    if profile in NO_PROFILE:
        return None
    p = Path(profile)
    if p.is_file():
        st = p.stat()
        return _fit_of(str(p.resolve()), (st.st_mtime_ns, st.st_size))
    return _fit_of(profile, (0, 0))


def instance_cost_model(model: ModelSpec, gpu: GPUSpec, tp: int = 1, weight_dtype: str = "bf16",
                        kv_dtype: str = "bf16", engine: EnginePreset | None = None,
                        profile: str = DEFAULT_PROFILE, cost_model: str = "auto", calibration: Any = None) -> CostModel:
    """The cost model one simulated instance uses (``Deployment.profile`` and ``.cost_model``).
    ``cost_model="auto"``: where ``profile`` measured (model, GPU, TP), its fitted operators
    (``ProfiledCostModel``; roofline efficiency fitted to that group's batch rows if it has any,
    else the default one); elsewhere the plain ``CostModel`` (the roofline whose default efficiency
    was fitted to real vLLM V1 runs), exactly as without a profile. ``cost_model="terms"``: a
    ``TermsCostModel`` with the terms fitted to ``profile``'s batch rows (the Splitwise table's
    when ``profile`` is none), for any (model, GPU, TP). ``.source`` says which, and why.
    ``calibration`` (a ``tuner.calibration.calfile.CalibrationFile``, ``Deployment.calibration``):
    the roofline with its efficiencies (``servetune calibrate --live``); refused (one-line
    ValueError) when it was fitted for another model, GPU or engine."""
    engine = engine or get_engine("vllm-v1")
    if calibration is not None:
        return _calibrated_cost_model(model, gpu, tp, weight_dtype, kv_dtype, engine, calibration)
    if cost_model == "terms":
        return _terms_cost_model(model, gpu, tp, weight_dtype, kv_dtype, engine, profile)
    if cost_model not in COST_MODELS:
        raise ValueError(f"cost_model={cost_model!r}: must be {' or '.join(COST_MODELS)}")
    fit = profile_fit(profile)
    dev = None if fit is None else profile_device(fit, model.name, gpu.name, tp)
    if dev is None:
        cm = CostModel(model, gpu, tp, weight_dtype, kv_dtype, engine)
        if fit is not None:
            cm.source += f"; profile {profile} has no {model.name} {gpu.name} tp{tp} rows{_groups_hint(fit)}"
        return cm
    eff, scope = fit.efficiency(model.name, dev, tp, engine)
    cm = ProfiledCostModel(model, gpu, tp, weight_dtype, kv_dtype, engine, eff if scope == "group" else Efficiency(),
                           fit)
    how = f"fitted to profile:{fit.key}'s {model.name} {gpu.name} tp{tp} batch rows" if scope == "group" else "default"
    cm.source = f"roofline (efficiency {how})" if cm.source.startswith("roofline") else f"{cm.source}, {how} efficiency"
    return cm


def _calibrated_cost_model(model: ModelSpec, gpu: GPUSpec, tp: int, weight_dtype: str, kv_dtype: str,
                           engine: EnginePreset, cf: Any) -> CostModel:
    """The roofline under a calibration's efficiencies (``Deployment`` refuses a calibration
    together with a profile or ``cost_model: terms``)."""
    cf.check_matches(model, gpu, engine.name)
    cal = cf.calibration
    cm = ProfiledCostModel(model, gpu, tp, weight_dtype, kv_dtype, engine, cal.efficiency, None, cal.kv_mem)
    at = f"; fitted at tp{cf.tp}, run at tp{tp}" if tp != cf.tp else ""
    cm.source = f"roofline (efficiency of calibration {cf.label}{at})"
    return cm


def _groups_hint(fit: Any) -> str:
    """`` (it has: MODEL DEVICE tpN, ...)``: what a profile did measure, for the no-rows note."""
    groups = fit.groups()
    if not groups:
        return ""
    more = f", +{len(groups) - 4} more" if len(groups) > 4 else ""
    return " (it has: " + ", ".join(f"{m} {d} tp{t}" for m, d, t in groups[:4]) + more + ")"


def _terms_cost_model(model: ModelSpec, gpu: GPUSpec, tp: int, weight_dtype: str, kv_dtype: str,
                      engine: EnginePreset, profile: str) -> CostModel:
    from backends.sim.termcost import TermsCostModel

    name = "splitwise" if profile in NO_PROFILE else profile
    fit = profile_fit(name)
    terms, n, srcs = fit.terms()
    if terms is None:
        raise ValueError(f"cost_model=terms: profile {name!r} has no batch rows to fit the terms to; name one that "
                         "has (splitwise, sarathi, shared, or a servetune calibrate profile with prefill/decode rows)")
    cm = TermsCostModel(model, gpu, tp, weight_dtype, kv_dtype, engine, terms=terms)
    where = "measured" if profile_device(fit, model.name, gpu.name, tp) else "not measured: the terms carried over"
    cm.source = (f"fitted operator-class terms (profile:{fit.key} {'+'.join(srcs)}: {n} batch rows; "
                 f"{model.name} {gpu.name} tp{tp} {where}; the launch floor of the engine the rows ran on)")
    return cm


__all__ = ["DEFAULT_PROFILE", "ProfiledCostModel", "cost_model_for", "instance_cost_model", "profile_device",
           "profile_fit"]
