"""Objectives and SLO constraints of a study, and how one trial is evaluated.

An objective is a Scorecard field (or an alias below) with a direction, or ``max_rate``: the
largest request rate (req/s) at which the study's SLOs hold, found by bisection over the
workload's rate (``workloads.scale_to_rate``), ~``iters`` simulations per trial.
A constraint is ``metric <= bound`` or ``metric >= bound``; its Optuna value is the violation
relative to the bound (<= 0 feasible), so constraints in ms and in fractions weigh alike.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tuner.scorecard import SCORECARD_FIELDS, Scorecard

ALIASES: dict[str, tuple[str, str]] = {
    "goodput": ("goodput_tok_s", "maximize"),
    "throughput": ("throughput_tok_s", "maximize"),
    "ttft_p99": ("ttft_p99_ms", "minimize"),
    "ttft_p95": ("ttft_p95_ms", "minimize"),
    "ttft_p90": ("ttft_p90_ms", "minimize"),
    "tpot_p95": ("tpot_p95_ms", "minimize"),
    "tpot_p99": ("tpot_p99_ms", "minimize"),
    "itl_p99": ("itl_p99_ms", "minimize"),
    "cost": ("usd_per_1m_tokens", "minimize"),
    "usd_per_1m_tokens": ("usd_per_1m_tokens", "minimize"),
    "max_service_diff": ("max_service_diff", "minimize"),
    "fairness": ("jain_index", "maximize"),
    "slo_attainment": ("slo_attainment", "maximize"),
}
"""Short objective names → (Scorecard field, natural direction)."""

MAX_RATE = "max_rate"
DIRECTIONS = ("maximize", "minimize")
_LOWER_IS_BETTER = re.compile(r"(_ms|_s|usd_per.*|max_service_diff|service_ratio|fragmentation|preemptions|"
                              r"n_rejected|n_failed|interruptions)$")


def resolve_metric(name: str, where: str) -> str:
    """A metric name or alias → the Scorecard field (or ``max_rate``); ValueError if unknown."""
    if name == MAX_RATE:
        return name
    if name in ALIASES:
        return ALIASES[name][0]
    if name in SCORECARD_FIELDS:
        return name
    raise ValueError(f"{where}: unknown metric {name!r} (aliases: {', '.join(ALIASES)}, {MAX_RATE}, "
                     "or any scorecard field, e.g. goodput_tok_s, ttft_p99_ms)")


def natural_direction(metric: str) -> str:
    for field, d in ALIASES.values():
        if field == metric:
            return d
    if metric == MAX_RATE:
        return "maximize"
    return "minimize" if _LOWER_IS_BETTER.search(metric) else "maximize"


@dataclass(frozen=True, slots=True)
class Objective:
    """One objective. For ``max_rate``: bisection between ``low`` and ``high`` req/s for
    ``iters`` steps; the SLO holds at a rate when every constraint is satisfied and
    slo_attainment >= ``target``."""

    name: str
    metric: str
    direction: str
    low: float = 0.5
    high: float = 64.0
    iters: int = 7
    target: float = 0.9


def parse_objective(raw: Any, where: str) -> Objective:
    if isinstance(raw, str):
        raw = {"metric": raw}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a metric name or {{metric, direction}}")
    allowed = {"metric", "direction", "low", "high", "iters", "target"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    if "metric" not in raw:
        raise ValueError(f"{where}: missing metric")
    name = str(raw["metric"])
    metric = resolve_metric(name, f"{where}.metric")
    direction = raw.get("direction", natural_direction(metric))
    if direction in ("max", "min"):
        direction += "imize"
    if direction not in DIRECTIONS:
        raise ValueError(f"{where}.direction: unknown direction {direction!r} (maximize or minimize)")
    kw: dict[str, Any] = {}
    if metric == MAX_RATE:
        if direction != "maximize":
            raise ValueError(f"{where}.direction: max_rate can only be maximized")
        for k in ("low", "high", "target"):
            if k in raw:
                v = raw[k]
                if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
                    raise ValueError(f"{where}.{k}: must be a number > 0")
                kw[k] = float(v)
        if "iters" in raw:
            if isinstance(raw["iters"], bool) or not isinstance(raw["iters"], int) or not 1 <= raw["iters"] <= 20:
                raise ValueError(f"{where}.iters: must be an integer in 1..20")
            kw["iters"] = raw["iters"]
        obj = Objective(name, metric, direction, **kw)
        if not obj.low < obj.high:
            raise ValueError(f"{where}: bad range low={obj.low:g} high={obj.high:g} (need low < high)")
        if obj.target > 1:
            raise ValueError(f"{where}.target: slo_attainment target must be in 0..1")
        return obj
    extra = sorted(set(raw) & {"low", "high", "iters", "target"})
    if extra:
        raise ValueError(f"{where}: key {extra[0]!r} only applies to max_rate")
    return Objective(name, metric, direction)


@dataclass(frozen=True, slots=True)
class Constraint:
    """``metric op bound`` with op in (<=, >=)."""

    metric: str
    op: str
    bound: float

    @property
    def name(self) -> str:
        """A name MLflow and Optuna accept: ``ttft_p99_ms_le_500``."""
        return f"{self.metric}_{'le' if self.op == '<=' else 'ge'}_{self.bound:g}"

    def violation(self, sc: Scorecard) -> float:
        """Optuna constraint value: <= 0 when satisfied, relative to the bound (NaN → 1e6)."""
        v = float(getattr(sc, self.metric))
        if not math.isfinite(v):
            return 1e6 if not (v == math.inf and self.op == ">=") else -1.0
        d = v - self.bound if self.op == "<=" else self.bound - v
        return d / abs(self.bound) if self.bound != 0 else d


_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")


def parse_constraint(raw: Any, where: str) -> Constraint:
    if isinstance(raw, Mapping):
        unknown = sorted(set(raw) - {"metric", "op", "value"})
        if unknown or not {"metric", "op", "value"} <= set(raw):
            raise ValueError(f"{where}: expected 'metric <= value' or {{metric, op, value}}")
        text = f"{raw['metric']} {raw['op']} {raw['value']}"
    else:
        text = str(raw)
    m = _CONSTRAINT.match(text)
    if not m:
        raise ValueError(f"{where}: cannot read constraint {text!r} (write e.g. 'ttft_p99_ms <= 500')")
    metric = resolve_metric(m.group(1), where)
    if metric == MAX_RATE:
        raise ValueError(f"{where}: max_rate is an objective, not a constraint")
    try:
        bound = float(m.group(3))
    except ValueError:
        raise ValueError(f"{where}: bound {m.group(3)!r} is not a number") from None
    return Constraint(metric, m.group(2), bound)


def objective_value(obj: Objective, sc: Scorecard, rate: float | None = None) -> float:
    """The value Optuna sees; an undefined metric (NaN: nothing completed) is the worst value."""
    v = float(rate if obj.metric == MAX_RATE else getattr(sc, obj.metric))
    if math.isnan(v):
        return -math.inf if obj.direction == "maximize" else math.inf
    return v


def slo_holds(sc: Scorecard, constraints: tuple[Constraint, ...], target: float) -> bool:
    return sc.slo_attainment >= target and all(c.violation(sc) <= 0 for c in constraints)


def bisect_max_rate(run_at: Callable[[float], Scorecard], obj: Objective,
                    constraints: tuple[Constraint, ...]) -> tuple[float, Scorecard | None, float, Scorecard]:
    """Largest rate in [low, high] at which the SLOs hold (geometric bisection, ``iters`` runs
    at most). Returns (best rate or 0.0 if none holds, its scorecard or None, the last failing
    rate, its scorecard)."""
    lo, hi = obj.low, obj.high
    best_rate, best_sc = 0.0, None
    sc_hi = run_at(hi)
    if slo_holds(sc_hi, constraints, obj.target):
        return hi, sc_hi, hi, sc_hi
    fail_rate, fail_sc = hi, sc_hi
    for _ in range(max(obj.iters - 1, 0)):
        mid = math.sqrt(lo * hi)
        sc = run_at(mid)
        if slo_holds(sc, constraints, obj.target):
            lo, best_rate, best_sc = mid, mid, sc
        else:
            hi, fail_rate, fail_sc = mid, mid, sc
    return best_rate, best_sc, fail_rate, fail_sc
