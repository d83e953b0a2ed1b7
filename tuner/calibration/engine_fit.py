"""Fit an engine's per-iteration costs to real serving runs by simulating them.

The parameter vector is small and physical: ``backends.sim.costmodel.Efficiency`` fields — HBM
efficiency ``mem`` (a decode step reads the weights and the KV), GEMM efficiency ``gemm``
(prefill), ``overhead_scale`` (the engine preset's CPU cost per step and per sequence),
``prefill_overhead_s`` (extra cost of a step carrying prefill) — and ``lag_steps`` (client-visible
pipeline latency in steps, see ``simrun.simulate_with``). The loss is the log error of each run's
mean TTFT (weight ``ttft_weight``), mean E2E and TPOT; each evaluation simulates every training
run (stages shortened by ``duration_scale`` for speed, same rates).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from backends.sim.costmodel import CostModel, Efficiency, efficiency_from_dict, efficiency_to_dict
from tuner.calibration.trainval import (
    TrainvalRun,
    deployment_for,
    policy_for,
    regenerate,
    run_metrics,
    stage_metrics,
    tail_metrics,
)

FIT_PARAMS = ("mem", "kv_mem", "gemm", "overhead_scale", "prefill_overhead_s", "lag_steps")
"""Fitted by default (``benchmarks/bench_trainval.py --fit-params`` picks others). Without
``kv_mem`` (one HBM efficiency for weights and KV) the leave-one-model-out medians on the real
vLLM runs were 9.2/4.7/4.9 % (TTFT/E2E/TPOT) against 10.1/3.7/3.5 % with it (docs/calibration.md)."""
BOUNDS = {"mem": (0.3, 1.0), "gemm": (0.2, 1.0), "attn": (0.1, 1.0), "overhead_scale": (0.05, 20.0),
          "prefill_overhead_s": (1e-6, 0.05), "seq_overhead_s": (1e-7, 1e-3), "layer_overhead_s": (1e-7, 1e-3),
          "comm": (0.1, 1.0), "allreduce_base_s": (1e-7, 1e-3), "lag_steps": (0.01, 5.0), "kv_mem": (0.3, 1.0),
          "lag_s": (1e-5, 0.5)}


@dataclass(frozen=True, slots=True)
class EngineCalibration:
    """What a serving-run fit produces: efficiencies, client lag (steps) and the prefix-sharing
    assumption used to regenerate the workloads."""

    efficiency: Efficiency = field(default_factory=Efficiency)
    lag_steps: float = 0.0
    share: str = "prompt"
    kv_mem: float = 0.0
    """HBM efficiency of decode-attention KV reads (0 = ``efficiency.mem``), ProfiledCostModel."""
    lag_s: float = 0.0
    """Fixed client-visible latency per request (API server), s."""

    def to_dict(self) -> dict:
        return {"efficiency": efficiency_to_dict(self.efficiency), "lag_steps": self.lag_steps, "share": self.share,
                "kv_mem": self.kv_mem, "lag_s": self.lag_s}

    @classmethod
    def simulator_default(cls, engine: str = "vllm-v1") -> EngineCalibration:
        """What ``servetune simulate`` runs: default efficiencies and the engine preset's client lag."""
        from backends.sim.engines import get_engine

        return cls(lag_steps=get_engine(engine).client_lag_steps)

    @classmethod
    def from_dict(cls, d: dict) -> EngineCalibration:
        return cls(efficiency_from_dict(d.get("efficiency", {})), float(d.get("lag_steps", 0.0)),
                   str(d.get("share", "prompt")), float(d.get("kv_mem", 0.0)), float(d.get("lag_s", 0.0)))


@dataclass(frozen=True, slots=True)
class RunError:
    """Predicted means (ms) of one run."""

    run: TrainvalRun
    ttft_ms: float
    e2e_ms: float
    tpot_ms: float
    stage_ms: tuple[tuple[float, float], ...] = ()
    """Predicted (mean TTFT, mean E2E) per load stage, ms."""
    tails_ms: tuple[float, float, float, float] = (math.nan,) * 4
    """Predicted TTFT p90, TTFT p99, E2E p90, E2E p99, ms (``trainval.tail_metrics``)."""

    def tail_errors(self) -> tuple[float, ...]:
        """Signed errors (pred/meas − 1) × 100 of the tails (``TAIL_COLUMNS`` order), %; NaN
        where the run does not give one."""
        return tuple(100.0 * (p / m - 1.0) if m == m and m > 0 else math.nan
                     for p, m in zip(self.tails_ms, self.run.tails_ms, strict=True))

    def errors(self) -> tuple[float, float, float]:
        """Signed errors (pred/meas − 1) × 100 of TTFT, E2E, TPOT, %."""
        r = self.run
        return tuple(100.0 * (p / m - 1.0) for p, m in ((self.ttft_ms, r.ttft_ms), (self.e2e_ms, r.e2e_ms),
                                                         (self.tpot_ms, r.tpot_ms)))  # type: ignore[return-value]


CostFactory = Callable[[TrainvalRun, "EngineCalibration"], CostModel]


def default_factory(run: TrainvalRun, cal: EngineCalibration) -> CostModel:
    """The run's instance under the ``vllm-v1`` preset: ``ProfiledCostModel`` (no profile: the
    roofline with ``cal``'s efficiency and KV-read efficiency)."""
    from backends.sim.profiled import cost_model_for

    return cost_model_for(run.model, run.gpu, run.tp, run.weight_dtype, "bf16", "vllm-v1",
                          efficiency=cal.efficiency, kv_mem=cal.kv_mem)


def simulate_run(run: TrainvalRun, cal: EngineCalibration, *, seed: int = 0, duration_scale: float = 1.0,
                 factory: CostFactory = default_factory) -> RunError:
    """Simulate one run under ``cal``; ``duration_scale`` < 1 shortens every stage (same rates)."""
    from tuner.calibration.simrun import simulate_with

    w = regenerate(run.workload_def, seed, share=cal.share, duration_scale=duration_scale)
    res = simulate_with(factory(run, cal), policy_for(run), w, deployment_for(run), seed=seed,
                        lag_steps=cal.lag_steps, lag_s=cal.lag_s)
    t, e, p = run_metrics(res.records, run.workload_def.max_output)
    return RunError(run, t, e, p, stage_metrics(res.records, run.workload_def, duration_scale),
                    tail_metrics(res.records))


def _log_residuals(r: TrainvalRun, p: RunError, ttft_weight: float, by_stage: bool) -> list[float]:
    """Log errors of one run's means: TTFT (× ``ttft_weight``), E2E, TPOT; ``by_stage``: of each
    load stage's means instead (a run of several stages then says how latency grows with load),
    each stage weighted 1/sqrt(stages) so that every run weighs the same."""
    if by_stage and len(r.stage_ms) > 1 and len(p.stage_ms) == len(r.stage_ms) \
            and all(math.isfinite(x) for st in p.stage_ms for x in st):
        w = 1.0 / math.sqrt(len(r.stage_ms))
        res = []
        for (mt, me), (pt, pe) in zip(r.stage_ms, p.stage_ms, strict=True):  # TPOT ratio = (E2E - TTFT) ratio
            res += [w * ttft_weight * math.log(pt / mt), w * math.log(pe / me), w * math.log((pe - pt) / (me - mt))]
        return res
    return [ttft_weight * math.log(p.ttft_ms / r.ttft_ms), math.log(p.e2e_ms / r.e2e_ms),
            math.log(p.tpot_ms / r.tpot_ms)]


def fit_engine(runs: Sequence[TrainvalRun], *, params: Sequence[str] = FIT_PARAMS,
               start: EngineCalibration | None = None, duration_scale: float = 0.25, ttft_weight: float = 0.5,
               factory: CostFactory = default_factory, max_nfev: int = 30,
               by_stage: bool = False) -> EngineCalibration:
    """The calibration minimising the log errors of the runs' means (scipy least squares in log
    space within physical bounds, a weak prior toward ``start``); ``by_stage``: of each load
    stage's means where the runs give them (``_log_residuals``)."""
    from scipy.optimize import least_squares

    if not runs:
        raise ValueError("fit_engine: no runs")
    base = start or EngineCalibration(lag_steps=1.0)
    names = list(params)

    def get(n: str) -> float:
        if n == "lag_steps":
            return base.lag_steps or 1.0
        if n == "kv_mem":
            return base.kv_mem or base.efficiency.mem
        if n == "lag_s":
            return base.lag_s or 1e-3
        return getattr(base.efficiency, n)

    lo = np.log([BOUNDS[n][0] for n in names])
    hi = np.log([BOUNDS[n][1] for n in names])
    x0 = np.clip(np.log([get(n) or 1e-3 for n in names]), lo + 1e-6, hi - 1e-6)

    def cal_of(x) -> EngineCalibration:
        vals = {n: float(math.exp(v)) for n, v in zip(names, x, strict=True)}
        lag = vals.pop("lag_steps", base.lag_steps)
        kv = vals.pop("kv_mem", base.kv_mem)
        lag_s = vals.pop("lag_s", base.lag_s)
        return replace(base, efficiency=replace(base.efficiency, **vals), lag_steps=lag, kv_mem=kv, lag_s=lag_s)

    def resid(x):
        c = cal_of(x)
        out = []
        for r in runs:
            p = simulate_run(r, c, duration_scale=duration_scale, factory=factory)
            out += _log_residuals(r, p, ttft_weight, by_stage)
        return np.asarray(out + list(0.05 * (x - x0)))

    sol = least_squares(resid, x0, bounds=(lo, hi), diff_step=2e-2, max_nfev=max_nfev)
    return cal_of(sol.x)


def leave_one_out(runs: Sequence[TrainvalRun], key: Callable[[TrainvalRun], object] = lambda r: r.model,
                  **fit_kw) -> tuple[list[RunError], dict[object, EngineCalibration]]:
    """Fit on all runs but those of one ``key`` value (default: the model), predict those; every
    run's prediction comes from the fold that held it out."""
    preds: dict[int, RunError] = {}
    cals: dict[object, EngineCalibration] = {}
    for k in sorted({key(r) for r in runs}, key=str):
        train = [r for r in runs if key(r) != k]
        cals[k] = cal = fit_engine(train, **fit_kw)
        for i, r in enumerate(runs):
            if key(r) == k:
                preds[i] = simulate_run(r, cal, factory=fit_kw.get("factory", default_factory))
    return [preds[i] for i in range(len(runs))], cals


def engine_calibration(engine: str, gpu: str) -> EngineCalibration | None:
    """The stored calibration of an engine preset on a GPU (``data/engine_<engine>_<gpu>.yaml``,
    written by ``benchmarks/bench_trainval.py --write``), or None."""
    from pathlib import Path

    import yaml

    from backends.sim.catalog import get_gpu
    from backends.sim.engines import get_engine

    p = Path(__file__).parent / "data" / f"engine_{get_engine(engine).name}_{get_gpu(gpu).name}.yaml"
    return EngineCalibration.from_dict(yaml.safe_load(p.read_text())) if p.is_file() else None


__all__ = ["FIT_PARAMS", "EngineCalibration", "engine_calibration", "RunError", "default_factory", "fit_engine", "leave_one_out",
           "simulate_run"]
