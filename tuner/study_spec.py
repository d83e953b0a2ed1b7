"""StudySpec: a study file (``studies/*.yaml``) read and validated into frozen records.

Format (``docs/studies.md`` has the full reference)::

    schema_version: 1
    name: latency-critical            # Optuna study name and MLflow experiment
    workload:                         # or just a bundled name / a file path
      source: azure-conv              # bundled name or file (relative to this study file),
      # spec: {...}                   # ... or an inline workload spec (docs/workloads.md)
      first_n: 2000                   # keep the first N requests, then
      rate: 8.0                       # rescale to this mean rate, req/s
      assign_slo: {by: all, default: interactive}
    deployment: {model: llama-3.1-8b, gpu: h100-sxm, n_gpus: 1, engine: vllm-v1, tp: [1, 2]}
      # calibration: h100.cal.yaml    # optional: a `servetune calibrate --live` file (relative to this
      #                               # study file) that simulated trials use; same model/GPU/engine
    slos: {interactive: {ttft_ms: 300, tpot_ms: 40}}
    objectives: [{metric: goodput, direction: maximize}]
    constraints: ["ttft_p99_ms <= 500", "slo_attainment >= 0.9"]
    search: {max_num_seqs: {low: 16, high: 512, log: true}, queue: [fcfs, sjf], prefix_caching: bool}
    fixed: {batching: chunked}
    sampler: tpe                      # tpe | random | nsga2 | qmc
    seed: 0
    trials: 30
    pruning: [0.25, 0.5, 1.0]         # workload fractions for intermediate scorecards; false = off

Every error is ONE line naming the file and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from backends.base import Deployment
from tuner.objectives import Constraint, Objective, parse_constraint, parse_objective
from tuner.policy import Policy
from tuner.space import KnobRange, parse_range
from workloads.workload import SLOClass, Workload

STUDY_SCHEMA_VERSION = 1
TOP_KEYS = ("schema_version", "name", "description", "workload", "deployment", "slos", "objectives",
            "constraints", "search", "fixed", "sampler", "seed", "trials", "pruning", "runnable_on")
WORKLOAD_KEYS = ("source", "spec", "first_n", "rate", "seed", "assign_slo", "transforms")
DEPLOYMENT_KEYS = ("model", "gpu", "n_gpus", "engine", "max_model_len", "weight_dtype", "kv_dtype", "profile", "cost_model",
                   "tp", "calibration")
SAMPLERS = ("tpe", "random", "nsga2", "qmc")
DEFAULT_PRUNING = (0.25, 0.5, 1.0)


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """Where the study's workload comes from and how it is cut and scaled."""

    source: str | None = None
    """Bundled name or absolute file path (None when ``inline`` is given)."""
    inline: Mapping[str, Any] | None = None
    """An inline workload spec (same keys as a workload YAML file)."""
    first_n: int | None = None
    rate: float | None = None
    """Mean arrival rate after first_n, req/s."""
    seed: int | None = None
    assign_slo: Mapping[str, Any] | None = None
    transforms: tuple[Mapping[str, Any], ...] = ()
    """Workload-spec transforms applied last, in order (``workloads.spec.apply_transform``)."""
    base_dir: str = "."

    def load(self, slos: tuple[SLOClass, ...] = (), max_model_len: int = 0) -> Workload:
        """Materialise: load, first_n then rate (``first_at_rate``), cap to the context, the
        study's SLOs, then the transforms."""
        from workloads import assign_slo, cap_context, first_at_rate, load_workload, set_slo_classes
        from workloads.spec import apply_transform, spec_to_workload

        if self.inline is not None:
            w = spec_to_workload(dict(self.inline), name="inline", base=Path(self.base_dir), seed=self.seed)
        else:
            w = load_workload(self.source, seed=self.seed)
        w = first_at_rate(w, self.first_n, self.rate)
        if max_model_len:
            w = cap_context(w, max_model_len)
        if slos:
            w = set_slo_classes(w, slos)
        if self.assign_slo is not None:
            a = dict(self.assign_slo)
            w = assign_slo(w, str(a.pop("by", "all")), mapping=a.pop("map", None), **a)
        for i, item in enumerate(self.transforms):
            w = apply_transform(w, item, f"workload.transforms[{i}]")
        return w


@dataclass(frozen=True, slots=True)
class StudySpec:
    """A validated study file."""

    name: str
    workload: WorkloadSpec
    deployment: Deployment
    objectives: tuple[Objective, ...]
    search: tuple[KnobRange, ...]
    description: str = ""
    slos: tuple[SLOClass, ...] = ()
    constraints: tuple[Constraint, ...] = ()
    fixed: Mapping[str, Any] = field(default_factory=dict)
    sampler: str = "tpe"
    seed: int = 0
    trials: int = 30
    pruning: tuple[float, ...] = DEFAULT_PRUNING
    path: str = ""
    runnable_on: str = ""
    """``runnable_on:`` (vllm or sglang): the search holds only what that engine can run
    (``tuner.runnable``); "" = every knob the simulator scores."""
    notes: tuple[str, ...] = ()
    """What ``runnable_on`` removed from the search, one line each."""

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def prunes(self) -> bool:
        """Pruning on intermediate scorecards: single objective, not max_rate, fractions given."""
        return not self.multi_objective and self.objectives[0].metric != "max_rate" and len(self.pruning) > 1

    def base_policy(self) -> Policy:
        """The engine's default policy with the fixed knobs applied."""
        return engine_default_policy(self.deployment.engine, self.deployment.gpu).replace(**self.fixed)

    def load_workload(self) -> Workload:
        return self.workload.load(self.slos, self.deployment.max_model_len)


def engine_default_policy(engine: str, gpu: str | None = None) -> Policy:
    """``Policy()`` adjusted to the engine preset's own defaults on ``gpu`` (token budget and
    seats: ``EnginePreset.batch_defaults``, e.g. vLLM V1 on an H100 8192 / 1024, on an A100 2048 /
    256; block size, chunking, prefix caching); vLLM V1 on a small GPU is ``Policy()`` itself."""
    try:
        from backends.sim.engines import get_engine
    except ImportError:  # the simulator package is not installed
        return Policy()
    e = get_engine(engine)
    bs = e.block_size if e.block_size >= 8 and e.block_size & (e.block_size - 1) == 0 else 16
    tokens, seqs = e.batch_defaults(gpu)
    return Policy(batching="chunked" if e.chunked_prefill else "continuous", max_num_seqs=seqs,
                  max_num_batched_tokens=tokens, block_size=bs, prefix_caching=e.prefix_caching)


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a study file; a preset name (``latency-critical``) finds the bundled file."""
    p = Path(path)
    if not p.exists() and p.suffix == "":
        from studies import preset_path

        p = preset_path(str(path))
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such study file")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{p}{line}: YAML syntax error: {getattr(e, 'problem', None) or e}") from None
    try:
        return parse_study(doc, base_dir=p.resolve().parent, path=str(p.resolve()))
    except ValueError as e:
        raise ValueError(f"{p.name}: {str(e).splitlines()[0]}") from None


def _int(v: Any, where: str, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{where}: {v!r} must be an integer >= {lo}")
    return v


def _keys(d: Any, allowed: tuple[str, ...], where: str) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise ValueError(f"{where}: expected a mapping")
    for k in d:
        if k not in allowed:
            raise ValueError(f"{where}: unknown key {k!r} (known: {', '.join(allowed)})")
    return d


def _mapping(d: Any, where: str) -> Mapping[str, Any]:
    if d is None:
        return {}
    if not isinstance(d, Mapping):
        raise ValueError(f"{where}: expected a mapping")
    return d


def parse_study(doc: Any, *, base_dir: Path = Path("."), path: str = "") -> StudySpec:
    """A parsed YAML document → StudySpec (ValueError naming the field)."""
    doc = _keys(doc, TOP_KEYS, "study")
    if doc.get("schema_version") != STUDY_SCHEMA_VERSION:
        raise ValueError(f"schema_version: {doc.get('schema_version')!r} is not supported "
                         f"(write schema_version: {STUDY_SCHEMA_VERSION})")
    for k in ("name", "workload", "deployment", "objectives", "search"):
        if k not in doc:
            raise ValueError(f"{k}: missing (required)")
    name = doc["name"]
    if not isinstance(name, str) or not name.strip() or any(c in name for c in "/\\\n"):
        raise ValueError(f"name: {name!r} must be a non-empty one-line string without slashes")

    workload = _workload(doc["workload"], base_dir)
    dep_raw = dict(_keys(doc["deployment"], DEPLOYMENT_KEYS, "deployment"))
    tp_raw = dep_raw.pop("tp", None)
    for k in ("model", "gpu"):
        if k not in dep_raw:
            raise ValueError(f"deployment.{k}: missing (required)")
    cal_raw = dep_raw.pop("calibration", None)
    try:
        deployment = Deployment(**dep_raw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"deployment: {e}") from None
    if cal_raw is not None:
        deployment = _calibrated(deployment, cal_raw, base_dir)

    slos = []
    for cname, c in _mapping(doc.get("slos"), "slos").items():
        c = _keys(c, ("ttft_ms", "tpot_ms"), f"slos.{cname}")
        try:
            slos.append(SLOClass(str(cname), ttft_ms=c["ttft_ms"], tpot_ms=c["tpot_ms"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"slos.{cname}: needs ttft_ms and tpot_ms > 0 (milliseconds) ({e})") from None

    objs_raw = doc["objectives"]
    if isinstance(objs_raw, str | Mapping):
        objs_raw = [objs_raw]
    if not isinstance(objs_raw, list) or not objs_raw:
        raise ValueError("objectives: expected a non-empty list of {metric, direction}")
    objectives = tuple(parse_objective(o, f"objectives[{i}]") for i, o in enumerate(objs_raw))
    if len({o.metric for o in objectives}) != len(objectives):
        raise ValueError("objectives: the same metric appears twice")

    cons_raw = doc.get("constraints") or []
    if not isinstance(cons_raw, list):
        raise ValueError("constraints: expected a list like ['ttft_p99_ms <= 500']")
    constraints = tuple(parse_constraint(c, f"constraints[{i}]") for i, c in enumerate(cons_raw))

    fixed = dict(_mapping(doc.get("fixed"), "fixed"))
    search_raw = _mapping(doc["search"], "search")
    search = [parse_range(k, v, f"search.{k}") for k, v in search_raw.items()]
    for k in fixed:
        if k in search_raw:
            raise ValueError(f"fixed.{k}: knob {k!r} is both fixed and searched")
    if tp_raw is not None:
        if "tp" in search_raw or "tp" in fixed:
            raise ValueError("deployment.tp: tp is given in deployment; do not also search/fix it")
        tps = tp_raw if isinstance(tp_raw, list) else [tp_raw]
        for t in tps:
            if t not in (1, 2, 4, 8, 16) or t > deployment.n_gpus:
                raise ValueError(f"deployment.tp: {t!r} must be 1, 2, 4, 8 or 16 and <= n_gpus={deployment.n_gpus}")
        if len(tps) > 1:
            search.append(parse_range("tp", tps, "deployment.tp"))
        else:
            fixed["tp"] = tps[0]
    for r in search:
        if r.knob == "tp" and any(t > deployment.n_gpus for t in r.choices):
            raise ValueError(f"search.tp: choices {list(r.choices)} exceed deployment.n_gpus={deployment.n_gpus}")
    try:
        Policy.from_dict({**Policy().to_dict(), **fixed})
    except (TypeError, ValueError) as e:
        raise ValueError(f"fixed: {e}") from None
    runnable_on, notes = doc.get("runnable_on") or "", ()
    if runnable_on:
        search, notes = _runnable(search, str(runnable_on), fixed, deployment)
    if not search:
        raise ValueError("search: needs at least one knob to search" + (
            f" (runnable_on: {runnable_on} removed: {'; '.join(notes)})" if notes else ""))

    sampler = doc.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: unknown sampler {sampler!r} (known: {', '.join(SAMPLERS)})")
    seed = _int(doc.get("seed", 0), "seed")
    trials = _int(doc.get("trials", 30), "trials", 1)
    pruning = _pruning(doc.get("pruning", True))
    return StudySpec(name=name.strip(), workload=workload, deployment=deployment, objectives=objectives,
                     search=tuple(search), description=str(doc.get("description") or ""), slos=tuple(slos),
                     constraints=constraints, fixed=fixed, sampler=sampler, seed=seed, trials=trials,
                     pruning=pruning, path=path, runnable_on=str(runnable_on), notes=tuple(notes))


def _calibrated(deployment: Deployment, raw: Any, base_dir: Path) -> Deployment:
    """``deployment.calibration``: a calibration file (relative to the study file), read and
    matched to the deployment's model, GPU and engine now (one line naming the field)."""
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"deployment.calibration: {raw!r} must be a calibration file path "
                         "(servetune calibrate --live writes one)")
    from backends.sim.calibrated import with_calibration

    p = Path(raw).expanduser()
    p = p if p.is_absolute() else base_dir / p
    try:
        return with_calibration(deployment, p)
    except (ValueError, OSError) as e:
        raise ValueError(f"deployment.calibration: {str(e).splitlines()[0]}") from None


def _runnable(search: list[KnobRange], engine: str, fixed: Mapping[str, Any],
              deployment: Deployment) -> tuple[list[KnobRange], tuple[str, ...]]:
    """``runnable_on``: refuse a fixed knob the engine cannot run; restrict the search to it."""
    from tuner.runnable import refused_fixed, restrict

    base = engine_default_policy(deployment.engine, deployment.gpu).replace(**fixed)
    bad = refused_fixed(engine, base, deployment, fixed)
    if bad:
        raise ValueError(f"fixed.{bad[0]}: runnable_on: {engine} cannot run it ({bad[1]})")
    res = restrict(search, engine, base, deployment)
    return list(res.search), res.notes


def _pruning(raw: Any) -> tuple[float, ...]:
    if raw is True or raw is None:
        return DEFAULT_PRUNING
    if raw is False:
        return ()
    if not isinstance(raw, list) or not raw:
        raise ValueError("pruning: expected true, false or a list of workload fractions like [0.25, 0.5, 1.0]")
    fr = []
    for v in raw:
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1:
            raise ValueError(f"pruning: fraction {v!r} must be in (0, 1]")
        fr.append(float(v))
    if fr != sorted(set(fr)) or fr[-1] != 1.0:
        raise ValueError("pruning: fractions must increase and end at 1.0")
    return tuple(fr)


def _workload(raw: Any, base_dir: Path) -> WorkloadSpec:
    if isinstance(raw, str):
        raw = {"source": raw}
    d = _keys(raw, WORKLOAD_KEYS, "workload")
    if ("source" in d) == ("spec" in d):
        raise ValueError("workload: give exactly one of source (a bundled name or file) or spec (an inline spec)")
    source = inline = None
    if "source" in d:
        source = str(d["source"])
        from workloads.registry import BUNDLED

        if source not in BUNDLED:
            p = Path(source).expanduser()
            p = p if p.is_absolute() else base_dir / p
            if not p.exists():
                raise ValueError(f"workload.source: {source!r} is neither a bundled workload "
                                 f"({', '.join(BUNDLED)}) nor an existing file")
            source = str(p)
    else:
        inline = _mapping(d["spec"], "workload.spec")
    first = _int(d["first_n"], "workload.first_n", 1) if "first_n" in d else None
    rate = d.get("rate")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0):
        raise ValueError(f"workload.rate: {rate!r} must be a number > 0 (req/s)")
    seed = _int(d["seed"], "workload.seed") if "seed" in d else None
    a = d.get("assign_slo")
    if a is not None:
        _keys(a, ("by", "map", "threshold", "below", "above", "default"), "workload.assign_slo")
    steps = d.get("transforms") or []
    if not isinstance(steps, list):
        raise ValueError("workload.transforms: expected a list of {name: args} items (as in a workload spec)")
    return WorkloadSpec(source=source, inline=inline, first_n=first, rate=None if rate is None else float(rate),
                        seed=seed, assign_slo=a, transforms=tuple(steps), base_dir=str(base_dir))
