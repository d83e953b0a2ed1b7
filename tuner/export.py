"""``servetune export``: a study's chosen trial as a policy file and engine launch scripts.

Writes into the output folder:

* ``policy.yaml``: the chosen trial (the best, or ``--trial N``), read back by ``servetune
  simulate --policy`` and the live backends. When an engine cannot run it as simulated (a knob it
  cannot express, e.g. ``queue: edf`` or ``kv_watermark`` on vLLM), its header says so, one line
  per engine, and calls it "servetune-only" when neither engine can.
* ``vllm.sh`` / ``sglang.sh``: each engine's real flags (``backends.live.flags``) for the best
  trial THAT ENGINE RUNS AS SIMULATED (every changed knob maps to a flag): the chosen trial when it
  can, else the best trial that can (``best_runnable``). The header names the trial it launches
  and that trial's own values and gain. With ``--trial N`` the script launches trial N as asked.
  When the script launches no simulated trial (none can run as simulated, or ``--trial N`` cannot),
  the knobs the engine cannot express are listed, it runs their engine defaults instead, and the
  header claims no simulated value for it.
* ``policy-vllm.yaml`` / ``policy-sglang.yaml``: only when that script launches another policy
  than ``policy.yaml``: the policy it really runs (``servetune simulate --policy`` scores it).

A disaggregated policy's script starts one server per call: ``vllm.sh prefill`` or ``vllm.sh
decode`` (``FlagMapping.roles``: each pool with its own TP degree).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.evaluate import RESULT_ATTR
from tuner.policy import Policy
from tuner.study_spec import StudySpec
from tuner.tune import best_trials, default_trial, gain_pct, is_feasible, trial_policy

MODEL_VAR = "__SERVETUNE_MODEL__"
ENGINES = {"vllm": "vLLM", "sglang": "SGLang"}
"""Engines export writes a script for -> their names in messages."""


@dataclass(frozen=True, slots=True)
class Choice:
    trial: Any
    policy: Policy
    why: str


@dataclass(frozen=True, slots=True)
class Launch:
    """What one engine's script launches.

    ``trial``/``policy``: the trial it launches and the policy asked for; ``simulated``: the
    engine runs that policy exactly as simulated (else it runs the engine defaults for the
    knobs in ``blocked`` and no simulated value applies); ``blocked``: ``(knob, value, why)`` the
    engine cannot express in the CHOSEN trial (empty when it runs the chosen trial as simulated);
    ``best_runnable``: the best trial the engine runs as simulated, if any."""

    engine: str
    trial: Any
    policy: Policy
    simulated: bool
    blocked: tuple[tuple[str, Any, str], ...]
    best_runnable: Any | None

    @property
    def name(self) -> str:
        return ENGINES[self.engine]


@dataclass(frozen=True, slots=True)
class Export:
    """What ``export`` chose and wrote; ``summary``: the lines ``servetune export`` prints."""

    choice: Choice
    launches: tuple[Launch, ...]
    paths: tuple[Path, ...]
    summary: tuple[str, ...]


def choose_trial(spec: StudySpec, study: Any, number: int | None = None) -> Choice:
    """Trial ``number``, or the best (single objective), or — for several objectives — the
    Pareto trial best in the first objective (said so in ``why``)."""
    from optuna.trial import TrialState

    if number is not None:
        match = [t for t in study.get_trials(deepcopy=False) if t.number == number]
        if not match:
            raise ValueError(f"--trial {number}: study {spec.name!r} has no such trial "
                             f"(0..{len(study.get_trials(deepcopy=False)) - 1})")
        t = match[0]
        if t.state != TrialState.COMPLETE:
            raise ValueError(f"--trial {number}: trial is {t.state.name}, not COMPLETE")
        return Choice(t, trial_policy(spec, t), f"trial {number} as asked")
    best, feasible = best_trials(spec, study)
    if not best:
        raise ValueError(f"study {spec.name!r} has no completed trial to export (run `servetune tune` first)")
    warn = "" if feasible else " (no trial met the constraints: least bad shown)"
    if not spec.multi_objective:
        t = best[0]
        return Choice(t, trial_policy(spec, t), f"best trial {t.number} by {spec.objectives[0].name}{warn}")
    o = spec.objectives[0]
    sign = 1 if o.direction == "maximize" else -1
    t = max(best, key=lambda x: (sign * x.values[0], -x.number))
    others = ", ".join(str(x.number) for x in best if x is not t)
    return Choice(t, trial_policy(spec, t), f"trial {t.number}: best {o.name} among the {len(best)} Pareto trials "
                  f"(others: {others or 'none'}; pick one with --trial N)")


def not_expressible(engine: str, spec: StudySpec, policy: Policy,
                    lora: Mapping[str, int]) -> tuple[tuple[str, Any, str], ...]:
    """``(knob, value, why)`` for each knob of ``policy`` that ``engine`` cannot run as simulated
    on the study's deployment (empty: its launch flags run exactly this policy)."""
    from backends.live.flags import engine_args

    return engine_args(engine, policy, spec.deployment, model_path=MODEL_VAR, **lora).unsupported


def best_runnable(engine: str, spec: StudySpec, study: Any, lora: Mapping[str, int]) -> Any | None:
    """The best completed trial that ``engine`` runs as simulated (``not_expressible`` empty), or
    None. Ranked as ``choose_trial`` ranks: feasible trials first, then the objectives in order
    (the first decides; with several objectives the winner is on the runnable trials' Pareto
    front), then the lower trial number."""
    from optuna.trial import TrialState

    signs = [1 if o.direction == "maximize" else -1 for o in spec.objectives]
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values and all(math.isfinite(v) for v in t.values)]
    done.sort(key=lambda t: (is_feasible(t), *(s * v for s, v in zip(signs, t.values, strict=True)), -t.number),
              reverse=True)
    return next((t for t in done if not not_expressible(engine, spec, trial_policy(spec, t), lora)), None)


def plan_launch(engine: str, spec: StudySpec, study: Any, c: Choice, lora: Mapping[str, int],
                as_asked: bool) -> Launch:
    """What ``engine``'s script launches for the chosen trial ``c`` (see the module docstring);
    ``as_asked``: the user chose the trial (``--trial N``): launch it even when it cannot run as
    simulated."""
    blocked = not_expressible(engine, spec, c.policy, lora)
    if not blocked:
        return Launch(engine, c.trial, c.policy, True, (), c.trial)
    alt = best_runnable(engine, spec, study, lora)
    if alt is None or as_asked:
        return Launch(engine, c.trial, c.policy, False, blocked, alt)
    return Launch(engine, alt, trial_policy(spec, alt), True, blocked, alt)


# ------------------------------------------------------------------------------- text
def _knobs(items: tuple[tuple[str, Any, str], ...]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v!r}" for k, v, _ in items)


def _values(spec: StudySpec, t: Any, default: Any) -> list[str]:
    """The trial's objective values, each with its gain over the default policy's trial."""
    lines = []
    for i, o in enumerate(spec.objectives):
        v = t.values[i]
        g = gain_pct(v, default.values[i], o.direction) if default is not None and default.values else float("nan")
        lines.append(f"  {o.name} ({o.direction}) = {v:.6g}" + (f"  ({g:+.1f}% vs default policy)" if g == g else ""))
    info = t.user_attrs.get(RESULT_ATTR) or {}
    if info.get("rate"):
        lines.append(f"  found at a request rate of {info['rate']:.4g} req/s")
    return lines


def _deployment(spec: StudySpec) -> str:
    d = spec.deployment
    return f"  deployment: {d.model} on {d.n_gpus}x {d.gpu}, engine preset {d.engine}"


def _notes(t: Any) -> list[str]:
    return [f"  note: {n}" for n in (t.user_attrs.get(RESULT_ATTR) or {}).get("notes", [])]


def _launch_line(la: Launch, c: Choice) -> str:
    """One line: what the engine's script launches (printed by export and in policy.yaml)."""
    if la.simulated and la.trial.number == c.trial.number:
        return f"{la.engine}.sh launches trial {c.trial.number} ({la.name} runs it as simulated)"
    if la.simulated:
        return (f"{la.engine}.sh launches trial {la.trial.number}, the best trial {la.name} runs as simulated "
                f"(policy-{la.engine}.yaml)")
    hint = (f"; the best trial {la.name} runs as simulated is {la.best_runnable.number} (--trial "
            f"{la.best_runnable.number})") if la.best_runnable is not None else ""
    nobody = "" if la.best_runnable is not None else f"NO trial of this study runs on {la.name} as simulated: "
    return (f"{nobody}{la.engine}.sh launches trial {c.trial.number} with {la.name}'s defaults for "
            f"{', '.join(k for k, _, _ in la.blocked)} (policy-{la.engine}.yaml, NOT simulated){hint}")


def _policy_header(spec: StudySpec, c: Choice, default: Any, launches: tuple[Launch, ...]) -> list[str]:
    blocked = [la for la in launches if la.blocked]
    only = " -- SERVETUNE-ONLY: no engine runs this policy as simulated" if len(blocked) == len(launches) else ""
    lines = [f"servetune export of study {spec.name!r}: {c.why}{only}", *_values(spec, c.trial, default),
             _deployment(spec), *_notes(c.trial)]
    for la in blocked:
        lines.append(f"  {la.name} cannot express {_knobs(la.blocked)}: {_launch_line(la, c)}")
    return lines


def _script_header(spec: StudySpec, c: Choice, default: Any, la: Launch) -> list[str]:
    study = f"servetune export of study {spec.name!r}"
    if la.simulated and la.trial.number == c.trial.number:
        return [f"{study}: {c.why}; {la.name} runs it as simulated", *_values(spec, c.trial, default),
                _deployment(spec), *_notes(c.trial)]
    if la.simulated:
        return [f"{study}: trial {la.trial.number}, the best trial {la.name} runs as simulated "
                f"(policy-{la.engine}.yaml)", *_values(spec, la.trial, default), _deployment(spec), *_notes(la.trial),
                f"  the exported trial {c.trial.number} (policy.yaml) needs knobs {la.name} cannot express: "
                f"{_knobs(la.blocked)}"]
    return [f"{study}: {_launch_line(la, c)}",
            f"  that policy was not simulated: no value or gain is claimed for it (`servetune simulate "
            f"--policy policy-{la.engine}.yaml` on the study's workload scores it)", _deployment(spec)]


def _script(la: Launch, spec: StudySpec, header: list[str], lora: Mapping[str, int]) -> str:
    from backends.live.flags import engine_args

    engine = la.engine
    fm = engine_args(engine, la.policy, spec.deployment, model_path=MODEL_VAR, **lora)
    lines = ["#!/usr/bin/env bash", *(f"# {h}" for h in header), "#",
             f"# {engine} launch command for this policy. MODEL: the Hugging Face id or local path of "
             f"{spec.deployment.model}.", "set -euo pipefail", f'MODEL="${{MODEL:-{spec.deployment.model}}}"', ""]
    if fm.unsupported:
        lines.append(f"# Knobs {engine} cannot express (the engine runs its default instead):")
        lines += [f"#   {k}={v!r}: {why}" for k, v, why in fm.unsupported]
    for n in fm.notes:
        lines.append(f"# note: {n}")
    if not fm.roles:
        lines.append("exec " + _command(fm.command(engine)) + ' "$@"')
        return "\n".join(lines) + "\n"
    usage = " | ".join(r.name for r in fm.roles)
    counts = ", ".join(f"{r.count} {r.name}" for r in fm.roles)
    lines += [f"# Disaggregated: run once per server ({counts}): {engine}.sh {usage} [more engine flags]",
              f'ROLE="${{1:?usage: {engine}.sh {usage} [more engine flags]}}"', "shift", 'case "$ROLE" in']
    for r in fm.roles:
        lines.append(f"  {r.name})  # {r.count} server(s) of tp={r.tp}")
        lines.append("    exec " + _command(fm.command(engine, role=r.name), indent="      ") + ' "$@" ;;')
    lines += [f'  *) echo "{engine}.sh: role must be one of: {usage} (got $ROLE)" >&2; exit 2 ;;', "esac"]
    return "\n".join(lines) + "\n"


def _command(argv: list[str], indent: str = "  ") -> str:
    """``python -m module`` then one flag (and its value) per continued line; the model as $MODEL."""
    argv = ['"$MODEL"' if a == MODEL_VAR else shlex.quote(a) for a in argv]
    rest, chunks, i = argv[3:], [], 0
    while i < len(rest):
        if i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            chunks.append(f"{rest[i]} {rest[i + 1]}")
            i += 2
        else:
            chunks.append(rest[i])
            i += 1
    return " ".join(argv[:3]) + "".join(f" \\\n{indent}{c}" for c in chunks)


def _summary(c: Choice, launches: tuple[Launch, ...]) -> tuple[str, ...]:
    lines = [f"exported {c.why}"]
    blocked = [la for la in launches if la.blocked]
    if blocked:
        who = "no engine can" if len(blocked) == len(launches) else f"{blocked[0].name} cannot"
        lines.append(f"trial {c.trial.number} needs knobs {who} express ("
                     + "; ".join(f"{la.name}: {_knobs(la.blocked)}" for la in blocked) + ")"
                     + (": policy.yaml is marked servetune-only" if len(blocked) == len(launches) else ""))
    lines += [_launch_line(la, c) for la in launches]
    return tuple(lines)


def export(spec: StudySpec, study: Any, out_dir: Path, number: int | None = None) -> Export:
    """Write policy.yaml, vllm.sh and sglang.sh (and policy-ENGINE.yaml where a script launches
    another policy) for the chosen trial into ``out_dir``."""
    from backends.live.flags import engine_args, lora_setup

    c = choose_trial(spec, study, number)
    lora = lora_setup(spec.load_workload())  # LoRA flags when the workload names adapters
    default = default_trial(study)
    launches = tuple(plan_launch(e, spec, study, c, lora, as_asked=number is not None) for e in ENGINES)
    out_dir.mkdir(parents=True, exist_ok=True)
    for e in ENGINES:  # from an earlier export into this folder
        (out_dir / f"policy-{e}.yaml").unlink(missing_ok=True)
    pol = out_dir / "policy.yaml"
    pol.write_text("".join(f"# {h}\n" for h in _policy_header(spec, c, default, launches)) + c.policy.to_yaml())
    paths = [pol]
    for la in launches:
        header = _script_header(spec, c, default, la)
        p = out_dir / f"{la.engine}.sh"
        p.write_text(_script(la, spec, header, lora))
        p.chmod(0o755)
        paths.append(p)
        if la.simulated and la.trial.number == c.trial.number:
            continue
        runs = la.policy if la.simulated else engine_args(la.engine, la.policy, spec.deployment, **lora).effective
        own = out_dir / f"policy-{la.engine}.yaml"
        own.write_text("".join(f"# {h}\n" for h in [f"policy-{la.engine}.yaml: the policy {la.engine}.sh runs", *header]) + runs.to_yaml())
        paths.append(own)
    return Export(c, launches, tuple(paths), _summary(c, launches))
