"""Multi-fidelity: re-run a simulated study's top K policies on another backend (a live engine).

``servetune tune STUDY --verify-top K --verify-backend vllm`` runs the study on the simulator,
then each of the K best trials (single objective: by value, feasible first; several
objectives: the Pareto front) on the verify backend with the same workload and seed. Each
verification is one MLflow run under the study's parent run (tag ``servetune.verify``), holding
the simulated and the measured scorecards side by side: ``sim.<metric>``, ``live.<metric>`` and
``err_pct.<metric>`` = (simulated − measured) / measured × 100. A verification whose engine fails
is logged with its reason and the others go on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tuner.evaluate import Evaluator, Timings
from tuner.scorecard import Scorecard, score
from tuner.tracking import EXPERIMENT_ATTR, PARENT_ATTR, Tracker

COMPARED = ("ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p95_ms", "itl_p50_ms", "itl_p99_ms", "e2e_p50_ms",
            "e2e_p99_ms", "throughput_tok_s", "goodput_tok_s", "slo_attainment")


@dataclass(frozen=True, slots=True)
class Verification:
    """One trial re-run on the verify backend: both scorecards (None where the run failed)."""

    trial: int
    sim: Scorecard | None
    live: Scorecard | None
    error: str = ""

    def err_pct(self) -> dict[str, float]:
        """(simulated − measured) / measured, %, for each compared metric that both define."""
        out: dict[str, float] = {}
        if self.sim is None or self.live is None:
            return out
        for k in COMPARED:
            s, m = getattr(self.sim, k), getattr(self.live, k)
            if math.isfinite(s) and math.isfinite(m) and m != 0:
                out[k] = (s - m) / abs(m) * 100.0
        return out


def top_trials(best: list[Any], study: Any, spec: Any, k: int) -> list[Any]:
    """The K trials to verify: the best/Pareto trials first, then the next best by value."""
    from optuna.trial import TrialState

    chosen = list(best[:k])
    if len(chosen) < k and not spec.multi_objective:
        sign = -1 if spec.objectives[0].direction == "maximize" else 1
        rest = sorted((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                       if t.values and math.isfinite(t.values[0]) and t.number not in {c.number for c in chosen}),
                      key=lambda t: (sign * t.values[0], t.number))
        chosen += rest[: k - len(chosen)]
    return chosen


def verify_top(res: Any, opts: Any, k: int, verify_backend: Any, sim_backend: Any) -> list[Verification]:
    """Run the top ``k`` trials of a finished study on ``verify_backend`` and log both scorecards."""
    from tuner.tune import replay

    spec, study = res.spec, res.study
    tracker = Tracker(opts.mlflow_uri)
    exp, parent = study.user_attrs.get(EXPERIMENT_ATTR), study.user_attrs.get(PARENT_ATTR)
    ev_sim = Evaluator(spec, sim_backend, seed=opts.seed)
    ev_live = Evaluator(spec, verify_backend, seed=opts.seed, workload=ev_sim.workload)
    out: list[Verification] = []
    name = getattr(verify_backend, "name", "live")
    for t in top_trials(res.best, study, spec, k):
        sim_result, w = replay(ev_sim, spec, t)
        sim_sc = score(sim_result, w)
        try:
            live_result, live_sc = ev_live.run(sim_result.policy, w, Timings())
            v = Verification(t.number, sim_sc, live_sc)
        except ValueError as e:  # EngineError and bad flags are ValueErrors: log, go on
            live_result, v = None, Verification(t.number, sim_sc, None, str(e).splitlines()[0] if str(e) else "failed")
        out.append(v)
        if exp and parent:
            metrics = {f"sim.{m}": getattr(sim_sc, m) for m in COMPARED}
            if v.live is not None:
                metrics.update({f"live.{m}": getattr(v.live, m) for m in COMPARED})
            metrics.update({f"err_pct.{m}": e for m, e in v.err_pct().items()})
            params = (live_result.policy if live_result is not None else sim_result.policy).to_dict()
            tags = {"servetune.verify": name, "servetune.backend": name, "servetune.verifies_trial": str(t.number),
                    "optuna.trial": f"verify-{t.number}"}
            if v.error:
                tags["servetune.error"] = v.error
            tracker.log_trial(exp, parent, t.number, params=params, metrics=metrics, tags=tags,
                              status="FAILED" if v.error else "FINISHED", run_name=f"verify-{t.number:04d}")
    return out


def print_verifications(vs: list[Verification], backend: str, echo: Any) -> None:
    """A table: per verified trial, simulated vs measured TTFT p50, TPOT p50, throughput."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"simulator vs {backend}: top {len(vs)} trial(s)")
    for col in ("trial", "TTFT p50 ms sim/live", "TPOT p50 ms sim/live", "tok/s sim/live", "error"):
        table.add_column(col)

    def pair(v: Verification, m: str) -> str:
        s = getattr(v.sim, m) if v.sim else float("nan")
        live = getattr(v.live, m) if v.live else float("nan")
        e = v.err_pct().get(m)
        return f"{s:.4g} / {live:.4g}" + (f" ({e:+.0f}%)" if e is not None else "")

    for v in vs:
        table.add_row(str(v.trial), pair(v, "ttft_p50_ms"), pair(v, "tpot_p50_ms"), pair(v, "throughput_tok_s"),
                      v.error or "-")
    Console().print(table)
