"""``servetune report``: one self-contained HTML page about a study, plus PNGs, logged to MLflow.

Sections: Pareto front (several objectives) or best-so-far; optimisation history; knob
importances (fANOVA via ``optuna.importance``; with too few trials the section says so);
TTFT/TPOT CDFs of the best policy against the defaults (both re-simulated on the study
workload); a scorecard table; the cost model used. Interactive charts are plotly (its JS is
inlined once); static PNGs are drawn with matplotlib (kaleido is not needed).
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from tuner.evaluate import Evaluator
from tuner.study_spec import StudySpec
from tuner.tune import best_trials, default_trial, gain_pct, replay

TABLE_METRICS = ("goodput_tok_s", "goodput_frac", "slo_attainment", "throughput_tok_s", "ttft_p50_ms", "ttft_p99_ms",
                 "tpot_p50_ms", "tpot_p95_ms", "itl_p99_ms", "e2e_p99_ms", "usd_per_1m_tokens", "max_service_diff", "jain_index",
                 "preemptions", "n_rejected", "kv_util_peak", "mean_batch_size")
SESSION_METRICS = ("followup_ttft_p50_ms", "followup_ttft_p90_ms", "followup_cached_frac")
"""Shown when the workload has multi-turn sessions (NaN otherwise)."""
MIN_TRIALS_FOR_IMPORTANCE = 4


def _session_metrics(runs: dict) -> tuple[str, ...]:
    """``SESSION_METRICS`` when some scorecard of ``runs`` has them (a multi-turn workload)."""
    return SESSION_METRICS if any(sc.has_followups for _, sc in runs.values()) else ()


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def importances(study: Any, spec: StudySpec) -> tuple[dict[str, float], str]:
    """Knob importances for the first objective (fANOVA), or ({}, why not)."""
    import optuna
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values and all(math.isfinite(v) for v in t.values)]
    if len(done) < MIN_TRIALS_FOR_IMPORTANCE:
        return {}, f"only {len(done)} completed trials (importances need at least {MIN_TRIALS_FOR_IMPORTANCE})"
    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0, n_trees=32),
            target=(lambda t: t.values[0]) if spec.multi_objective else None)
    except (RuntimeError, ValueError) as e:
        return {}, f"not computable: {str(e).splitlines()[0]}"
    return dict(imp), ""


def _cost_statement(result: Any, spec: StudySpec) -> str:
    meta = dict(getattr(result, "meta", {}) or {})
    parts = []
    if result.backend == "sim":  # the cost model in force and its measured error on this GPU
        from tuner.calibration.summary import fidelity_summary

        d = spec.deployment
        try:
            parts.append(fidelity_summary(d.model, d.gpu, result.policy.tp, engine=d.engine, profile=d.profile,
                                          weight_dtype=d.weight_dtype, kv_dtype=d.kv_dtype, cost_model=d.cost_model))
        except (OSError, ValueError) as e:
            parts.append(f"{meta.get('cost_model', 'cost model unknown')} (its measured error: not available, {e})")
    elif meta.get("cost_model"):
        parts.append(str(meta["cost_model"]))
    try:
        from backends.sim.catalog import get_gpu

        g = get_gpu(spec.deployment.gpu)
        parts.append(f"$/1M output tokens = GPU-hours x price / output tokens, at the catalog price of {g.name}: "
                     f"${g.price_hour:.2f}/GPU-hour on demand, ${g.spot_price_hour:.2f} spot")
    except (ImportError, ValueError):
        pass
    parts.append(f"iteration times from the {result.backend} backend"
                 + (f" (engine preset {meta['engine']})" if meta.get("engine") else ""))
    return "; ".join(parts)


def write_report(spec: StudySpec, study: Any, out_dir: Path, *, backend: str = "sim",
                 mlflow_uri: str | None = None, backend_obj: Any = None) -> Path:
    """Write ``out_dir/report.html`` (+ PNGs) and log them to the study's MLflow parent run."""
    import plotly.graph_objects as go
    from optuna.trial import TrialState

    from backends.registry import get_backend
    from tuner.plots import history_png, latency_cdf_png, pareto_png
    from tuner.scorecard import score

    out_dir.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values and all(math.isfinite(v) for v in t.values)]
    best, feasible = best_trials(spec, study)
    default = default_trial(study)
    names = [o.name for o in spec.objectives]
    sections: list[str] = []
    figs: list[str] = []
    pngs: list[Path] = []

    def fig_html(fig: Any) -> str:
        figs.append("x")
        return fig.to_html(full_html=False, include_plotlyjs="inline" if len(figs) == 1 else False)

    # ---- front / history
    if done:
        nums = [t.number for t in done]
        if spec.multi_objective:
            front = {t.number for t in best}
            fig = go.Figure()
            fig.add_scatter(x=[t.values[0] for t in done], y=[t.values[1] for t in done], mode="markers", name="trials",
                            text=[f"trial {n}" for n in nums])
            fig.add_scatter(x=[t.values[0] for t in best], y=[t.values[1] for t in best], mode="markers",
                            marker={"size": 11, "color": "crimson"}, name="Pareto front (feasible)",
                            text=[f"trial {t.number}" for t in best])
            fig.update_layout(xaxis_title=names[0], yaxis_title=names[1], height=420)
            pngs.append(pareto_png([t.values[:2] for t in done], [t.values[:2] for t in best] or [[math.nan] * 2],
                                   names[:2], out_dir / "pareto.png"))
            sections.append(f"<h2>Pareto front</h2><p>{len(front)} feasible Pareto trials: "
                            f"{', '.join(map(str, sorted(front)))}</p>" + fig_html(fig))
        o = spec.objectives[0]
        v = [t.values[0] for t in done]
        run = []
        for x in v:
            run.append(x if not run else (max(run[-1], x) if o.direction == "maximize" else min(run[-1], x)))
        fig = go.Figure()
        fig.add_scatter(x=nums, y=v, mode="markers", name=o.name)
        fig.add_scatter(x=nums, y=run, mode="lines", line={"shape": "hv"}, name="best so far")
        fig.update_layout(xaxis_title="trial", yaxis_title=o.name, height=380)
        pngs.append(history_png(nums, v, o.direction, out_dir / "history.png", o.name))
        sections.append("<h2>Optimisation history</h2>" + fig_html(fig))
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1

    # ---- importances
    imp, why = importances(study, spec)
    if imp:
        fig = go.Figure(go.Bar(x=list(imp.values())[::-1], y=list(imp)[::-1], orientation="h"))
        fig.update_layout(xaxis_title=f"importance for {names[0]} (fANOVA)", height=120 + 28 * len(imp))
        sections.append("<h2>Knob importances</h2>" + fig_html(fig))
    else:
        sections.append(f"<h2>Knob importances</h2><p>Not shown: {html.escape(why)}.</p>")

    # ---- CDFs + scorecards (re-simulated)
    cost = ""
    if best:
        ev = Evaluator(spec, backend_obj or get_backend(backend))
        chosen = best[0] if not spec.multi_objective else max(
            best, key=lambda t: (t.values[0] if spec.objectives[0].direction == "maximize" else -t.values[0]))
        runs = {}
        for label, t in ((f"best (trial {chosen.number})", chosen), ("default (trial "
                         f"{default.number})" if default is not None else "", default)):
            if t is None:
                continue
            result, w = replay(ev, spec, t)
            runs[label] = (result, score(result, w))
        png = latency_cdf_png({k: r for k, (r, _) in runs.items()}, out_dir / "latency_cdf.png",
                              title=f"{spec.name}: TTFT / TPOT / ITL CDFs")
        pngs.append(png)
        sections.append("<h2>Latency CDFs: best vs default</h2>" + _img(png))
        head = "".join(f"<th>{html.escape(k)}</th>" for k in runs)
        rows = "".join(f"<tr><td>{m}</td>" + "".join(f"<td>{getattr(sc, m):.4g}</td>" for _, sc in runs.values())
                       + "</tr>" for m in TABLE_METRICS + _session_metrics(runs))
        sections.append(f"<h2>Scorecards</h2><table><tr><th>metric</th>{head}</tr>{rows}</table>")
        sections.append(_tenant_section({k: r for k, (r, _) in runs.items()}))
        cost = _cost_statement(next(iter(runs.values()))[0], spec)
    summary = _summary_table(spec, best, default, feasible)
    d = spec.deployment
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>servetune report: {html.escape(spec.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}</style></head><body>
<h1>servetune study {html.escape(spec.name)}</h1>
<p>{html.escape(spec.description)}</p>
<p>Deployment: {html.escape(d.model)} on {d.n_gpus}x {html.escape(d.gpu)}, engine {html.escape(d.engine)}.
Objectives: {html.escape(', '.join(f'{o.name} ({o.direction})' for o in spec.objectives))}.
Constraints: {html.escape(', '.join(c.name for c in spec.constraints) or 'none')}.
Trials: {html.escape(', '.join(f'{k} {v}' for k, v in sorted(states.items())))}. Sampler: {spec.sampler}.</p>
<p>Cost model: {html.escape(cost or 'n/a')}.</p>
{summary}
{''.join(sections)}
</body></html>"""
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    _log_to_mlflow(study, [path, *pngs], mlflow_uri)
    return path


def _tenant_section(results: dict[str, Any]) -> str:
    """Per-tenant service and latency of each run side by side; empty for a one-tenant workload."""
    from tuner.tenants import n_tenants, tenant_table

    if not results or n_tenants(next(iter(results.values())).records) < 2:
        return ""
    cols = ("service_share", "ttft_p99_ms", "tpot_p99_ms", "slo_attainment")
    tables = {label: tenant_table(r.records).set_index("tenant") for label, r in results.items()}
    head = "".join(f"<th>{html.escape(label)}: {c}</th>" for label in tables for c in cols)
    names = sorted(set().union(*(t.index for t in tables.values())), key=str)
    body = "".join(
        f"<tr><td>{html.escape(str(n))}</td><td>{int(next(iter(tables.values())).loc[n, 'requests'])}</td>"
        + "".join(f"<td>{t.loc[n, c]:.3g}</td>" if n in t.index else "<td></td>" for t in tables.values() for c in cols)
        + "</tr>" for n in names)
    return ("<h2>Per tenant</h2><p>Service share: the tenant's fraction of the weighted tokens served "
            "(1 &times; prompt + 2 &times; output). Latencies are p99 of its completed requests (ms); SLO "
            "attainment is the fraction of its requests served within both targets.</p>"
            f"<table><tr><th>tenant</th><th>requests</th>{head}</tr>{body}</table>")


def _summary_table(spec: StudySpec, best: list[Any], default: Any, feasible: bool) -> str:
    if not best:
        return "<p>No completed trial yet.</p>"
    from tuner.tune import trial_policy

    head = "".join(f"<th>{html.escape(o.name)}</th><th>gain</th>" for o in spec.objectives) + "<th>knobs changed</th>"
    base = spec.base_policy()
    rows = []
    for t in ([default] if default is not None else []) + [t for t in best if default is None or t.number != default.number]:
        cells = ""
        for i, o in enumerate(spec.objectives):
            g = gain_pct(t.values[i], default.values[i], o.direction) if default is not None else math.nan
            cells += f"<td>{t.values[i]:.4g}</td><td>{'' if math.isnan(g) else f'{g:+.1f}%'}</td>"
        label = f"{t.number}{' (default)' if default is not None and t.number == default.number else ''}"
        diff = trial_policy(spec, t).diff(base)
        knobs = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in diff.items()) or "-"
        rows.append(f"<tr><td>{label}</td>{cells}<td style='text-align:left'>{html.escape(knobs)}</td></tr>")
    note = "" if feasible else "<p><b>No trial met the constraints.</b></p>"
    return f"<h2>Best vs default</h2>{note}<table><tr><th>trial</th>{head}</tr>{''.join(rows)}</table>"


def _log_to_mlflow(study: Any, paths: list[Path], mlflow_uri: str | None) -> None:
    from tuner.tracking import PARENT_ATTR, Tracker

    run_id = study.user_attrs.get(PARENT_ATTR)
    if run_id:
        Tracker(mlflow_uri).log_artifacts(run_id, paths, "report")
