"""Client-visible latency that the engine loop does not model, added to a run's records.

vLLM V1's async scheduling (step N+1 is planned when step N starts, so an arrival waits for the
step in flight and one more) is modelled in the engine loop (``EnginePreset.schedule_ahead``).
What is left between the engine sampling a token and the client seeing it (output processing,
detokenisation and streaming in the API server process, HTTP) is added here. Measured on 13 real
vLLM v0.15.1 runs on H100 (docs/calibration.md, "Real vLLM runs"): 0.64 steps fitted (1.59
before the scheduling step was modelled). ``EnginePreset.client_lag_steps`` carries it per
engine; ``simulate`` and the cluster simulator add it to every request's first-token and finish
times.
"""

from __future__ import annotations

from dataclasses import replace

from backends.base import RunResult


def with_client_lag(res: RunResult, lag_steps: float, lag_s: float = 0.0, source: str = "") -> RunResult:
    """``res`` with ``lag_steps`` × the request's own time per output token (≈ the step time
    around it; the run's median for one-token requests) plus ``lag_s`` seconds added to each
    request's first-token and finish times. Scheduling is unchanged: this is what the client
    sees, not what the engine does. ``source`` names where the lag comes from, in the note."""
    if not lag_steps and not lag_s:
        return res
    rec = res.records.copy(deep=False)  # pandas copy-on-write: the columns set below leave res's frame as it was
    gen = rec.output_len.clip(lower=2) - 1
    step = ((rec.finish_s - rec.first_token_s) / gen).where(rec.output_len >= 2)
    step = step.fillna(step.median() if step.notna().any() else 0.0)
    rec["first_token_s"] = rec.first_token_s + lag_steps * step + lag_s
    rec["finish_s"] = rec.finish_s + lag_steps * step + lag_s
    note = (f"client lag{f' ({source})' if source else ''}: {lag_steps:.2f} steps + {lag_s * 1e3:.1f} ms added to "
            "first-token/finish times")
    return replace(res, records=rec, notes=(note, *res.notes))


def engine_client_lag(res: RunResult, engine: str) -> RunResult:
    """``res`` with the engine preset's client lag (``EnginePreset.client_lag_steps``)."""
    from backends.sim.engines import get_engine

    preset = get_engine(engine)
    return with_client_lag(res, preset.client_lag_steps, source=f"{preset.name}: output processing + streaming")


def deployment_lag(deployment) -> tuple[float, float, str]:
    """(steps, seconds, source) of the deployment's client lag: its calibration file's
    (``Deployment.calibration``, ``servetune calibrate --live``: fitted ``lag_steps`` and
    ``lag_s``) when it names one, else the engine preset's."""
    from backends.sim.calibrated import calibration_of
    from backends.sim.engines import get_engine

    cf = calibration_of(deployment)
    if cf is None:
        preset = get_engine(deployment.engine)
        return preset.client_lag_steps, 0.0, f"{preset.name}: output processing + streaming"
    return cf.calibration.lag_steps, cf.calibration.lag_s, f"calibration {cf.label}"


def deployment_client_lag(res: RunResult, deployment) -> RunResult:
    """``res`` with the deployment's client lag (``deployment_lag``)."""
    steps, s, source = deployment_lag(deployment)
    return with_client_lag(res, steps, s, source=source)


__all__ = ["deployment_client_lag", "deployment_lag", "engine_client_lag", "with_client_lag"]
