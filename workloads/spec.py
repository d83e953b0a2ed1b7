"""YAML workload specs: a source trace or a synthetic generator, then transformations.

A spec file (``*.yaml``) that users write by hand::

    schema_version: 1            # required
    name: chat-and-batch         # optional (default: the file name)
    seed: 7                      # optional, default 0; load_workload(..., seed=S) overrides it
    slo_classes:                 # optional; name: {ttft_ms, tpot_ms} (milliseconds).
      interactive: {ttft_ms: 500, tpot_ms: 50}     # the FIRST class is the default class
      batch: {ttft_ms: 30000, tpot_ms: 500}

    # exactly one of source / synthetic
    source: azure-conv           # a bundled name, or a requests file (.parquet/.csv/.jsonl,
                                 # relative to this spec), or a mapping with options:
    # source: {trace: servegen-reason, top: 8, start_s: 43200, duration_s: 3600}
    synthetic:
      duration_s: 600            # or num_requests: 10000 (exactly one)
      prefix_block_tokens: 16    # block size for prefix groups (tokens), default 16
      tenants:                   # or put one tenant's keys directly under synthetic:
        - name: chat
          rate: 4.0              # req/s (not for bursty)
          arrival: poisson       # poisson | {process: gamma, cv: 3} | {process: trace, trace: azure-conv}
                                 # | {process: bursty, on_rate: 20, off_rate: 1, mean_on_s: 10, mean_off_s: 50}
          lengths: sharegpt      # joint (prompt, output) pairs from a length table or trace, or:
          prompt: {dist: lognormal, mean: 800, sigma: 0.6, max: 4000}
          output: 128            # an int is a fixed length; dists: fixed (value), uniform (low, high),
                                 # lognormal (mean, sigma), zipf (a, low, high), trace (trace); min/max clip
          max_output: 512        # max_tokens cap; default = output_len
          priority: 0            # lower is served first
          slo_class: interactive
          prefix: {groups: 9, tokens: 100}   # shared system prompts (optional)
          session:               # multi-turn conversations (optional): each arrival starts one
            turns: {dist: uniform, low: 2, high: 8}   # requests per conversation (lengths syntax)
            message: 200         # tokens of each later user message (default 128)
            think_s: 20          # mean user think time after an answer, s (exponential; 0: at once)
                                 # a later turn is sent think_s after the previous turn's last
                                 # token; its prompt: the previous prompt + output + the message

    transforms:                  # applied in order; each item has one key
      - scale_to_rate: 8.0       # req/s            - scale_rate: 2.0 (factor)
      - window: [0, 600]         # [t0, t1) s, rebased to 0
      - first_n: 1000
      - cap_context: 4096        # or {max_model_len: 4096, drop: true}
      - set_max_output: output_len   # or an int cap (tokens)
      - assign_slo: {by: tenant, map: {chat: interactive}, default: batch}
      - assign_slo: {by: prompt_len, threshold: 2000, below: interactive, above: batch}
      - assign_slo: {by: priority, map: {0: interactive}}
      - set_priority: {by: tenant, map: {chat: 0}, default: 1}

Every error is one line naming the file, the key path and why (e.g.
``spec.yaml: synthetic.tenants[0]: unknown key 'rat' (known: ...)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from workloads import transforms as T
from workloads.adapters import DEFAULT_LORA_RANK, assign_adapters
from workloads.synthetic import Arrival, Lengths, Session, Tenant, generate_mix
from workloads.workload import DEFAULT_SLO, SCHEMA_VERSION, SLOClass, Workload

TOP_KEYS = ("schema_version", "name", "description", "seed", "slo_classes", "source", "synthetic", "transforms")
TENANT_KEYS = ("name", "rate", "arrival", "prompt", "output", "lengths", "max_output", "priority", "slo_class", "prefix",
               "session")
SESSION_KEYS = ("turns", "message", "think_s")
ARRIVAL_KEYS = ("process", "cv", "on_rate", "off_rate", "mean_on_s", "mean_off_s", "trace")
LENGTH_KEYS = ("dist", "value", "low", "high", "mean", "sigma", "a", "trace", "min", "max")
SYNTH_KEYS = ("duration_s", "num_requests", "prefix_block_tokens", "tenants")
SOURCE_KEYS = ("trace", "path", "clients", "top", "start_s", "duration_s")
TRANSFORMS = ("scale_to_rate", "scale_rate", "window", "first_n", "cap_context", "set_max_output", "assign_slo", "set_priority",
              "assign_adapters")


class _Err(ValueError):
    """A spec error located at a key path (the file name is added by load_spec)."""


def _check_keys(d: Any, allowed: tuple[str, ...], where: str) -> dict:
    if not isinstance(d, dict):
        raise _Err(f"{where}: expected a mapping, got {type(d).__name__}")
    for k in d:
        if k not in allowed:
            raise _Err(f"{where}: unknown key {k!r} (known: {', '.join(allowed)})")
    return d


def _num(v: Any, where: str, *, integer: bool = False) -> float | int:
    if isinstance(v, str):  # YAML 1.1 reads 5e7 (no dot) as a string
        try:
            v = float(v.strip())
        except ValueError:
            raise _Err(f"{where}={v!r} is not a number") from None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _Err(f"{where}={v!r} is not a number")
    if integer:
        if int(v) != v:
            raise _Err(f"{where}={v!r} is not an integer")
        return int(v)
    return float(v)


def _opt(d: dict, key: str, where: str, *, integer: bool = False) -> Any:
    return None if d.get(key) is None else _num(d[key], f"{where}.{key}", integer=integer)


def _build(cls, where: str, **kw):
    try:
        return cls(**kw)
    except ValueError as e:
        raise _Err(f"{where}: {e}") from None


# ---------------------------------------------------------------- pieces
def _slo_classes(raw: Any) -> tuple[SLOClass, ...]:
    if isinstance(raw, list):
        raw = {(c or {}).get("name") if isinstance(c, dict) else None: c for c in raw}
    if not isinstance(raw, dict) or not raw:
        raise _Err("slo_classes: expected a mapping name: {ttft_ms, tpot_ms}")
    out = []
    for name, c in raw.items():
        where = f"slo_classes.{name}"
        c = _check_keys(c, ("name", "ttft_ms", "tpot_ms"), where)
        for k in ("ttft_ms", "tpot_ms"):
            if k not in c:
                raise _Err(f"{where}: missing {k} (milliseconds)")
        out.append(_build(SLOClass, where, name=str(name), ttft_ms=_num(c["ttft_ms"], f"{where}.ttft_ms"),
                          tpot_ms=_num(c["tpot_ms"], f"{where}.tpot_ms")))
    return tuple(out)


def _lengths(raw: Any, where: str) -> Lengths:
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = {"dist": "fixed", "value": raw}
    d = _check_keys(raw, LENGTH_KEYS, where)
    kw = {k: _opt(d, k, where, integer=k in ("value", "low", "high", "min", "max")) for k in LENGTH_KEYS
          if k not in ("dist", "trace") and k in d}
    if "min" in kw and kw["min"] is None:
        del kw["min"]
    return _build(Lengths, where, dist=str(d.get("dist", "fixed")), trace=d.get("trace"), **kw)


def _arrival(raw: Any, rate: Any, where: str) -> Arrival:
    if isinstance(raw, str):
        raw = {"process": raw}
    d = _check_keys(raw if raw is not None else {"process": "poisson"}, ARRIVAL_KEYS, f"{where}.arrival")
    process = str(d.get("process", "poisson"))
    kw = {k: _opt(d, k, f"{where}.arrival") for k in ("cv", "on_rate", "off_rate", "mean_on_s", "mean_off_s") if k in d}
    if process == "bursty" and rate is not None:
        raise _Err(f"{where}.rate: bursty arrivals derive their rate from on_rate/off_rate; remove rate")
    r = None if rate is None else _num(rate, f"{where}.rate")
    if r is not None:
        try:
            T.check_rate(r, "rate")
        except ValueError as e:
            raise _Err(f"{where}.{e}") from None
    return _build(Arrival, f"{where}.arrival", process=process, rate=r, trace=d.get("trace"), **kw)


def _session(raw: Any, where: str) -> Session:
    d = _check_keys(raw, SESSION_KEYS, where)
    if "turns" not in d:
        raise _Err(f"{where}: missing turns (requests per conversation: a number or a length spec)")
    kw: dict[str, Any] = {"turns": _lengths(d["turns"], f"{where}.turns")}
    if "message" in d:
        kw["message"] = _lengths(d["message"], f"{where}.message")
    if "think_s" in d:
        kw["think_s"] = _num(d["think_s"], f"{where}.think_s")
    return _build(Session, where, **kw)


def _tenant(raw: Any, where: str, default_name: str) -> Tenant:
    d = _check_keys(raw, TENANT_KEYS, where)
    prefix = _check_keys(d.get("prefix") or {}, ("groups", "tokens"), f"{where}.prefix")
    kw: dict[str, Any] = {}
    if "prompt" in d:
        kw["prompt"] = _lengths(d["prompt"], f"{where}.prompt")
    if "output" in d:
        kw["output"] = _lengths(d["output"], f"{where}.output")
    if d.get("session") is not None:
        kw["session"] = _session(d["session"], f"{where}.session")
    return _build(
        Tenant,
        where,
        name=str(d.get("name", default_name)),
        arrival=_arrival(d.get("arrival"), d.get("rate"), where),
        lengths=d.get("lengths"),
        priority=_num(d.get("priority", 0), f"{where}.priority", integer=True),
        slo_class=None if d.get("slo_class") is None else str(d["slo_class"]),
        max_output=_opt(d, "max_output", where, integer=True),
        prefix_groups=_num(prefix.get("groups", 0), f"{where}.prefix.groups", integer=True),
        prefix_tokens=_num(prefix.get("tokens", 0), f"{where}.prefix.tokens", integer=True),
        **kw,
    )


def _synthetic(raw: Any, name: str, seed: int, classes: tuple[SLOClass, ...]) -> Workload:
    if not isinstance(raw, dict):
        raise _Err("synthetic: expected a mapping")
    if "tenants" in raw:
        d = _check_keys(raw, SYNTH_KEYS, "synthetic")
        if not isinstance(d["tenants"], list) or not d["tenants"]:
            raise _Err("synthetic.tenants: expected a non-empty list")
        tenants = [_tenant(t, f"synthetic.tenants[{i}]", f"tenant-{i}") for i, t in enumerate(d["tenants"])]
    else:  # one tenant's keys directly under synthetic
        _check_keys(raw, SYNTH_KEYS + TENANT_KEYS, "synthetic")
        d = raw
        tenants = [_tenant({k: v for k, v in raw.items() if k in TENANT_KEYS}, "synthetic", "default")]
    try:
        return generate_mix(
            name,
            tenants,
            seed=seed,
            duration_s=_opt(d, "duration_s", "synthetic"),
            num_requests=_opt(d, "num_requests", "synthetic", integer=True),
            slo_classes=classes,
            prefix_block_tokens=_num(d.get("prefix_block_tokens", 16), "synthetic.prefix_block_tokens", integer=True),
        )
    except _Err:
        raise
    except ValueError as e:
        raise _Err(str(e)) from None


def _source(raw: Any, base: Path, seed: int) -> Workload:
    from workloads.registry import load_workload

    if isinstance(raw, str):
        if not _looks_like_path(raw):
            return load_workload(raw, seed=seed)
        raw = {"path": raw}
    d = _check_keys(raw, SOURCE_KEYS, "source")
    if Path(str(d.get("path", ""))).suffix.lower() in (".yaml", ".yml"):
        raise _Err("source: a spec cannot source another spec (export it first: servetune workloads export)")
    if ("trace" in d) == ("path" in d):
        raise _Err("source: give exactly one of trace (a bundled name) or path (a requests file)")
    opts = {k: d[k] for k in ("clients", "top", "start_s", "duration_s") if k in d}
    if "path" in d:
        if opts:
            raise _Err(f"source: option {next(iter(opts))!r} applies to a bundled trace, not a file")
        return load_workload(str(_resolve(str(d["path"]), base)), seed=seed)
    return load_workload(str(d["trace"]), seed=seed, **opts)


def _looks_like_path(s: str) -> bool:
    return "/" in s or "\\" in s or Path(s).suffix.lower() in (".parquet", ".csv", ".jsonl", ".yaml", ".yml")


def _resolve(s: str, base: Path) -> Path:
    p = Path(s).expanduser()
    return p if p.is_absolute() else base / p


def apply_transform(w: Workload, item: Any, where: str) -> Workload:
    """Apply one ``{name: args}`` transform item."""
    if not isinstance(item, dict) or len(item) != 1:
        raise _Err(f"{where}: expected one {{name: args}} item (names: {', '.join(TRANSFORMS)})")
    (op, arg), = item.items()
    if op not in TRANSFORMS:
        raise _Err(f"{where}: unknown transform {op!r} (known: {', '.join(TRANSFORMS)})")
    at = f"{where}.{op}"
    try:
        if op == "scale_to_rate":
            return T.scale_to_rate(w, _num(arg, at))
        if op == "scale_rate":
            return T.scale_rate(w, _num(arg, at))
        if op == "window":
            if isinstance(arg, dict):
                arg = [_check_keys(arg, ("t0", "t1"), at).get("t0", 0), arg.get("t1")]
            if not isinstance(arg, list) or len(arg) != 2:
                raise _Err(f"{at}: expected [t0, t1] in seconds")
            return T.window(w, _num(arg[0], f"{at}[0]"), _num(arg[1], f"{at}[1]"))
        if op == "first_n":
            return T.first_n(w, _num(arg, at, integer=True))
        if op == "cap_context":
            if isinstance(arg, dict):
                d = _check_keys(arg, ("max_model_len", "drop"), at)
                return T.cap_context(w, _num(d.get("max_model_len"), f"{at}.max_model_len", integer=True),
                                     drop=bool(d.get("drop", False)))
            return T.cap_context(w, _num(arg, at, integer=True))
        if op == "set_max_output":
            return T.set_max_output(w, arg if arg == "output_len" else _num(arg, at, integer=True))
        if op == "assign_slo":
            d = _check_keys(arg, ("by", "map", "threshold", "below", "above", "default"), at)
            return T.assign_slo(w, str(d.get("by", "all")), mapping=d.get("map"), threshold=_opt(d, "threshold", at),
                                below=d.get("below"), above=d.get("above"), default=d.get("default"))
        if op == "assign_adapters":
            d = _check_keys(arg, ("n", "zipf", "share", "rank", "seed"), at)
            z, sh, r, sd = (_opt(d, k, at, integer=k in ("rank", "seed")) for k in ("zipf", "share", "rank", "seed"))
            return assign_adapters(w, _num(d.get("n"), f"{at}.n", integer=True), zipf=1.0 if z is None else z,
                                   share=1.0 if sh is None else sh, rank=r or DEFAULT_LORA_RANK, seed=sd or 0)
        d = _check_keys(arg, ("by", "map", "default"), at)
        return T.set_priority(w, str(d.get("by", "tenant")), d.get("map") or {},
                              default=_opt(d, "default", at, integer=True))
    except _Err:
        raise
    except ValueError as e:
        raise _Err(f"{at}: {e}") from None


# ---------------------------------------------------------------- entry points
def parse_yaml(text: str, where: str) -> dict:
    """YAML text → mapping; a syntax error becomes one line with the line number."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{where}{line}: YAML syntax error: {problem}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected a mapping of spec keys (schema_version, source|synthetic, ...)")
    return doc


def spec_to_workload(doc: dict, *, name: str, base: Path, seed: int | None = None) -> Workload:
    """Materialise a parsed spec (raises _Err located at a key path)."""
    _check_keys(doc, TOP_KEYS, "spec")
    if "schema_version" not in doc:
        raise _Err(f"missing schema_version (write schema_version: {SCHEMA_VERSION})")
    if doc["schema_version"] != SCHEMA_VERSION:
        raise _Err(f"schema_version {doc['schema_version']!r} is not supported (this servetune reads {SCHEMA_VERSION})")
    s = seed if seed is not None else _num(doc.get("seed", 0), "seed", integer=True)
    wname = str(doc.get("name") or name)
    classes = _slo_classes(doc["slo_classes"]) if "slo_classes" in doc else (DEFAULT_SLO,)
    if ("source" in doc) == ("synthetic" in doc):
        raise _Err("give exactly one of source (a trace or file) or synthetic (a generator)")
    if "synthetic" in doc:
        w = _synthetic(doc["synthetic"], wname, s, classes)
    else:
        try:
            w = _source(doc["source"], base, s)
        except _Err:
            raise
        except ValueError as e:
            raise _Err(f"source: {e}") from None
        if "slo_classes" in doc:
            w = T.set_slo_classes(w, classes)
        w = w.replace(name=wname)
    steps = doc.get("transforms") or []
    if not isinstance(steps, list):
        raise _Err("transforms: expected a list of {name: args} items")
    for i, item in enumerate(steps):
        w = apply_transform(w, item, f"transforms[{i}]")
    return w.replace(meta={**w.meta, "spec": name, "seed": str(s)})


def load_spec(path: str | Path, *, seed: int | None = None) -> Workload:
    """Read a YAML spec file and materialise its workload (seed None ⇒ the spec's own seed)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    doc = parse_yaml(p.read_text(encoding="utf-8"), str(p))
    try:
        return spec_to_workload(doc, name=p.stem, base=p.parent, seed=seed)
    except _Err as e:
        raise ValueError(f"{p}: {e}") from None
