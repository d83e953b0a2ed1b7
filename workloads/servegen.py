"""Workloads generated from ServeGen's per-client fits (Alibaba Bailian, arXiv 2505.09999).

ServeGen publishes, per client ("chunk"), one row per 600 s window over 24 h:
``window_start_s, rate (req/s), cv, iat distribution (Gamma | Weibull | empty), shape, scale``
and, per 6 h window, value→probability tables of input/output tokens written as
Python-literal strings (parsed with ``ast.literal_eval``, never ``eval``).

A workload is generated for chosen clients over ``[start_s, start_s + duration_s)`` of the day:
in each 600 s window a client's inter-arrival times follow the fitted distribution rescaled
so its mean is ``1 / rate`` (the shape, hence the CV, is kept; an empty distribution with a
positive rate is Poisson). Prompt and output lengths are drawn independently from the client's
tables for the 6 h window holding the 600 s window (for multimodal: text + image + audio +
video tokens). Client c draws from ``np.random.default_rng([seed, c])``, so adding or dropping
a client leaves the others' requests unchanged. Arrivals are seconds from ``start_s``.
"""

from __future__ import annotations

import ast
import io
import json
import tarfile
from functools import lru_cache

import numpy as np

from workloads.traces import bundled_bytes
from workloads.workload import Workload

ARCHIVES = {
    "reason": "servegen_reason_deepseek-r1.tar.xz",
    "mm": "servegen_multimodal_mm-image.tar.xz",
}
DAY_S = 86400
PROMPT_FIELDS = ("input_tokens", "text_tokens", "image_tokens", "audio_tokens", "video_tokens")
MAX_REQUESTS = 5_000_000


def _category(category: str) -> str:
    cat = {"reason": "reason", "servegen-reason": "reason", "mm": "mm", "servegen-mm": "mm", "multimodal": "mm"}
    if category not in cat:
        raise ValueError(f"servegen category {category!r}: expected 'reason' or 'mm'")
    return cat[category]


@lru_cache(maxsize=2)
def _members(category: str) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(bundled_bytes(ARCHIVES[category])), mode="r:") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def servegen_member(category: str, name: str) -> bytes:
    """Original bytes of one ServeGen file, e.g. ``servegen_member("reason", "chunk-0-trace.csv")``."""
    return _members(_category(category))[name]


def servegen_clients(category: str) -> tuple[int, ...]:
    """Client (chunk) ids available in a category, ascending."""
    cat = _category(category)
    ids = {int(n.split("-")[1]) for n in _members(cat) if n.endswith("-trace.csv")}
    return tuple(sorted(ids))


@lru_cache(maxsize=256)
def client_windows(category: str, client: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...], np.ndarray, np.ndarray]:
    """A client's 600 s windows: (start_s, rate req/s, cv, dist names, shape, scale)."""
    cat = _category(category)
    rows = servegen_member(cat, f"chunk-{client}-trace.csv").decode().splitlines()
    start, rate, cv, dist, p1, p2 = [], [], [], [], [], []
    for k, line in enumerate(rows, 1):
        f = line.strip().split(",")
        if len(f) != 6:
            raise ValueError(f"servegen {cat} chunk-{client}-trace.csv line {k}: expected 6 fields, got {len(f)}")
        start.append(float(f[0]))
        rate.append(float(f[1]))
        cv.append(float(f[2]))
        dist.append(f[3])
        p1.append(float(f[4]))
        p2.append(float(f[5]))
    return np.array(start), np.array(rate), np.array(cv), tuple(dist), np.array(p1), np.array(p2)


@lru_cache(maxsize=1024)
def client_table(category: str, client: int, window: int, field: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(values, probabilities) of one length table for the 6 h window starting at ``window`` s."""
    cat = _category(category)
    ds = _dataset(cat, client)
    text = ds.get(str(window), {}).get(field)
    if text is None:
        return None
    pmf = ast.literal_eval(text)
    if not isinstance(pmf, dict) or not pmf:
        return None
    vals = np.fromiter(pmf.keys(), np.float64, len(pmf))
    probs = np.fromiter(pmf.values(), np.float64, len(pmf))
    if probs.sum() <= 0:
        return None
    return vals, probs / probs.sum()


@lru_cache(maxsize=256)
def _dataset(category: str, client: int) -> dict:
    return json.loads(servegen_member(category, f"chunk-{client}-dataset.json"))


def _dataset_window(category: str, client: int, t: float) -> int | None:
    """The 6 h table window for time t: the latest non-empty one starting at or before t, else the
    earliest non-empty one (ServeGen skips windows whose tables are empty, ``{}``)."""
    ds = _dataset(category, client)
    keys = sorted(int(k) for k, v in ds.items() if v.get("output_tokens", "{}").strip() != "{}")
    if not keys:
        return None
    before = [k for k in keys if k <= t]
    return before[-1] if before else keys[0]


def _iats(rng: np.random.Generator, dist: str, shape: float, scale: float, rate: float, n: int) -> np.ndarray:
    """n inter-arrival times (s) with the fitted shape, rescaled to mean 1/rate."""
    if dist == "Gamma" and shape > 0 and scale > 0:
        x = rng.gamma(shape, 1.0, n)
        mean = shape
    elif dist == "Weibull" and shape > 0 and scale > 0:
        from math import gamma

        x = rng.weibull(shape, n)
        mean = gamma(1.0 + 1.0 / shape)
    else:
        x = rng.exponential(1.0, n)
        mean = 1.0
    return x * (1.0 / (rate * mean))


def _client_arrivals(category: str, client: int, t0: float, t1: float, rng: np.random.Generator) -> np.ndarray:
    start, rate, _cv, dist, p1, p2 = client_windows(category, client)
    out = []
    for i in np.flatnonzero((start < t1) & (start + 600 > t0) & (rate > 0)):
        ws, we = max(start[i], t0), min(start[i] + 600.0, t1)
        need = int(rate[i] * (we - ws) * 1.5) + 20
        gaps = _iats(rng, dist[i], p1[i], p2[i], rate[i], need)
        t = ws + rng.uniform() * gaps[0] + np.cumsum(np.r_[0.0, gaps[1:]])
        while t[-1] < we:
            more = _iats(rng, dist[i], p1[i], p2[i], rate[i], need)
            t = np.r_[t, t[-1] + np.cumsum(more)]
        out.append(t[t < we])
    return np.concatenate(out) if out else np.empty(0)


def _sample(rng: np.random.Generator, table: tuple[np.ndarray, np.ndarray] | None, n: int) -> np.ndarray:
    if table is None:
        return np.zeros(n)
    vals, probs = table
    return vals[rng.choice(len(vals), size=n, p=probs)]


def client_volume(category: str, client: int, t0: float, t1: float) -> float:
    """Expected requests of a client in [t0, t1) from its fitted rates."""
    start, rate, *_ = client_windows(category, client)
    overlap = np.clip(np.minimum(start + 600, t1) - np.maximum(start, t0), 0, None)
    return float((rate * overlap).sum())


def load_servegen(
    category: str = "reason",
    *,
    clients: list[int] | tuple[int, ...] | None = None,
    top: int | None = None,
    start_s: float = 43200.0,
    duration_s: float = 3600.0,
    seed: int = 0,
) -> Workload:
    """Generate requests from ServeGen client fits.

    category: "reason" (deepseek-r1) or "mm" (mm-image). clients: chunk ids (default all);
    top: keep only the N clients with most expected requests in the window. start_s, duration_s:
    the time of day (s, 0..86400) to reproduce; arrivals are returned relative to start_s.
    """
    cat = _category(category)
    if not (0 <= start_s < DAY_S) or not (0 < duration_s <= DAY_S - start_s):
        raise ValueError(f"servegen window: need 0 <= start_s < {DAY_S} and 0 < duration_s <= {DAY_S} - start_s "
                         f"(got start_s={start_s}, duration_s={duration_s})")
    known = servegen_clients(cat)
    chosen = known if clients is None else tuple(int(c) for c in clients)
    bad = [c for c in chosen if c not in known]
    if bad:
        raise ValueError(f"servegen {cat}: unknown client {bad[0]} (known: {known[0]}..{known[-1]})")
    t0, t1 = float(start_s), float(start_s + duration_s)
    if top is not None:
        if top < 1:
            raise ValueError(f"servegen top={top}: must be >= 1")
        chosen = tuple(sorted(chosen, key=lambda c: (-client_volume(cat, c, t0, t1), c))[:top])
    expected = sum(client_volume(cat, c, t0, t1) for c in chosen)
    if expected > MAX_REQUESTS:
        raise ValueError(f"servegen window holds ~{expected:.0f} requests (> {MAX_REQUESTS}): shorten duration_s")
    arr, prompt, output, tenant = [], [], [], []
    names = []
    for c in chosen:
        rng = np.random.default_rng([seed, c])
        t = _client_arrivals(cat, c, t0, t1, rng)
        if not len(t):
            continue
        p = np.zeros(len(t))
        o = np.zeros(len(t))
        win_start = np.floor(t / 21600) * 21600
        for w in np.unique(win_start):
            sel = win_start == w
            dw = _dataset_window(cat, c, w)
            if dw is None:
                raise ValueError(f"servegen {cat} client {c}: no length tables for its requests")
            for f in PROMPT_FIELDS:
                p[sel] += _sample(rng, client_table(cat, c, dw, f), int(sel.sum()))
            o[sel] = _sample(rng, client_table(cat, c, dw, "output_tokens"), int(sel.sum()))
        arr.append(t - t0)
        prompt.append(np.maximum(p, 1))
        output.append(np.maximum(o, 1))
        tenant.append(np.full(len(t), len(names)))
        names.append(f"client-{c}")
    if not names:
        raise ValueError(f"servegen {cat}: the chosen clients have no requests in [{t0:g}, {t1:g}) s")
    a = np.concatenate(arr)
    order = np.argsort(a, kind="stable")
    out = np.concatenate(output)[order].astype(np.int32)
    return Workload(
        name=f"servegen-{cat}",
        arrival_s=a[order],
        prompt_len=np.concatenate(prompt)[order].astype(np.int32),
        output_len=out,
        max_output=out,
        tenant=np.concatenate(tenant)[order],
        priority=np.zeros(len(a), np.int32),
        slo_class=np.zeros(len(a), np.int32),
        tenants=tuple(names),
        meta={"source": f"ServeGen {cat} client fits, day window [{t0:g}, {t1:g}) s, seed {seed}",
              "licence": "Apache-2.0"},
    )
