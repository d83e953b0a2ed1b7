"""Simulator fidelity on 13 real vLLM v0.15.1 serving runs on H100 (servetune issue 7).

Regenerates each run's workload from the SOURCES.md table (``tuner.calibration.trainval``),
simulates it with the run's vLLM settings under the ``vllm-v1`` preset, and prints per run the
signed errors of mean TTFT, mean E2E and TPOT: with the cost model's default efficiencies, with
the engine fit on ALL runs (in sample), and OUT OF SAMPLE — the engine fit (a 5-number vector:
mem, gemm, overhead_scale, prefill_overhead_s, lag_steps) on the other MODELS' runs only.

    python benchmarks/bench_trainval.py                 # default + in-sample + leave-one-model-out
    python benchmarks/bench_trainval.py --quick         # default efficiencies only (~15 s)
    python benchmarks/bench_trainval.py --write         # also store the errors for fidelity_summary

Targets (out of sample): median <= 7 % on E2E and TPOT means, <= 15 % on TTFT means.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuner.calibration.engine_fit import (  # noqa: E402
    FIT_PARAMS,
    EngineCalibration,
    fit_engine,
    leave_one_out,
    simulate_run,
)
from tuner.calibration.trainval import TRAINVAL_CSV, load_runs  # noqa: E402

TARGETS = (15.0, 7.0, 7.0)


def _table(title: str, runs, errs) -> np.ndarray:
    print(f"\n{title}")
    print(f"{'run':>4s} {'model / tp / workload':40s} {'TTFT ms':>8s} {'E2E ms':>8s} {'TPOT ms':>8s}   "
          f"{'err TTFT %':>10s} {'E2E %':>7s} {'TPOT %':>7s}")
    for r, e in zip(runs, errs, strict=True):
        print(f"{r.run_id:>4s} {r.label:40s} {r.ttft_ms:8.1f} {r.e2e_ms:8.0f} {r.tpot_ms:8.2f}   "
              f"{e[0]:+10.1f} {e[1]:+7.1f} {e[2]:+7.1f}")
    a = np.abs(np.asarray(errs))
    med, p90 = np.median(a, axis=0), np.percentile(a, 90, axis=0)
    print(f"{'':45s} median |err| %: {med[0]:10.1f} {med[1]:7.1f} {med[2]:7.1f}")
    print(f"{'':45s}    p90 |err| %: {p90[0]:10.1f} {p90[1]:7.1f} {p90[2]:7.1f}")
    return a


def _tail_table(title: str, runs, preds) -> np.ndarray:
    """Signed errors of each run's TTFT and E2E p90 / p99 (the whole run), and their median and
    p90 of |error| over the runs that give them."""
    print(f"\n{title}")
    print(f"{'run':>4s} {'model / tp / workload':40s}   measured TTFT p90/p99, E2E p90/p99 ms   "
          f"{'err TTFT p90 %':>14s} {'p99 %':>7s} {'E2E p90 %':>9s} {'p99 %':>7s}")
    errs = []
    for r, p in zip(runs, preds, strict=True):
        e = p.tail_errors()
        errs.append(e)
        m = r.tails_ms
        print(f"{r.run_id:>4s} {r.label:40s}   {m[0]:7.1f} {m[1]:7.1f} {m[2]:8.0f} {m[3]:8.0f}      "
              f"{e[0]:+14.1f} {e[1]:+7.1f} {e[2]:+9.1f} {e[3]:+7.1f}")
    a = np.abs(np.asarray(errs, float))
    med, p90 = np.nanmedian(a, axis=0), np.nanpercentile(a, 90, axis=0)
    print(f"{'':77s} median |err| %: {med[0]:7.1f} {med[1]:7.1f} {med[2]:9.1f} {med[3]:7.1f}")
    print(f"{'':77s}    p90 |err| %: {p90[0]:7.1f} {p90[1]:7.1f} {p90[2]:9.1f} {p90[3]:7.1f}")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, default=TRAINVAL_CSV, help="the trainval CSV")
    ap.add_argument("--quick", action="store_true", help="default efficiencies only")
    ap.add_argument("--duration-scale", type=float, default=0.15, help="stage length used while fitting")
    ap.add_argument("--max-nfev", type=int, default=15, help="simulations per parameter fit")
    ap.add_argument("--fit-params", default=",".join(FIT_PARAMS),
                    help=f"comma-separated parameters to fit (default {','.join(FIT_PARAMS)}; e.g. add kv_mem)")
    ap.add_argument("--by-stage", action="store_true",
                    help="fit to each load stage's means where the runs give them (default: each run's overall means)")
    ap.add_argument("--write", action="store_true", help="store the OOS errors in tuner/calibration/data/fidelity.yaml")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    runs = load_runs(args.runs)
    base = EngineCalibration(share="prompt", lag_steps=0.0)
    _table("default efficiencies, vllm-v1 preset, no client lag (NOT fitted here)", runs,
           [simulate_run(r, base).errors() for r in runs])
    default = EngineCalibration.simulator_default()
    dpreds = [simulate_run(r, default) for r in runs]
    _table(f"the simulator's default (servetune simulate): default efficiencies + the preset's client lag "
           f"{default.lag_steps:g} steps (rounded from the fit on these runs: in sample for the lag)", runs,
           [p.errors() for p in dpreds])
    _tail_table("the simulator's default: tails (the means above are what the engine fit targets; nothing "
                "is fitted to these)", runs, dpreds)
    if args.quick:
        return 0
    kw = {"duration_scale": args.duration_scale, "max_nfev": args.max_nfev,
          "params": tuple(p for p in args.fit_params.split(",") if p), "by_stage": args.by_stage}
    full = fit_engine(runs, **kw)
    print(f"\nfit of {', '.join(kw['params'])} on all {len(runs)} runs: {full.to_dict()}")
    _table("fitted on all runs (IN SAMPLE)", runs, [simulate_run(r, full).errors() for r in runs])
    preds, cals = leave_one_out(runs, **kw)
    for k, c in cals.items():
        e = c.efficiency
        print(f"  fold without {k}: mem {e.mem:.3f} gemm {e.gemm:.3f} overhead_scale {e.overhead_scale:.2f} "
              f"prefill_overhead {e.prefill_overhead_s * 1e3:.2f} ms lag {c.lag_steps:.2f} steps"
              + (f" kv_mem {c.kv_mem:.3f}" if c.kv_mem else ""))
    oos = _table("OUT OF SAMPLE: leave one MODEL out (each run predicted by the fit without its model)", runs,
                 [p.errors() for p in preds])
    _stage_table(runs, preds)
    med = np.median(oos, axis=0)
    for name, m, t in zip(("TTFT", "E2E", "TPOT"), med, TARGETS, strict=True):
        print(f"  {name}: median {m:.1f} % vs target {t:.0f} %: {'met' if m <= t else 'MISSED'}")
    if args.write:
        write_fidelity(oos, runs)
        import yaml

        from tuner.calibration.summary import FIDELITY_FILE

        cal_file = FIDELITY_FILE.parent / "engine_vllm-v1_h100-sxm.yaml"
        cal_file.write_text("# EngineCalibration fitted by benchmarks/bench_trainval.py on all real vLLM runs\n"
                            + yaml.safe_dump(full.to_dict(), sort_keys=False))
        print(f"wrote {cal_file}")
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


def _stage_table(runs, preds) -> None:
    """Out-of-sample errors of each load stage's means (runs of several stages): how latency grows
    with load, which the overall means average away."""
    rows = [(r, p) for r, p in zip(runs, preds, strict=True) if len(r.stage_ms) > 1 and len(p.stage_ms) == len(r.stage_ms)]
    if not rows:
        return
    print("\nOUT OF SAMPLE by load stage (TTFT / E2E / TPOT signed errors %, stage 0 | stage 1 ...)")
    errs = []
    for r, p in rows:
        cells = []
        for (mt, me), (pt, pe) in zip(r.stage_ms, p.stage_ms, strict=True):
            e = (100 * (pt / mt - 1), 100 * (pe / me - 1), 100 * ((pe - pt) / (me - mt) - 1))
            errs.append(e)
            cells.append(f"{e[0]:+6.1f} {e[1]:+6.1f} {e[2]:+6.1f}")
        print(f"{r.run_id:>4s} {r.label:40s} " + " | ".join(cells))
    a = np.abs(np.asarray(errs))
    print(f"{'':45s} median |err| % (all stages): {np.median(a[:, 0]):.1f} / {np.median(a[:, 1]):.1f} / "
          f"{np.median(a[:, 2]):.1f}; p90 {np.percentile(a[:, 0], 90):.1f} / {np.percentile(a[:, 1], 90):.1f} / "
          f"{np.percentile(a[:, 2], 90):.1f}")


def write_fidelity(oos: np.ndarray, runs) -> None:
    """Record the OOS errors for ``tuner.calibration.fidelity_summary``."""
    import yaml

    from tuner.calibration.summary import FIDELITY_FILE

    doc = yaml.safe_load(FIDELITY_FILE.read_text()) if FIDELITY_FILE.is_file() else {}
    doc = doc or {}
    gpus = doc.setdefault("gpus", {})
    entries = [e for e in gpus.get("h100-sxm", []) if e.get("table") != "trainval"]
    entries.append({"table": "trainval", "evaluation": f"{len(runs)} real vLLM V1 runs, leave-one-model-out",
                    "errors": {k: [round(float(np.median(oos[:, i])), 1), round(float(np.percentile(oos[:, i], 90)), 1)]
                               for i, k in enumerate(("TTFT mean", "E2E mean", "TPOT"))}})
    gpus["h100-sxm"] = entries
    FIDELITY_FILE.write_text(yaml.safe_dump(doc, sort_keys=False))
    print(f"wrote {FIDELITY_FILE}")


if __name__ == "__main__":
    raise SystemExit(main())
