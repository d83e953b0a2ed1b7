"""What ``servetune simulate`` runs: policy, workload, deployment and seed, from its flags or
from a study file.

    setup = setup_from_study(kw, knobs, given)   # --study: what a trial of the study ran
    setup = setup_from_flags(kw, knobs)          # -w/-m/-g/...: anything else

With ``--study`` the study file gives the workload (source, first_n then rate, context cap,
SLOs, transforms), the deployment (model, GPU, n_gpus, engine, cost model, calibration) and the seed, so the
run is the one a trial of ``servetune tune`` made. The flags that would change those are
refused (``STUDY_OWNS``); policy knob flags still override the policy, ``--seed`` the study's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from backends.base import Deployment
from tuner.policy import Policy
from workloads.workload import Workload

STUDY_OWNS = {"workload": "-w", "model": "-m", "gpu": "-g", "n_gpus": "--n-gpus", "engine": "--engine",
              "max_model_len": "--max-model-len", "profile": "--profile", "cost_model": "--cost-model",
              "calibration": "--calibration",
              "rate": "--rate", "first": "--first"}
"""Parameter name -> flag, for what a study file decides (refused together with --study)."""


@dataclass(frozen=True, slots=True)
class Setup:
    """The inputs of one ``simulate`` run."""

    policy: Policy
    workload: Workload
    deployment: Deployment
    seed: int
    """Simulation (and generated-workload) seed."""
    source: str = ""
    """Where the run comes from, for the title ("" for plain flags; "study NAME, trial N")."""
    trial: int | None = None
    """``--trial``: the study's trial number."""
    stored: Mapping[str, float] | None = None
    """``--trial`` without knob flags: the scorecard metrics the trial stored, to compare with."""
    notes: tuple[str, ...] = ()


def apply_knobs(base: Policy, knobs: Mapping[str, object]) -> Policy:
    """``base`` with the knob flags given (None = not given); ``tenant_weights`` as a=1,b=2."""
    changes = {}
    for k, v in knobs.items():
        if v is None:
            continue
        if k == "tenant_weights":
            try:
                v = {a.split("=")[0].strip(): float(a.split("=")[1]) for a in str(v).split(",") if a.strip()}
            except (IndexError, ValueError):
                raise ValueError(f"--tenant-weights {v!r}: expected tenant=weight,tenant=weight") from None
        changes[k] = v
    return base.replace(**changes) if changes else base


def setup_from_flags(kw: Mapping[str, Any], knobs: Mapping[str, object]) -> Setup:
    """The run the flags describe. ``--n-gpus 0``: the GPUs the policy's instances need
    (``cluster.gpus_needed``: tp for one instance)."""
    from backends.sim.cluster import gpus_needed
    from tuner.study_spec import engine_default_policy
    from workloads import load_cut

    for k in ("trial", "storage"):
        if kw[k] is not None:
            raise ValueError(f"--{k}: needs --study STUDY.yaml (the study the trial belongs to)")
    if kw["workload"] is None:
        raise ValueError("-w/--workload: missing (a bundled name or a workload file; or --study STUDY.yaml)")
    seed = 0 if kw["seed"] is None else kw["seed"]
    base = engine_default_policy(kw["engine"], kw["gpu"])  # the engine's defaults on this GPU
    if kw["policy"] is not None:
        base = Policy.from_yaml(kw["policy"], base=base)
    policy = apply_knobs(base, knobs)
    w = load_cut(kw["workload"], seed=seed, first=kw["first"], rate=kw["rate"])
    dep = Deployment(model=kw["model"], gpu=kw["gpu"], n_gpus=kw["n_gpus"] or policy.tp, engine=kw["engine"],
                     max_model_len=kw["max_model_len"], profile=kw["profile"], cost_model=kw["cost_model"])
    if not kw["n_gpus"]:
        dep = replace(dep, n_gpus=gpus_needed(policy, dep))
    if kw.get("calibration") is not None:  # read and matched to the model, GPU and engine here: one line
        from backends.sim.calibrated import with_calibration

        dep = with_calibration(dep, kw["calibration"])
    return Setup(policy, w, dep, seed)


def setup_from_study(kw: Mapping[str, Any], knobs: Mapping[str, object], given: set[str]) -> Setup:
    """The run of study ``kw["study"]`` for the policy file, trial ``kw["trial"]`` (from the
    study's Optuna storage) or the study's base policy (engine defaults + ``fixed``)."""
    from tuner.study_spec import load_study

    refused = [flag for name, flag in STUDY_OWNS.items() if name in given]
    if refused:
        raise ValueError(f"{', '.join(refused)}: --study takes the workload and deployment from the study file "
                         "(drop the flag, or edit a copy of the study)")
    if kw["trial"] is not None and kw["policy"] is not None:
        raise ValueError("--policy and --trial: give one (a policy file, or a trial of the study)")
    if kw["storage"] is not None and kw["trial"] is None:
        raise ValueError("--storage: only read with --trial N")
    spec = load_study(kw["study"])
    seed = spec.seed if kw["seed"] is None else kw["seed"]
    w = spec.load_workload()
    if kw["trial"] is not None:
        return _trial_setup(spec, kw["trial"], kw["storage"], w, seed, knobs)
    base = spec.base_policy()
    if kw["policy"] is not None:
        base = Policy.from_yaml(kw["policy"], base=base)
    notes = ()
    if any(o.metric == "max_rate" for o in spec.objectives):
        notes = ("objective max_rate: a trial's scorecard is at the rate it found; --trial N re-runs at that rate, "
                 "this run is at the study workload's rate",)
    return Setup(apply_knobs(base, knobs), w, spec.deployment, seed, f"study {spec.name}", notes=notes)


def _trial_setup(spec, number: int, storage: str | None, w: Workload, seed: int,
                 knobs: Mapping[str, object]) -> Setup:
    """Trial ``number``'s policy on the study workload (at the rate a max_rate trial found)."""
    from tuner.evaluate import RESULT_ATTR
    from tuner.export import choose_trial
    from tuner.study import existing_study
    from workloads import scale_to_rate

    choice = choose_trial(spec, existing_study(spec, storage), number)
    info = choice.trial.user_attrs.get(RESULT_ATTR) or {}
    if info.get("rate"):
        w = scale_to_rate(w, info["rate"])
    policy = apply_knobs(choice.policy, knobs)
    stored = info.get("scorecard") if policy == choice.policy else None
    return Setup(policy, w, spec.deployment, seed, f"study {spec.name}, trial {number}", number, stored)


def compare_stored(metrics: Mapping[str, float], stored: Mapping[str, float], trial: int) -> str:
    """One note: does this run's scorecard equal the one trial ``trial`` stored (relative 1e-9)?"""
    diff = [k for k, v in stored.items()
            if k in metrics and not math.isclose(metrics[k], v, rel_tol=1e-9, abs_tol=1e-12)]
    if not diff:
        return f"scorecard equals the one trial {trial} stored ({len(stored)} metrics)"
    k = "goodput_tok_s" if "goodput_tok_s" in diff else diff[0]
    return (f"scorecard differs from the one trial {trial} stored in {len(diff)} of {len(stored)} metrics "
            f"({k}: {stored[k]:.6g} stored, {metrics[k]:.6g} now): the study file, seed or simulator changed")

