"""The search space: which Policy knobs a study turns, over which ranges, and when they apply.

A range spec in a study file (``search:``) is one of
  ``{low: L, high: H, log: true, step: S}``  a numeric range (int or float from the knob's type);
  ``[a, b, c]``                              categorical choices (Literal knobs: a subset of them);
  ``bool``                                   both truth values (bool knobs).
Conditional knobs are sampled only when they apply (``CONDITIONS``): e.g. ``spec_k`` only
when ``speculation != off``; ``WORKLOAD_CONDITIONS`` drop knobs the study's workload cannot use
(``max_loras`` without LoRA adapters). A knob that does not apply keeps its fixed/default value and does
not appear in the trial's params, which TPE handles as a conditional parameter. Knobs that
describe the workload or the environment (``ENVIRONMENT_KNOBS``: spec_acceptance, network_gbps, ...)
cannot be searched: the optimiser would pick the world that scores best instead of a policy.

Instance counts are sampled within the deployment's GPUs (``fit_gpus``): once ``tp`` (and, for
disaggregation, the pools' TP degrees and the prefill instance count) is chosen, the upper bound
of ``prefill_instances``, ``decode_instances``, ``replicas`` and ``autoscale_max_replicas`` is
what still fits ``n_gpus``, so a study does not spend trials on combinations the backend must
refuse (Optuna allows an int range to change between trials; TPE samples it as usual, NSGA-II
independently).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from tuner.policy import Policy, knob_choices, knob_types, pool_tps
from workloads.adapters import uses_adapters
from workloads.workload import Workload

ENVIRONMENT_KNOBS: dict[str, str] = {
    "spec_acceptance": "the drafter's acceptance rate on this workload",
    "spec_acceptance_by_tenant": "each tenant's drafter acceptance rate",
    "kv_link": "whether prefill and decode instances share a node",
    "network_gbps": "the bandwidth between nodes",
    "cold_start_s": "how long a new replica takes to serve",
    "spot_interruptions_per_hour": "how often the spot market takes a replica back",
}
"""Knobs that describe the workload or the environment, not a scheduling choice (knob -> what it
describes): a study that searched them would pick the world that scores best. Set them in ``fixed:``."""

NOT_SEARCHABLE: dict[str, str] = {
    **{k: f"describes the workload/environment ({what}), not a policy" for k, what in ENVIRONMENT_KNOBS.items()},
    "tenant_weights": "is a structured value (tenant: weight), not searchable",
    "schema_version": "is the policy file's format version, not a knob",
}
"""Knobs a study cannot search (knob -> why); all but schema_version can be fixed."""

CONDITIONS: dict[str, tuple[str, Callable[[Mapping[str, Any]], bool]]] = {
    "spec_k": ("speculation != off", lambda v: v["speculation"] != "off"),
    "spec_dynamic": ("speculation != off", lambda v: v["speculation"] != "off"),
    "spec_draft_model": ("speculation == draft", lambda v: v["speculation"] == "draft"),
    "preemption_mode": ("preemption == token and batching != static",
                        lambda v: v["preemption"] == "token" and v["batching"] != "static"),
    "prefill_instances": ("disaggregated", lambda v: bool(v["disaggregated"])),
    "decode_instances": ("disaggregated", lambda v: bool(v["disaggregated"])),
    "disagg_min_prompt": ("disaggregated", lambda v: bool(v["disaggregated"])),
    "disagg_min_queue": ("disaggregated", lambda v: bool(v["disaggregated"])),
    "prefill_tp": ("disaggregated", lambda v: bool(v["disaggregated"])),
    "decode_tp": ("disaggregated", lambda v: bool(v["disaggregated"])),
    "ssd_offload_gb": ("cpu_offload_gb > 0", lambda v: v["cpu_offload_gb"] > 0),
    "offload_threshold": ("cpu_offload_gb > 0", lambda v: v["cpu_offload_gb"] > 0),
    "admission_action": ("admission control on", lambda v: _admission_on(v)),
    "defer_s": ("admission_action == defer", lambda v: _admission_on(v) and v["admission_action"] == "defer"),
    "tenant_cap_tokens_s": ("queue == vtc", lambda v: v["queue"] == "vtc"),
    "long_prefill_token_threshold": ("batching is chunked or decode_maximal",
                                     lambda v: v["batching"] in ("chunked", "decode_maximal")),
}
"""knob -> (readable condition, predicate over the knob values chosen so far)."""


WORKLOAD_CONDITIONS: dict[str, tuple[str, Callable[[Workload], bool]]] = {
    "max_loras": ("the workload names LoRA adapters", uses_adapters),
}
"""knob -> (readable condition, predicate over the study's workload): searched only when it holds."""


def for_workload(space: tuple[KnobRange, ...], workload: Workload) -> tuple[KnobRange, ...]:
    """``space`` without the knobs that cannot matter for ``workload`` (``WORKLOAD_CONDITIONS``,
    e.g. max_loras when no request names a LoRA adapter): they keep their fixed/default value."""
    return tuple(r for r in space if r.knob not in WORKLOAD_CONDITIONS or WORKLOAD_CONDITIONS[r.knob][1](workload))


def _admission_on(v: Mapping[str, Any]) -> bool:
    return v["max_queue_depth"] > 0 or v["min_kv_headroom"] > 0 or bool(v["ttft_admission"])


_POOL_TPS = ("prefill_tp", "decode_tp")
_DECLARED = [f.name for f in fields(Policy) if f.name not in _POOL_TPS]
_AFTER_DISAGG = _DECLARED.index("disaggregated") + 1
KNOB_ORDER = (*_DECLARED[:_AFTER_DISAGG], *_POOL_TPS, *_DECLARED[_AFTER_DISAGG:])
"""Sampling order: the Policy's declaration order (every condition's parents come before the
knob), except that the pools' TP degrees follow ``disaggregated`` at once, so the instance counts
after them are bounded by the GPUs those TPs leave (``fit_gpus``)."""


@dataclass(frozen=True, slots=True)
class KnobRange:
    """How one knob is searched: ``kind`` is "int", "float" or "categorical"."""

    knob: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial for this knob's value."""
        if self.kind == "int":
            return trial.suggest_int(self.knob, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        if self.kind == "float":
            return trial.suggest_float(self.knob, self.low, self.high, log=self.log, step=self.step)
        return trial.suggest_categorical(self.knob, list(self.choices))

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return value in self.choices
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.kind == "categorical":
            return "{" + ", ".join(map(str, self.choices)) + "}"
        extra = (" log" if self.log else "") + (f" step {self.step:g}" if self.step else "")
        return f"[{self.low:g}, {self.high:g}]{extra}"


def parse_range(knob: str, raw: Any, where: str) -> KnobRange:
    """One ``search:`` entry → KnobRange, or a one-line ValueError naming ``where``."""
    types = knob_types()
    if knob not in types:
        raise ValueError(f"{where}: unknown knob {knob!r} (see `servetune tune --help` or tuner/policy.py)")
    if knob in NOT_SEARCHABLE:
        fix = "" if knob == "schema_version" else ": set it in fixed:"
        raise ValueError(f"{where}: {knob} {NOT_SEARCHABLE[knob]}{fix}")
    hint = types[knob]
    lit = knob_choices(knob)
    if raw == "bool" or raw == {"bool": True}:
        if hint is not bool:
            raise ValueError(f"{where}: 'bool' needs a true/false knob, {knob} is {getattr(hint, '__name__', hint)}")
        return KnobRange(knob, "categorical", choices=(False, True))
    if isinstance(raw, list):
        if not raw:
            raise ValueError(f"{where}: empty list of choices")
        if len(set(map(repr, raw))) != len(raw):
            raise ValueError(f"{where}: repeated choices {raw}")
        for c in raw:
            if lit is not None and c not in lit:
                raise ValueError(f"{where}: {c!r} is not a choice of {knob} ({', '.join(map(str, lit))})")
            if lit is None:
                _check_value_type(knob, hint, c, where)
        for c in raw:  # each choice must make a valid policy on its own
            _check_policy_value(knob, c, where)
        return KnobRange(knob, "categorical", choices=tuple(raw))
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected {{low, high[, log, step]}}, a list of choices or 'bool'")
    if lit is not None or hint not in (int, float):
        raise ValueError(f"{where}: {knob} is not numeric; give a list of choices"
                         + (" or 'bool'" if hint is bool else ""))
    unknown = sorted(set(raw) - {"low", "high", "log", "step"})
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (known: low, high, log, step)")
    for k in ("low", "high"):
        if k not in raw:
            raise ValueError(f"{where}: missing {k}")
        _check_value_type(knob, hint, raw[k], f"{where}.{k}")
    low, high = raw["low"], raw["high"]
    log, step = raw.get("log", False), raw.get("step")
    if not isinstance(log, bool):
        raise ValueError(f"{where}.log: must be true or false")
    if not low < high:
        raise ValueError(f"{where}: bad range low={low} high={high} (need low < high)")
    if log and low <= 0:
        raise ValueError(f"{where}: log range needs low > 0 (got {low})")
    if step is not None:
        if log:
            raise ValueError(f"{where}: step and log cannot be combined")
        if isinstance(step, bool) or not isinstance(step, int | float) or step <= 0:
            raise ValueError(f"{where}.step: must be a number > 0")
        if hint is int and int(step) != step:
            raise ValueError(f"{where}.step: must be an integer for {knob}")
    for v in (low, high):
        _check_policy_value(knob, v, where)
    kind = "int" if hint is int else "float"
    return KnobRange(knob, kind, float(low), float(high), log, None if step is None else float(step))


def _check_value_type(knob: str, hint: Any, v: Any, where: str) -> None:
    ok = (isinstance(v, bool) if hint is bool else
          isinstance(v, int) and not isinstance(v, bool) if hint is int else
          isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) if hint is float else
          isinstance(v, str) if hint is str else False)
    if not ok:
        name = getattr(hint, "__name__", str(hint))
        raise ValueError(f"{where}: {v!r} is not a valid {name} for {knob}")


def _check_policy_value(knob: str, v: Any, where: str) -> None:
    """Reject values the Policy itself refuses (bounds declared in Policy.check)."""
    base = Policy()
    extra: dict[str, Any] = {}
    if knob == "ssd_offload_gb":
        extra["cpu_offload_gb"] = 1.0
    if knob == "spec_draft_model":
        extra["speculation"] = "draft"
    try:
        base.replace(**extra, **{knob: v})
    except ValueError as e:
        if knob == "spec_draft_model" or "needs" in str(e):
            return  # depends on other knobs; checked per trial
        raise ValueError(f"{where}: {e}") from None


def applies(knob: str, values: Mapping[str, Any]) -> bool:
    """Whether ``knob`` is active given the other knobs' values."""
    cond = CONDITIONS.get(knob)
    return cond is None or cond[1](values)


GPU_COUNT_KNOBS = ("prefill_instances", "decode_instances", "replicas", "autoscale_max_replicas")
"""Int knobs whose upper bound ``fit_gpus`` narrows to the deployment's GPUs."""


def fit_gpus(r: KnobRange, values: Mapping[str, Any], by_knob: Mapping[str, KnobRange], n_gpus: int) -> KnobRange:
    """``r`` with its upper bound lowered to the instances that still fit ``n_gpus`` GPUs given
    the knobs chosen so far (``values``, ``KNOB_ORDER``: tp and the pools' TPs, then the prefill
    instances before the decode ones, which keep room for at least their own lower bound).
    Unchanged when ``r`` is not an int GPU-count knob or when even its lower bound does not fit
    (the backend refuses that trial with the reason, as before)."""
    if r.kind != "int" or r.knob not in GPU_COUNT_KNOBS:
        return r
    tp = values["tp"]
    ptp, dtp = pool_tps(tp, values["prefill_tp"], values["decode_tp"])
    if r.knob == "prefill_instances":
        dr = by_knob.get("decode_instances")
        d_low = int(dr.low) if dr is not None and dr.kind == "int" else values["decode_instances"]
        cap = (n_gpus - d_low * dtp) // ptp
    elif r.knob == "decode_instances":
        cap = (n_gpus - values["prefill_instances"] * ptp) // dtp
    else:
        cap = n_gpus // tp
    if cap < r.low or cap >= r.high:
        return r
    step = int(r.step or 1)  # (stay on the range's grid)
    return replace(r, high=float(int(r.low) + (cap - int(r.low)) // step * step))


def sample(trial: Any, space: tuple[KnobRange, ...], base: Policy, *, only: Mapping[str, Any] | None = None,
           n_gpus: int = 0) -> Policy:
    """The trial's policy: ``base`` (defaults + fixed knobs) with each searched knob that applies
    suggested by ``trial``, in Policy declaration order so conditions see their parents.

    ``only``: for the default-policy trial, the values to record (knobs whose base value the
    range cannot represent are left unsuggested). ``n_gpus`` > 0: instance counts are sampled
    within that many GPUs (``fit_gpus``)."""
    by_knob = {r.knob: r for r in space}
    values = base.to_dict()
    for knob in KNOB_ORDER:
        r = by_knob.get(knob)
        if r is None or not applies(knob, values):
            continue
        if only is not None and knob not in only:
            continue
        if n_gpus > 0:
            r = fit_gpus(r, values, by_knob, n_gpus)
        values[knob] = r.suggest(trial)
    return Policy.from_dict(values)


def defaults_outside(space: tuple[KnobRange, ...], base: Policy) -> list[str]:
    """One line per numeric searched knob whose default (``base``) lies outside its range: the
    default trial still runs the default (Optuna keeps an enqueued value), which a user should know."""
    values = base.to_dict()
    return [f"the default {r.knob}={values[r.knob]} lies outside the searched range [{r.low:g}, {r.high:g}]; "
            "the default trial runs it as is" for r in space
            if r.kind != "categorical" and applies(r.knob, values) and isinstance(values[r.knob], int | float)
            and not r.low <= values[r.knob] <= r.high]


def default_params(space: tuple[KnobRange, ...], base: Policy) -> dict[str, Any]:
    """The params that make a trial run ``base`` (the engine defaults): every searched knob that
    applies under ``base`` and whose base value the range can hold (numeric values outside a
    range are still enqueued: Optuna keeps them, ``defaults_outside`` says which)."""
    values = base.to_dict()
    out: dict[str, Any] = {}
    for r in space:
        if not applies(r.knob, values):
            continue
        v = values[r.knob]
        if r.kind == "categorical" and v not in r.choices:
            continue
        out[r.knob] = v
    return out
