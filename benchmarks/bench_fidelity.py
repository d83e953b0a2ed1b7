"""Profile fidelity of the analytical cost model (servetune issues 3 and 7).

For each measured profile table (``backends.sim.profiles``) prints the median and p90 absolute
percentage error of the cost model's predictions: with the default efficiencies, fitted
in-sample, and OUT OF SAMPLE (fit on some rows, predict the held-out rest: leave one GPU / TP
degree / model out, k-fold stratified by batch kind where a table has one configuration, and a
cross-table transfer).
Out-of-sample errors pool each row's prediction from the fold that held it out.

    python benchmarks/bench_fidelity.py            # all tables
    python benchmarks/bench_fidelity.py --table sarathi
    python benchmarks/bench_fidelity.py --table vidur_mlp --hbm achievable   # memory terms at the
                                     # GPU's measured achievable HBM bandwidth (GPUSpec.hbm_bandwidth)

Targets: median <= 15 % per table (issue 3); stretch median <= 8 %, p90 <= 15 % out of sample (issue 7).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.sim.catalog import HBM_BANDWIDTHS  # noqa: E402
from backends.sim.engines import get_engine  # noqa: E402
from backends.sim.profiles import (  # noqa: E402
    TABLES,
    ProfileRow,
    ape,
    fit_efficiency,
    load_rows,
    vllm_v1_steady_rows,
)
from tuner.calibration.fidelity import kfold_lines, residual_lines, terms_lines  # noqa: E402
from tuner.calibration.fidelity import leave_out as fidelity_leave_out  # noqa: E402

VLLM_RUNS = Path("/work/shared/data/profiles/vllm_v0151_trainval_runs.csv")
"""Real vLLM V1 serving runs (not bundled: licence not stated); the table is skipped without it."""
ENGINES = {"vllm_v1": get_engine("vllm-v1")}
"""Engine preset per table; the rest (Splitwise's and Sarathi's vLLM-era runtimes, Vidur's
operator profiles) ran eager prefill-first steps: vllm-v0."""
ENGINE = get_engine("vllm-v0")


def _rows(table: str) -> list[ProfileRow]:
    return list(vllm_v1_steady_rows(VLLM_RUNS) if table == "vllm_v1" else load_rows(table))


def _stats(errs: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(errs, dtype=float)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(np.median(a)), float(np.percentile(a, 90))


def leave_out(rows: Sequence[ProfileRow], key: Callable[[ProfileRow], object],
              hbm: str = "simulator") -> tuple[list[float], int]:
    """Pooled held-out errors when each value of ``key`` is left out in turn (folds whose
    training rows would be empty are skipped); ``hbm``: the memory terms' bandwidth."""
    errs = fidelity_leave_out(rows, key, ENGINES.get(rows[0].table, ENGINE), hbm=hbm)
    folds = sum(1 for k in {key(r) for r in rows} if any(key(r) != k for r in rows))
    return [e for e in errs if np.isfinite(e)], folds


def splits(table: str, hbm: str = "simulator") -> dict[str, Callable[[list[ProfileRow]], tuple[list[float], int]]]:
    by_gpu = lambda rs: leave_out(rs, lambda r: r.gpu, hbm)  # noqa: E731
    by_tp = lambda rs: leave_out(rs, lambda r: r.tp, hbm)  # noqa: E731
    by_model = lambda rs: leave_out(rs, lambda r: r.model, hbm)  # noqa: E731
    if table == "splitwise":
        return {"leave-one-GPU-out": by_gpu, "leave-one-TP-out": by_tp, "leave-one-model-out": by_model}
    if table == "sarathi":
        return {"leave-one-batch-kind-out": lambda rs: leave_out(rs, lambda r: r.label.split(" b")[0], hbm),
                "fit Splitwise A100 -> Sarathi": lambda rs: _transfer_sarathi(rs, hbm)}
    if table == "vllm_v1":
        return {"leave-one-model-out": by_model, "leave-one-TP-out": by_tp,
                "leave-one-workload-out": lambda rs: leave_out(rs, lambda r: r.label.split()[-2], hbm)}
    if table == "vidur_mlp":
        return {"leave-one-GPU-out": by_gpu, "leave-one-TP-out": by_tp, "leave-one-model-out": by_model}
    return {"leave-one-GPU-out": by_gpu, "leave-one-GPU-count-out": by_tp}


def _transfer_sarathi(rows: list[ProfileRow], hbm: str = "simulator") -> tuple[list[float], int]:
    train = [r for r in load_rows("splitwise") if r.gpu == "a100-80gb"]
    return ape(rows, fit_efficiency(train, engine=ENGINE, hbm=hbm), ENGINE, hbm=hbm), 1


def speed() -> None:
    """Microseconds per call of the simulator's hot-path methods (target: a few µs)."""
    import timeit

    from backends.sim.catalog import get_gpu, get_model
    from backends.sim.costmodel import CostModel

    print(f"\n{'cost model call (H100)':44s} {'µs/call':>8s}")
    for name, tp in (("llama-3.1-8b", 1), ("mixtral-8x7b", 2), ("llama-3.1-70b", 4)):
        c = CostModel(get_model(name), get_gpu("h100"), tp)
        calls = {"iteration (mixed)": lambda c=c: c.iteration(512, 512 * 700.0, 32, 32, 32_000.0),
                 "iteration (decode, memo hit)": lambda c=c: c.iteration(0, 0.0, 32, 32, 32_000.0),
                 "iteration (decode, cold)": lambda c=c: (c._memo.clear(), c.iteration(0, 0.0, 32, 32, 32_000.0)),
                 "decode_segment": lambda c=c: c.decode_segment(32, 32_000.0, 50),
                 "iters_within": lambda c=c: c.iters_within(32, 32_000.0, 0.5)}
        for label, fn in calls.items():
            n = 20_000
            us = min(timeit.repeat(fn, number=n, repeat=3)) / n * 1e6
            print(f"{f'{name} tp{tp} {label}':44s} {us:8.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", choices=(*TABLES, "vllm_v1"), action="append", help="table(s) to run (default: all)")
    ap.add_argument("--no-speed", action="store_true", help="skip the µs/call timing of the cost model")
    ap.add_argument("--hbm", choices=HBM_BANDWIDTHS, default="simulator",
                    help="HBM bandwidth of the roofline's memory terms (default: the simulator's, GPUSpec.hbm_sim_bytes_s)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    head = f"{'table':16s} {'rows':>5s}  {'evaluation':56s} {'median %':>9s} {'p90 %':>7s}"
    print(head)
    print("-" * len(head))
    tables = args.table or [*TABLES, *(["vllm_v1"] if VLLM_RUNS.is_file() else [])]
    for table in tables:
        rows = _rows(table)
        eng = ENGINES.get(table, ENGINE)
        med, p90 = _stats(ape(rows, None, eng, hbm=args.hbm))
        print(f"{table:16s} {len(rows):5d}  {'default efficiencies':56s} {med:9.1f} {p90:7.1f}")
        eff = fit_efficiency(rows, engine=eng, hbm=args.hbm)
        med, p90 = _stats(ape(rows, eff, eng, hbm=args.hbm))
        print(f"{'':16s} {'':5s}  {'fitted, in sample':56s} {med:9.1f} {p90:7.1f}")
        for name, fn in splits(table, args.hbm).items():
            errs, folds = fn(rows)
            med, p90 = _stats(errs)
            print(f"{'':16s} {'':5s}  {f'OOS {name} ({folds} folds)':56s} {med:9.1f} {p90:7.1f}")
        lines = kfold_lines(table, rows, "", lambda key, rs=rows: leave_out(rs, key, args.hbm)[0]) if table == "sarathi" else []
        if table in ("splitwise", "sarathi"):  # the fitted operator-class terms (backends.sim.terms)
            lines += terms_lines(table, rows)
        if table == "vidur_mlp":  # the roofline times a learned residual (tuner.calibration.residual)
            lines += residual_lines(rows, args.hbm)
        for ln in lines:
            print(f"{'':16s} {'':5s}  {ln.evaluation:56s} {ln.median:9.1f} {ln.p90:7.1f}")
    print(f"\n({time.perf_counter() - t0:.1f} s) HBM bandwidth: {args.hbm}. Engine presets: vllm_v1 -> vllm-v1, others -> vllm-v0. The vllm_v1"
          " table is a steady-state approximation (Little's law) of real serving runs; the default"
          " efficiencies and the vllm-v1 preset were rounded from its in-sample fit, so its 'default'"
          " row is NOT out of sample.")
    if not args.no_speed:
        speed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
