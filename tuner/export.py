"""``servetune export``: a study's chosen trial as a policy file and engine launch scripts.

Writes ``policy.yaml`` (read back by ``servetune simulate --policy`` and the live backends),
``vllm.sh`` and ``sglang.sh`` (each engine's real flag names, from ``backends.live.flags``; knobs
the engine cannot express are listed as comments, never dropped silently).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.evaluate import RESULT_ATTR
from tuner.policy import Policy
from tuner.study_spec import StudySpec
from tuner.tune import best_trials, default_trial, gain_pct, trial_policy

MODEL_VAR = "__SERVETUNE_MODEL__"


@dataclass(frozen=True, slots=True)
class Choice:
    trial: Any
    policy: Policy
    why: str


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


def _header(spec: StudySpec, c: Choice, default: Any) -> list[str]:
    t = c.trial
    lines = [f"servetune export of study {spec.name!r}: {c.why}"]
    for i, o in enumerate(spec.objectives):
        v = t.values[i]
        g = gain_pct(v, default.values[i], o.direction) if default is not None and default.values else float("nan")
        lines.append(f"  {o.name} ({o.direction}) = {v:.6g}" + (f"  ({g:+.1f}% vs default policy)" if g == g else ""))
    info = t.user_attrs.get(RESULT_ATTR) or {}
    if info.get("rate"):
        lines.append(f"  found at a request rate of {info['rate']:.4g} req/s")
    d = spec.deployment
    lines.append(f"  deployment: {d.model} on {d.n_gpus}x {d.gpu}, engine preset {d.engine}")
    for n in info.get("notes", []):
        lines.append(f"  note: {n}")
    return lines


def _script(engine: str, spec: StudySpec, c: Choice, header: list[str]) -> str:
    from backends.live.flags import engine_args, lora_setup

    lora = lora_setup(spec.load_workload())  # LoRA flags when the workload names adapters
    fm = engine_args(engine, c.policy, spec.deployment, model_path=MODEL_VAR, **lora)
    argv = [shlex.quote(a) for a in fm.command(engine)]
    argv = ['"$MODEL"' if a == MODEL_VAR else a for a in argv]
    lines = ["#!/usr/bin/env bash", *(f"# {h}" for h in header), "#",
             f"# {engine} launch command for this policy. MODEL: the Hugging Face id or local path of "
             f"{spec.deployment.model}.", "set -euo pipefail", f'MODEL="${{MODEL:-{spec.deployment.model}}}"', ""]
    if fm.unsupported:
        lines.append(f"# Knobs {engine} cannot express (the engine runs its default instead):")
        lines += [f"#   {k}={v!r}: {why}" for k, v, why in fm.unsupported]
    for n in fm.notes:
        lines.append(f"# note: {n}")
    body = argv[0] + " " + " ".join(argv[1:3])
    rest = argv[3:]
    i = 0
    chunks = []
    while i < len(rest):  # one flag (and its value) per line
        if i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            chunks.append(f"{rest[i]} {rest[i + 1]}")
            i += 2
        else:
            chunks.append(rest[i])
            i += 1
    lines.append("exec " + body + "".join(f" \\\n  {c_}" for c_ in chunks) + ' "$@"')
    return "\n".join(lines) + "\n"


def export(spec: StudySpec, study: Any, out_dir: Path, number: int | None = None) -> tuple[Choice, list[Path]]:
    """Write policy.yaml, vllm.sh and sglang.sh for the chosen trial into ``out_dir``."""
    c = choose_trial(spec, study, number)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = _header(spec, c, default_trial(study))
    pol = out_dir / "policy.yaml"
    pol.write_text("".join(f"# {h}\n" for h in header) + c.policy.to_yaml())
    paths = [pol]
    for engine in ("vllm", "sglang"):
        p = out_dir / f"{engine}.sh"
        p.write_text(_script(engine, spec, c, header))
        p.chmod(0o755)
        paths.append(p)
    return c, paths
