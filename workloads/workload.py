"""The Workload record: the columnar list of requests a backend must serve.

A workload is stored as numpy columns, never as one Python object per request, so a
million-request trace costs tens of MB. Units: times in seconds from the start of the
workload, lengths in tokens, SLO targets in milliseconds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class SLOClass:
    """A latency tier: a request of this class meets its SLO when TTFT <= ttft_ms and
    TPOT <= tpot_ms (both milliseconds)."""

    name: str
    ttft_ms: float
    tpot_ms: float

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("SLO class needs a name")
        for f in ("ttft_ms", "tpot_ms"):  # 300 and 300.0 are one class (same repr, same content hash)
            v = getattr(self, f)
            if isinstance(v, int | float) and not isinstance(v, bool):
                object.__setattr__(self, f, float(v))
        if not (self.ttft_ms > 0 and self.tpot_ms > 0):
            raise ValueError(f"SLO class {self.name!r}: ttft_ms and tpot_ms must be > 0")


DEFAULT_SLO = SLOClass("default", ttft_ms=2000.0, tpot_ms=100.0)


def _ro(a: np.ndarray, dtype) -> np.ndarray:
    out = np.ascontiguousarray(a, dtype=dtype)
    if out is a:
        out = out.copy()
    out.flags.writeable = False
    return out


@dataclass(frozen=True, slots=True)
class Workload:
    """Requests sorted by arrival.

    Columns (length n, one entry per request):
      arrival_s    float64  arrival time, seconds from the workload start, non-decreasing
      prompt_len   int32    prompt tokens (>= 1)
      output_len   int32    tokens the model will generate (1 <= output_len <= max_output)
      max_output   int32    the request's max_tokens
      tenant       int32    index into ``tenants``
      priority     int32    lower value is served first (vLLM's convention)
      slo_class    int32    index into ``slo_classes``
      adapter      int32    index into ``adapters`` or -1 (no LoRA adapter)
    Prefix blocks (optional, CSR layout): request i's block ids are
      ``prefix_ids[prefix_offsets[i]:prefix_offsets[i+1]]``; each id names
      ``prefix_block_tokens`` prompt tokens; equal ids mean reusable KV.
    Multi-turn sessions (optional):
      parent       int64    row of the session's previous turn (< i), or -1 for a first turn
      think_s      float64  seconds the user thinks after the previous turn's last token
    A later turn (parent >= 0) is sent ``think_s`` after its parent finishes, not before its own
    ``arrival_s`` (the earliest it may be sent: the session's start for a closed loop); its prompt
    holds the whole conversation so far, and the KV its parent computed (prompt and output) is
    its prefix. A turn whose parent is rejected or fails is never sent (the session ends).
    """

    name: str
    arrival_s: np.ndarray
    prompt_len: np.ndarray
    output_len: np.ndarray
    max_output: np.ndarray
    tenant: np.ndarray
    priority: np.ndarray
    slo_class: np.ndarray
    tenants: tuple[str, ...] = ("default",)
    slo_classes: tuple[SLOClass, ...] = (DEFAULT_SLO,)
    adapter: np.ndarray | None = None
    adapters: tuple[str, ...] = ()
    prefix_offsets: np.ndarray | None = None
    prefix_ids: np.ndarray | None = None
    prefix_block_tokens: int = 512
    meta: Mapping[str, str] = field(default_factory=dict)
    parent: np.ndarray | None = None
    think_s: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        cols = {
            "arrival_s": np.float64,
            "prompt_len": np.int32,
            "output_len": np.int32,
            "max_output": np.int32,
            "tenant": np.int32,
            "priority": np.int32,
            "slo_class": np.int32,
        }
        for col, dt in cols.items():
            arr = np.asarray(getattr(self, col))
            if arr.ndim != 1 or len(arr) != n:
                raise ValueError(f"workload column {col!r}: expected {n} values, got shape {arr.shape}")
            object.__setattr__(self, col, _ro(arr, dt))
        adapter = np.full(n, -1, np.int32) if self.adapter is None else self.adapter
        object.__setattr__(self, "adapter", _ro(np.asarray(adapter), np.int32))
        if self.prefix_offsets is not None:
            object.__setattr__(self, "prefix_offsets", _ro(np.asarray(self.prefix_offsets), np.int64))
            object.__setattr__(self, "prefix_ids", _ro(np.asarray(self.prefix_ids), np.int64))
        if self.parent is None and self.think_s is not None:
            raise ValueError("think_s needs the parent column (multi-turn sessions)")
        if self.parent is not None:
            for col, dt in (("parent", np.int64), ("think_s", np.float64)):
                arr = np.asarray(np.zeros(n) if col == "think_s" and self.think_s is None else getattr(self, col))
                if arr.ndim != 1 or len(arr) != n:
                    raise ValueError(f"workload column {col!r}: expected {n} values, got shape {arr.shape}")
                object.__setattr__(self, col, _ro(arr, dt))
        object.__setattr__(self, "tenants", tuple(self.tenants))
        object.__setattr__(self, "slo_classes", tuple(self.slo_classes))
        object.__setattr__(self, "adapters", tuple(self.adapters))
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ValueError naming the first bad row and field."""

        def bad(mask: np.ndarray, col: str, why: str) -> None:
            idx = np.flatnonzero(mask)
            if len(idx):
                i = int(idx[0])
                v = getattr(self, col)[i]
                raise ValueError(f"request {i}: {col}={v.item() if isinstance(v, np.generic) else v!r} {why}")

        if self.n and not np.all(np.isfinite(self.arrival_s)):
            bad(~np.isfinite(self.arrival_s), "arrival_s", "is not a finite number")
        bad(self.arrival_s < 0, "arrival_s", "is negative")
        if self.n > 1:
            bad(np.r_[False, np.diff(self.arrival_s) < 0], "arrival_s", "is before the previous arrival (sort by arrival)")
        bad(self.prompt_len < 1, "prompt_len", "must be >= 1")
        bad(self.output_len < 1, "output_len", "must be >= 1")
        bad(self.max_output < self.output_len, "max_output", "is below output_len")
        bad((self.tenant < 0) | (self.tenant >= len(self.tenants)), "tenant", f"is not in 0..{len(self.tenants) - 1}")
        bad(
            (self.slo_class < 0) | (self.slo_class >= len(self.slo_classes)),
            "slo_class",
            f"is not in 0..{len(self.slo_classes) - 1}",
        )
        bad((self.adapter < -1) | (self.adapter >= len(self.adapters)), "adapter", "is not a known adapter")
        if self.prefix_offsets is not None:
            off = self.prefix_offsets
            if self.prefix_ids is None or len(off) != self.n + 1 or off[0] != 0 or off[-1] != len(self.prefix_ids):
                raise ValueError("prefix blocks: offsets must have n+1 entries from 0 to len(prefix_ids)")
            if np.any(np.diff(off) < 0):
                raise ValueError("prefix blocks: offsets must be non-decreasing")
            if self.prefix_block_tokens < 1:
                raise ValueError("prefix_block_tokens must be >= 1")
        if self.parent is not None:
            bad((self.parent < -1) | (self.parent >= np.arange(self.n)), "parent",
                "must be -1 (a first turn) or the row of an earlier request")
            bad(~np.isfinite(self.think_s) | (self.think_s < 0), "think_s", "must be a finite number >= 0")

    # --------------------------------------------------------------- derived
    @property
    def n(self) -> int:
        return len(self.arrival_s)

    def __len__(self) -> int:
        return self.n

    @property
    def has_sessions(self) -> bool:
        """Some request is a later turn of a multi-turn session (sent when its parent finishes)."""
        return self.parent is not None and bool((self.parent >= 0).any())

    @property
    def span_s(self) -> float:
        """Seconds from the first to the last arrival."""
        return float(self.arrival_s[-1] - self.arrival_s[0]) if self.n > 1 else 0.0

    @property
    def rate(self) -> float:
        """Mean arrival rate in requests/s (0 for fewer than two requests)."""
        return (self.n - 1) / self.span_s if self.span_s > 0 else 0.0

    def ttft_slo_ms(self) -> np.ndarray:
        """Per-request TTFT target (ms)."""
        return np.array([c.ttft_ms for c in self.slo_classes])[self.slo_class]

    def tpot_slo_ms(self) -> np.ndarray:
        """Per-request TPOT target (ms)."""
        return np.array([c.tpot_ms for c in self.slo_classes])[self.slo_class]

    def blocks_of(self, i: int) -> np.ndarray:
        """Prefix-block ids of request i (empty when the workload has none)."""
        if self.prefix_offsets is None:
            return np.empty(0, np.int64)
        return self.prefix_ids[self.prefix_offsets[i] : self.prefix_offsets[i + 1]]

    def content_hash(self) -> str:
        """A short stable hash of every column (for MLflow tags and caches)."""
        h = hashlib.sha256()
        for col in ("arrival_s", "prompt_len", "output_len", "max_output", "tenant", "priority", "slo_class", "adapter"):
            h.update(getattr(self, col).tobytes())
        if self.prefix_ids is not None:
            h.update(self.prefix_offsets.tobytes())
            h.update(self.prefix_ids.tobytes())
        if self.parent is not None:
            h.update(self.parent.tobytes())
            h.update(self.think_s.tobytes())  # type: ignore[union-attr]
        h.update(repr((self.tenants, self.slo_classes, self.adapters, self.prefix_block_tokens)).encode())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------ selection
    def take(self, idx: np.ndarray | slice, name: str | None = None) -> Workload:
        """A new workload holding the selected requests (kept in arrival order). A later turn
        whose previous turn is not selected becomes a first turn (sent at its ``arrival_s``)."""
        sel = np.arange(self.n)[idx]
        off = ids = None
        if self.prefix_offsets is not None:
            starts, ends = self.prefix_offsets[sel], self.prefix_offsets[sel + 1]
            lens = ends - starts
            off = np.r_[0, np.cumsum(lens)].astype(np.int64)
            # vectorised CSR gather: position j of request k reads prefix_ids[starts[k] + j]
            src = np.repeat(starts - off[:-1], lens) + np.arange(off[-1], dtype=np.int64)
            ids = self.prefix_ids[src]
        return Workload(
            name=name or self.name,
            arrival_s=self.arrival_s[sel],
            prompt_len=self.prompt_len[sel],
            output_len=self.output_len[sel],
            max_output=self.max_output[sel],
            tenant=self.tenant[sel],
            priority=self.priority[sel],
            slo_class=self.slo_class[sel],
            tenants=self.tenants,
            slo_classes=self.slo_classes,
            adapter=self.adapter[sel],
            adapters=self.adapters,
            prefix_offsets=off,
            prefix_ids=ids,
            prefix_block_tokens=self.prefix_block_tokens,
            meta=dict(self.meta),
            parent=None if self.parent is None else remap_parent(self.parent, sel, self.n),
            think_s=None if self.think_s is None else self.think_s[sel],
        )

    def replace(self, **changes) -> Workload:
        """A copy with some columns or fields replaced (validated again)."""
        kw = {f: getattr(self, f) for f in self.__dataclass_fields__}
        kw.update(changes)
        return Workload(**kw)

    # ------------------------------------------------------------- frames
    def to_frame(self) -> pd.DataFrame:
        """One row per request with readable tenant/SLO names (for Parquet/CSV export)."""
        df = pd.DataFrame(
            {
                "arrival_s": self.arrival_s,
                "prompt_len": self.prompt_len,
                "output_len": self.output_len,
                "max_output": self.max_output,
                "tenant": np.asarray(self.tenants, dtype=object)[self.tenant],
                "priority": self.priority,
                "slo_class": np.asarray([c.name for c in self.slo_classes], dtype=object)[self.slo_class],
            }
        )
        if self.adapters:
            names = np.asarray(("",) + self.adapters, dtype=object)
            df["adapter"] = names[self.adapter + 1]
        if self.prefix_offsets is not None:
            df["prefix_ids"] = [self.blocks_of(i).tolist() for i in range(self.n)]
        if self.parent is not None:
            df["parent"] = self.parent
            df["think_s"] = self.think_s
        return df


MAX_TURNS = 10_000
"""Most turns one conversation may have (deeper chains are taken for a cycle of ``parent``)."""


def arrival_order(arrival: np.ndarray, parent: np.ndarray | None) -> np.ndarray:
    """Rows in arrival order (a stable sort); with sessions (``parent``: the previous turn's row,
    -1 none), a turn comes after its previous turn among equal arrivals (a conversation's later
    turns share its start)."""
    if parent is None:
        return np.argsort(arrival, kind="stable")
    depth = np.zeros(len(arrival), np.int64)
    has, up = parent >= 0, np.maximum(parent, 0)
    for _ in range(MAX_TURNS + 1):
        new = np.where(has, depth[up] + 1, 0)
        if np.array_equal(new, depth):
            return np.lexsort((depth, arrival))  # (stable: by arrival, then turn)
        depth = new
    raise ValueError(f"parent: a conversation of more than {MAX_TURNS:,} turns, or a cycle")


def session_roots(parent: np.ndarray) -> np.ndarray:
    """The row of each row's conversation's first turn (itself for a first turn), from ``parent``
    (the previous turn's row, -1 none; parents come first)."""
    root = np.arange(len(parent))
    for i, p in enumerate(parent.tolist()):
        if p >= 0:
            root[i] = root[p]
    return root


def remap_parent(parent: np.ndarray, sel: np.ndarray, n: int) -> np.ndarray:
    """``parent`` (rows of the previous turn, -1 none) for the rows ``sel`` of a workload of ``n``
    rows, renumbered to positions in ``sel``; -1 where the previous turn is not selected."""
    inv = np.full(n, -1, np.int64)
    inv[sel] = np.arange(len(sel))
    p = parent[sel]
    return np.where(p >= 0, inv[np.maximum(p, 0)], -1)


def build_workload(
    name: str,
    arrival_s: Sequence[float] | np.ndarray,
    prompt_len: Sequence[int] | np.ndarray,
    output_len: Sequence[int] | np.ndarray,
    *,
    max_output: Sequence[int] | np.ndarray | None = None,
    tenant: Sequence[str] | np.ndarray | None = None,
    priority: Sequence[int] | np.ndarray | None = None,
    slo_class: Sequence[str] | np.ndarray | None = None,
    slo_classes: Sequence[SLOClass] = (DEFAULT_SLO,),
    prefix_blocks: Sequence[Sequence[int]] | None = None,
    prefix_block_tokens: int = 512,
    meta: Mapping[str, str] | None = None,
    sort: bool = True,
    parent: Sequence[int] | np.ndarray | None = None,
    think_s: Sequence[float] | np.ndarray | None = None,
) -> Workload:
    """Build a Workload from plain columns; tenant and SLO class given by name.

    Unsorted arrivals are sorted (stably) when ``sort`` is true (``parent`` rows are renumbered).
    """
    arrival = np.asarray(arrival_s, dtype=np.float64)
    n = len(arrival)
    par = None if parent is None else np.asarray(parent, np.int64)
    if par is not None and (len(par) != n or ((par < -1) | (par >= n)).any()):
        raise ValueError(f"parent: expected {n} values in -1..{n - 1}")
    order = arrival_order(arrival, par) if sort else np.arange(n)
    out = np.asarray(output_len, dtype=np.int64)
    mx = out if max_output is None else np.asarray(max_output, dtype=np.int64)
    tenant_names = np.asarray(["default"] * n if tenant is None else tenant, dtype=object).astype(str)
    tenants, tenant_idx = np.unique(tenant_names, return_inverse=True)
    classes = {c.name: i for i, c in enumerate(slo_classes)}
    if slo_class is None:
        slo_idx = np.zeros(n, np.int32)
    else:
        names = np.asarray(slo_class, dtype=object).astype(str)
        unknown = set(names) - set(classes)
        if unknown:
            raise ValueError(f"slo_class: unknown class {str(sorted(unknown)[0])!r} (known: {sorted(classes)})")
        slo_idx = np.array([classes[s] for s in names], np.int32)
    off = ids = None
    if prefix_blocks is not None:
        blocks = [prefix_blocks[i] for i in order]
        off = np.r_[0, np.cumsum([len(b) for b in blocks])].astype(np.int64)
        ids = np.fromiter((x for b in blocks for x in b), dtype=np.int64, count=int(off[-1]))
    return Workload(
        name=name,
        arrival_s=arrival[order],
        prompt_len=np.asarray(prompt_len)[order],
        output_len=out[order],
        max_output=mx[order],
        tenant=tenant_idx[order],
        priority=np.zeros(n, np.int32) if priority is None else np.asarray(priority)[order],
        slo_class=slo_idx[order],
        tenants=tuple(str(t) for t in tenants) or ("default",),
        slo_classes=tuple(slo_classes),
        prefix_offsets=off,
        prefix_ids=ids,
        prefix_block_tokens=prefix_block_tokens,
        meta=dict(meta or {}),
        parent=None if par is None else remap_parent(par, order, n),
        think_s=None if think_s is None else np.asarray(think_s, np.float64)[order],
    )
