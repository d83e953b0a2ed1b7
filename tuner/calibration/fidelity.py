"""Out-of-sample fidelity of the cost model on every measured table (``servetune fidelity``).

Each evaluation fits on part of a table and predicts the rest; a row's error always comes from
the fold that held it out. Tables and splits:

* ``splitwise`` (per-batch prefill latency and decode-step latency, Llama-2-70B / BLOOM-176B,
  A100/H100, TP 2/4/8): fitted roofline efficiencies, leave one GPU / TP degree / model out;
  the same splits for the fitted operator-class terms (``backends.sim.terms``);
* ``sarathi`` (Yi-34B TP2 A100 batches): 5-fold stratified by batch kind (``folds``: seed 0,
  and the mean median / p90 over ``folds.SEEDS``), leave one batch kind out, and a transfer
  (efficiencies fitted on Splitwise A100, no Sarathi row used); the terms fitted with the
  Splitwise terms fit as their prior, the same k-folds and leave one batch kind out, and that
  prior alone;
* ``vidur`` (per-layer GEMM times): the fitted per-operator curves (``fit.LinearCurve``)
  extrapolating to token counts above those fitted (fit n <= 512, test n > 512) and
  interpolating (every other token count); the fitted roofline leave one TP degree / model /
  GPU out, with its memory terms at the simulator's HBM bandwidth (``GPUSpec.hbm_sim_bytes_s``) and
  again at the datasheet peak (``datasheet HBM``); the same splits for the
  fitted roofline times a learned residual (``residual``: a tree ensemble on GPU-normalised GEMM
  features, fitted on the training fold's roofline residuals; not the simulator's path);
  all-reduce leave one GPU count out;
* ``trainval`` (13 real vLLM V1 serving runs on H100): the engine fit (``engine_fit``), leave
  one MODEL out, errors of the mean TTFT, E2E and TPOT.

Errors are absolute percentage errors (%); each line gives the median and p90.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backends.sim.terms import REFERENCE_PRIOR_WEIGHT

TABLES = ("splitwise", "sarathi", "vidur", "trainval")
TARGETS = {"batch": (8.0, 15.0), "trainval": {"ttft": 15.0, "e2e": 7.0, "tpot": 7.0}}


@dataclass(frozen=True, slots=True)
class FidelityLine:
    """One evaluation of one table."""

    table: str
    evaluation: str
    n: int
    median: float
    p90: float
    target: str = ""

    @property
    def met(self) -> bool | None:
        if not self.target:
            return None
        med, p90 = (float(x) for x in self.target.split("/"))
        return self.median <= med and self.p90 <= p90


def stats(errs: Sequence[float]) -> tuple[float, float]:
    a = np.abs(np.asarray(errs, float))
    a = a[np.isfinite(a)]
    if a.size == 0:
        return float("nan"), float("nan")
    return float(np.median(a)), float(np.percentile(a, 90))


def _line(table: str, evaluation: str, errs: Sequence[float], target: str = "") -> FidelityLine:
    med, p90 = stats(errs)
    return FidelityLine(table, evaluation, len(errs), med, p90, target)


def held_out(rows: Sequence, key: Callable[[object], object], fit: Callable[[list], object],
             errors: Callable[[object, list], Sequence[float]]) -> list[float]:
    """Held-out errors when each ``key`` value is left out in turn, aligned with ``rows`` (NaN
    where a fold had no training rows): ``fit(train_rows)`` returns a model, ``errors(model,
    test_rows)`` its errors on the held-out rows."""
    errs = [float("nan")] * len(rows)
    for k in sorted({key(r) for r in rows}, key=str):
        idx = [i for i, r in enumerate(rows) if key(r) == k]
        train = [r for r in rows if key(r) != k]
        if train:
            for i, e in zip(idx, errors(fit(train), [rows[i] for i in idx]), strict=True):
                errs[i] = e
    return errs


def leave_out(rows: Sequence, key: Callable[[object], object], engine=None, *, hbm: str = "simulator") -> list[float]:
    """Held-out APEs of the fitted roofline when each ``key`` value is left out, aligned with
    ``rows`` (NaN where a fold had no training rows). ``hbm``: the bandwidth the fitted memory
    efficiency multiplies (``simulator``, ``datasheet`` or ``achievable``, ``backends.sim.profiles.predict``)."""
    from backends.sim.profiles import ape, fit_efficiency

    return held_out(rows, key, lambda train: fit_efficiency(train, engine=engine, hbm=hbm),
                    lambda eff, test: ape(test, eff, engine, hbm=hbm))


def residual_leave_out(rows: Sequence, key: Callable[[object], object], *, hbm: str = "simulator") -> list[float]:
    """Held-out APEs of the fitted roofline times the learned residual (``residual``: both
    fitted on the training fold only) when each ``key`` value is left out, aligned with ``rows``."""
    from tuner.calibration.residual import fit_residual

    return held_out(rows, key, lambda train: fit_residual(train, hbm), lambda model, test: model.ape(test))


def kfold_lines(table: str, rows: Sequence, name: str, errs_for: Callable[[Callable[[object], int]], list[float]],
                target: str = "8/15") -> list[FidelityLine]:
    """Two lines of a k-fold stratified by batch kind (``folds``): the split of the first seed,
    and the mean of the median and of the p90 over ``folds.SEEDS``. ``errs_for(key)`` returns the
    held-out errors of a split given as a fold key (e.g. ``lambda key: leave_out(rows, key)``)."""
    from tuner.calibration.folds import SEEDS, K, stratified_fold_key

    errs = [errs_for(stratified_fold_key(rows, K, s)) for s in SEEDS]
    med, p90 = np.mean([stats(e) for e in errs], axis=0)
    return [_line(table, f"{name}OOS stratified {K}-fold (seed {SEEDS[0]})", errs[0], target),
            FidelityLine(table, f"{name}OOS stratified {K}-fold x{len(SEEDS)} seeds (mean)", len(rows), float(med),
                         float(p90), target)]


def terms_leave_out(rows: Sequence, key: Callable[[object], object], prior=None,
                    prior_weight: float = 0.01) -> list[float]:
    """Held-out APEs of the fitted operator-class terms (``backends.sim.terms``) when each
    ``key`` value is left out, aligned with ``rows``."""
    from backends.sim.terms import DEFAULT_PRIOR, fit_terms, terms_ape

    return held_out(rows, key, lambda train: fit_terms(train, prior=prior or DEFAULT_PRIOR, prior_weight=prior_weight),
                    lambda fit, test: terms_ape(test, fit))


SARATHI_PRIOR_WEIGHT = REFERENCE_PRIOR_WEIGHT
"""Pull of the reference prior (Splitwise's work terms, ``terms.reference_prior``) on a Sarathi fit."""


def terms_lines(table: str, rows: Sequence) -> list[FidelityLine]:
    """The fitted operator-class terms on Splitwise or Sarathi (see module doc)."""
    from backends.sim.terms import fit_terms, reference_prior, splitwise_terms, terms_ape

    tgt = "8/15"
    if table == "splitwise":
        out = [_line(table, "terms: fitted, in sample", terms_ape(rows, fit_terms(rows)))]
        for name, key in (("GPU", lambda r: r.gpu), ("TP", lambda r: r.tp), ("model", lambda r: r.model)):
            errs = terms_leave_out(rows, key)
            out.append(_line(table, f"terms: OOS leave-one-{name}-out", errs, tgt))
            for kind in ("prefill", "decode"):
                sub = [e for e, r in zip(errs, rows, strict=True) if r.label.startswith(kind)]
                out.append(_line(table, f"  {kind} rows", sub, tgt))
        return out
    prior, pw = reference_prior(), SARATHI_PRIOR_WEIGHT
    return [_line(table, "terms: fitted, in sample", terms_ape(rows, fit_terms(rows, prior=prior, prior_weight=pw))),
            *kfold_lines(table, rows, "terms: ", lambda key: terms_leave_out(rows, key, prior, pw), tgt),
            _line(table, "terms: OOS leave-one-batch-kind-out", terms_leave_out(
                rows, lambda r: r.label.split(" b")[0], prior, pw), tgt),
            _line(table, "terms: OOS transfer: Splitwise terms", terms_ape(rows, splitwise_terms()), tgt)]


def batch_tables(table: str) -> list[FidelityLine]:
    """Splitwise or Sarathi: per-batch latency errors, in sample and out of sample."""
    from backends.sim.engines import get_engine
    from backends.sim.profiles import ape, fit_efficiency, load_rows

    eng = get_engine("vllm-v0")  # these profiles ran eager prefill-first steps
    rows = list(load_rows(table))
    tgt = "8/15"
    out = [_line(table, "default efficiencies", ape(rows, None, eng)),
           _line(table, "fitted, in sample", ape(rows, fit_efficiency(rows, engine=eng), eng))]
    if table == "splitwise":
        for name, key in (("GPU", lambda r: r.gpu), ("TP", lambda r: r.tp), ("model", lambda r: r.model)):
            errs = leave_out(rows, key, eng)
            out.append(_line(table, f"OOS leave-one-{name}-out", errs, tgt))
            for kind in ("prefill", "decode"):
                sub = [e for e, r in zip(errs, rows, strict=True) if r.label.startswith(kind)]
                out.append(_line(table, f"  {kind} rows", sub, tgt))
    else:
        out += kfold_lines(table, rows, "", lambda key: leave_out(rows, key, eng), tgt)
        out.append(_line(table, "OOS leave-one-batch-kind-out", leave_out(rows, lambda r: r.label.split(" b")[0], eng),
                         tgt))
        train = [r for r in load_rows("splitwise") if r.gpu == "a100-80gb"]
        out.append(_line(table, "OOS transfer: fit Splitwise A100", ape(rows, fit_efficiency(train, engine=eng), eng),
                         tgt))
    return out + terms_lines(table, rows)


def vidur_table() -> list[FidelityLine]:
    """Vidur GEMMs: fitted curves (extrapolation, interpolation) and fitted roofline splits."""
    from backends.sim.profiles import load_rows
    from tuner.calibration.fit import curve_ape, fit_linear_curve
    from tuner.calibration.profile import shared_profile

    df = shared_profile(("vidur",))
    ops = df[df.op != "all_reduce"]
    extra, inter = [], []
    for _, g in ops.groupby(["model", "device", "tp", "op"]):
        g = g.groupby("tokens", as_index=False).time_ms.median().sort_values("tokens")
        n, t = g.tokens.to_numpy(), g.time_ms.to_numpy() / 1e3
        lo = n <= 512
        if lo.sum() >= 4 and (~lo).any():
            extra += list(curve_ape(fit_linear_curve(n[lo], t[lo]), n[~lo], t[~lo]))
        even = np.arange(n.size) % 2 == 0
        inter += list(curve_ape(fit_linear_curve(n[even], t[even]), n[~even], t[~even]))
    out = [_line("vidur", "curves: OOS odd token counts", inter, "8/15"),
           _line("vidur", "curves: OOS extrapolate n>512 from n<=512", extra, "8/15")]
    rows = list(load_rows("vidur_mlp"))[::3]
    for hbm, tag in (("simulator", ""), ("datasheet", " (datasheet HBM)")):
        for name, key in (("TP", lambda r: r.tp), ("model", lambda r: r.model), ("GPU", lambda r: r.gpu)):
            out.append(_line("vidur", f"roofline{tag}: OOS leave-one-{name}-out", leave_out(rows, key, hbm=hbm), "8/15"))
        out += residual_lines(rows, hbm, tag)
    ar = list(load_rows("vidur_allreduce"))
    out.append(_line("vidur", "all-reduce: OOS leave-one-GPU-count-out", leave_out(ar, lambda r: r.tp)))
    return out


def residual_lines(rows: Sequence, hbm: str = "simulator", tag: str = "") -> list[FidelityLine]:
    """The roofline times the learned residual (``residual_leave_out``) on Vidur GEMM rows:
    leave one TP degree / model / GPU out; ``tag`` is appended to the evaluation's name."""
    splits = (("TP", lambda r: r.tp), ("model", lambda r: r.model), ("GPU", lambda r: r.gpu))
    return [_line("vidur", f"roofline + residual{tag}: OOS leave-one-{name}-out",
                  residual_leave_out(rows, key, hbm=hbm), "8/15") for name, key in splits]


def trainval_table(path=None, *, duration_scale: float = 0.15, max_nfev: int = 15,
                   log: Callable[[str], None] | None = None) -> tuple[list[FidelityLine], list[tuple]]:
    """Leave-one-model-out engine fit on the real vLLM runs; also the in-sample fit. Returns the
    lines and per-run rows (label, measured ttft/e2e/tpot, OOS signed errors %, in-sample errors %)."""
    from tuner.calibration.engine_fit import fit_engine, leave_one_out, simulate_run
    from tuner.calibration.trainval import TRAINVAL_CSV, load_runs

    runs = load_runs(path or TRAINVAL_CSV)
    lines = no_refit_lines(runs, new=path is not None and Path(path).resolve() != Path(TRAINVAL_CSV).resolve(), log=log)
    kw = {"duration_scale": duration_scale, "max_nfev": max_nfev}
    full = fit_engine(runs, **kw)
    ins = [simulate_run(r, full).errors() for r in runs]
    oos_pred, _ = leave_one_out(runs, **kw)
    oos = [p.errors() for p in oos_pred]
    for i, (name, tgt) in enumerate((("ttft", 15.0), ("e2e", 7.0), ("tpot", 7.0))):
        lines.append(_line("trainval", f"{name.upper()} mean, fitted in sample", [e[i] for e in ins]))
        lines.append(_line("trainval", f"{name.upper()} mean, OOS leave-one-model-out", [e[i] for e in oos],
                           f"{tgt:g}/1000"))
    per_run = [(r.run_id, r.label, r.ttft_ms, r.e2e_ms, r.tpot_ms, *o, *s) for r, o, s in zip(runs, oos, ins, strict=True)]
    if log:
        log(f"trainval full fit: {full.to_dict()}")
    return lines, per_run


def no_refit_lines(runs: Sequence, *, new: bool, log: Callable[[str], None] | None = None) -> list[FidelityLine]:
    """Errors of the mean TTFT / E2E / TPOT of ``runs`` predicted WITHOUT refitting: by the default
    simulator (``servetune simulate``: default efficiencies, the vllm-v1 preset and its client
    lag) and by the calibration stored from the bundled trainval runs
    (``engine_fit.engine_calibration("vllm-v1", "h100")``). Out of sample when ``runs`` are ``new``
    (not the runs those numbers were fitted on), in sample otherwise."""
    from tuner.calibration.engine_fit import EngineCalibration, engine_calibration, simulate_run

    tag = "no refit, new runs" if new else "no refit, in sample"
    cals = [("default sim", EngineCalibration.simulator_default())]
    stored = engine_calibration("vllm-v1", "h100")
    if stored is not None:
        cals.append(("stored H100 fit", stored))
    out = []
    for name, cal in cals:
        errs = [simulate_run(r, cal).errors() for r in runs]
        if log:
            log(f"{name} ({tag}), signed errors % TTFT / E2E / TPOT: "
                + "; ".join(f"{r.run_id} {t:+.1f}/{e:+.1f}/{p:+.1f}" for r, (t, e, p) in zip(runs, errs, strict=True)))
        for i, (metric, tgt) in enumerate((("ttft", 15.0), ("e2e", 7.0), ("tpot", 7.0))):
            out.append(_line("trainval", f"{metric.upper()} mean, {name} ({tag})", [e[i] for e in errs],
                             f"{tgt:g}/1000" if new else ""))
    return out


def format_lines(lines: Sequence[FidelityLine]) -> str:
    head = f"{'table':10s} {'evaluation':56s} {'n':>5s} {'median %':>9s} {'p90 %':>7s}  target (med/p90)"
    out = [head, "-" * len(head)]
    for ln in lines:
        mark = "" if ln.met is None else (" met" if ln.met else " MISSED")
        tgt = ln.target.replace("/1000", " (median)") if ln.target else ""
        out.append(f"{ln.table:10s} {ln.evaluation:56s} {ln.n:5d} {ln.median:9.1f} {ln.p90:7.1f}  {tgt}{mark}")
    return "\n".join(out)


def missed_summary(lines: Sequence[FidelityLine]) -> str:
    """One line naming every evaluation that missed its target ("" when none did); an indented
    per-kind line ("  prefill rows") is named with the evaluation above it."""
    names, parent = [], ""
    for ln in lines:
        ev = ln.evaluation.strip()
        if not ln.evaluation.startswith(" "):
            parent = ev
        elif parent:
            ev = f"{parent}, {ev}"
        if ln.met is False:
            names.append(f"{ln.table} {ev}")
    return f"targets missed on {len(names)} line(s): " + "; ".join(names) if names else ""


def fidelity(table: str = "all", *, trainval_path=None, log: Callable[[str], None] = print) -> list[FidelityLine]:
    """Every requested table's lines (``table``: all or one of ``TABLES``)."""
    if table != "all" and table not in TABLES:
        raise ValueError(f"--table {table!r}: choose all or one of {', '.join(TABLES)}")
    tables = TABLES if table == "all" else (table,)
    lines: list[FidelityLine] = []
    for t in tables:
        if t in ("splitwise", "sarathi"):
            lines += batch_tables(t)
        elif t == "vidur":
            lines += vidur_table()
        else:
            from tuner.calibration.trainval import TRAINVAL_CSV

            if table == "all" and trainval_path is None and not TRAINVAL_CSV.is_file():
                log(f"trainval: skipped ({TRAINVAL_CSV} not found; the real vLLM runs are not bundled: "
                    "give --runs FILE or set SERVETUNE_TRAINVAL_CSV)")
                continue
            ls, per_run = trainval_table(trainval_path, log=log)
            lines += ls
            log(format_trainval(per_run))
    return lines


def format_trainval(per_run: Sequence[tuple]) -> str:
    head = (f"{'run':>4s} {'model / tp / workload':40s} {'TTFT ms':>8s} {'E2E ms':>8s} {'TPOT ms':>8s}   "
            f"{'OOS err % TTFT/E2E/TPOT':>24s}   {'in-sample % TTFT/E2E/TPOT':>26s}")
    out = [head]
    for rid, lab, t, e, p, ot, oe, op, it, ie, ip in per_run:
        out.append(f"{rid:>4s} {lab:40s} {t:8.1f} {e:8.0f} {p:8.2f}   {ot:+7.1f} {oe:+7.1f} {op:+7.1f}   "
                   f"{it:+8.1f} {ie:+7.1f} {ip:+7.1f}")
    return "\n".join(out)


__all__ = ["TABLES", "FidelityLine", "batch_tables", "fidelity", "format_lines", "format_trainval", "held_out", "missed_summary",
           "kfold_lines", "leave_out", "residual_leave_out", "residual_lines", "stats", "terms_leave_out", "terms_lines",
           "no_refit_lines", "trainval_table", "vidur_table"]
