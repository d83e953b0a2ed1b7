"""Restrict a study's search to what one engine can run (the study file's ``runnable_on:``).

servetune's simulator can score policies no engine offers (``batching: decode_maximal``, EDF
queues, a free-block watermark, TTFT admission control): useful to ask what an engine change
would buy, useless when the winner must launch on vLLM today. With ``runnable_on: vllm`` (or
``sglang``) each searched knob is checked one value at a time against the engine's flag mapping
(``backends.live.flags``) on the study's base policy: a categorical choice the engine refuses is
dropped; a numeric knob whose low and high ends it both refuses is not searched (it keeps the
engine's default; one end alone is an interaction with another knob, left to export). What was removed is said (``Restriction.notes``). Interactions between knobs (e.g. a
token budget below the seat count, which vLLM rejects) are not checked here; ``servetune export``
still launches only a trial the engine runs as simulated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from backends.base import Deployment
from tuner.policy import Policy
from tuner.space import KnobRange


@dataclass(frozen=True, slots=True)
class Restriction:
    """The search space an engine can run, and one line per knob or choice removed."""

    search: tuple[KnobRange, ...]
    notes: tuple[str, ...]


def _check_engine(engine: str) -> None:
    from backends.live.flags import MAPPERS

    if engine not in MAPPERS:
        raise ValueError(f"runnable_on: {engine!r} must be one of {', '.join(MAPPERS)}")


def _refusals(engine: str, policy: Policy, deployment: Deployment) -> dict[str, str]:
    """Knob -> why ``engine`` cannot run it in ``policy`` (``backends.live.flags.engine_args``)."""
    from backends.live.flags import engine_args

    return {k: why for k, _v, why in engine_args(engine, policy, deployment).unsupported}


def _try(engine: str, base: Policy, deployment: Deployment, knob: str, value: Any) -> str | None:
    """Why ``engine`` cannot run ``base`` with ``knob`` = ``value`` (None when it can)."""
    try:
        pol = base.replace(**{knob: value})
    except (TypeError, ValueError):  # invalid on this base alone (e.g. with another knob): not the engine's call
        return None
    return _refusals(engine, pol, deployment).get(knob)


def refused_fixed(engine: str, base: Policy, deployment: Deployment, fixed: Mapping[str, Any]) -> tuple[str, str] | None:
    """(knob, why) of the first ``fixed`` knob ``engine`` cannot run on ``base``, or None."""
    _check_engine(engine)
    refused = _refusals(engine, base, deployment)
    return next(((k, refused[k]) for k in fixed if k in refused), None)


def restrict(search: Sequence[KnobRange], engine: str, base: Policy, deployment: Deployment) -> Restriction:
    """``search`` with what ``engine`` (vllm or sglang) cannot express removed (module doc)."""
    _check_engine(engine)
    kept: list[KnobRange] = []
    notes: list[str] = []
    for r in search:
        if r.kind == "categorical":
            ok = [c for c in r.choices if _try(engine, base, deployment, r.knob, c) is None]
            gone = [c for c in r.choices if c not in ok]
            if gone:
                notes.append(f"{r.knob}: {engine} cannot run {', '.join(map(str, gone))}"
                             + ("; not searched" if len(ok) < 2 else ""))
            if len(ok) >= 2:
                kept.append(replace(r, choices=tuple(ok)))
            continue
        cast = float if r.kind == "float" else int
        why_lo = _try(engine, base, deployment, r.knob, cast(r.low))
        why = why_lo and _try(engine, base, deployment, r.knob, cast(r.high))
        if why is not None:  # both ends refused: the engine has no such knob (one end alone: an interaction)
            notes.append(f"{r.knob}: not searched ({why})")
            continue
        kept.append(r)
    return Restriction(tuple(kept), tuple(notes))


__all__ = ["Restriction", "refused_fixed", "restrict"]
