"""Client-visible latency that the engine loop does not model, added to a run's records.

vLLM V1 schedules step N+1 while step N runs (async scheduling) and returns step N's tokens
while N+1 runs, so a new request waits about one more step to be scheduled and its tokens reach
the client about a step after the engine samples them. Measured on 13 real vLLM v0.15.1 runs
on H100 (docs/calibration.md, "Real vLLM runs"): the client's TTFT is ~3 step times where one
prefill step of a cached prompt is ~1; the fitted lag is 1.59 steps (1.1-1.8 across the
leave-one-model-out folds). ``EnginePreset.client_lag_steps`` carries it per engine; ``simulate``
and the cluster simulator add it to every request's first-token and finish times.
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
    return with_client_lag(res, preset.client_lag_steps, source=f"{preset.name}: async scheduling + streaming")


__all__ = ["engine_client_lag", "with_client_lag"]
