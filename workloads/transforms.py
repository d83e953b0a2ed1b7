"""Transformations of a Workload. Each returns a new (validated) Workload; inputs are unchanged.

Times in seconds, rates in requests/s, lengths in tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from workloads.workload import SLOClass, Workload

MAX_RATE = 1e6  # req/s; anything above is a typo, not a workload


def check_rate(rate: float, what: str = "rate") -> float:
    """A positive, finite rate no larger than 1e6 req/s, or a one-line ValueError."""
    try:
        r = float(rate)
    except (TypeError, ValueError):
        raise ValueError(f"{what}={rate!r} is not a number (req/s)") from None
    if not (0 < r <= MAX_RATE):
        raise ValueError(f"{what}={rate!r} must be > 0 and <= {MAX_RATE:g} req/s")
    return r


def _meta(w: Workload, step: str) -> dict[str, str]:
    meta = dict(w.meta)
    meta["transforms"] = f"{meta['transforms']}; {step}" if meta.get("transforms") else step
    return meta


# ---------------------------------------------------------------- time
def scale_rate(w: Workload, factor: float) -> Workload:
    """Speed arrivals up by ``factor`` (2.0 doubles the rate: every arrival time is halved)."""
    f = float(factor)
    if not (np.isfinite(f) and f > 0):
        raise ValueError(f"scale_rate: factor={factor!r} must be > 0")
    check_rate(w.rate * f if w.rate else f, "scale_rate: resulting rate")
    return w.replace(arrival_s=w.arrival_s / f, meta=_meta(w, f"scale_rate({f:g})"))


def scale_to_rate(w: Workload, rate: float) -> Workload:
    """Rescale time so the mean rate ``(n-1)/span`` becomes ``rate`` req/s (order and shape kept)."""
    r = check_rate(rate, "scale_to_rate: rate")
    if w.rate <= 0:
        raise ValueError(f"scale_to_rate: workload {w.name!r} has no time span (n={w.n}); cannot set a rate")
    factor = r / w.rate
    return w.replace(arrival_s=w.arrival_s / factor, meta=_meta(w, f"scale_to_rate({r:g})"))


def _range(w: Workload, i0: int, i1: int, step: str, shift: float = 0.0) -> Workload:
    out = w.take(slice(i0, i1))
    return out.replace(arrival_s=out.arrival_s - shift, meta=_meta(w, step))


def first_n(w: Workload, n: int) -> Workload:
    """The first ``n`` requests by arrival (all of them if the workload is shorter)."""
    if int(n) != n or n < 1:
        raise ValueError(f"first_n: n={n!r} must be a positive integer")
    return _range(w, 0, min(int(n), w.n), f"first_n({int(n)})")


def first_at_rate(w: Workload, first: int | None = None, rate: float | None = None) -> Workload:
    """Keep the first ``first`` requests, then rescale time so their mean rate is ``rate`` req/s
    (None leaves a step out). The one rule for a study's ``first_n``/``rate`` and the
    ``--first``/``--rate`` flags of ``simulate`` and ``workloads``: the rate is that of the kept
    requests, whatever the rate of the whole trace."""
    if first is not None:
        w = first_n(w, first)
    return w if rate is None else scale_to_rate(w, rate)


def window(w: Workload, t0: float, t1: float, *, rebase: bool = True) -> Workload:
    """Requests arriving in ``[t0, t1)`` seconds; with ``rebase`` times are shifted so t0 becomes 0."""
    t0, t1 = float(t0), float(t1)
    if not (np.isfinite(t0) and t0 >= 0 and t1 > t0):
        raise ValueError(f"window: need 0 <= t0 < t1 (got t0={t0:g}, t1={t1:g})")
    i0, i1 = np.searchsorted(w.arrival_s, [t0, t1], side="left")
    if i1 <= i0:
        raise ValueError(f"window [{t0:g}, {t1:g}) s holds no request of {w.name!r} (span 0..{w.arrival_s[-1]:g} s)")
    return _range(w, int(i0), int(i1), f"window({t0:g},{t1:g})", shift=t0 if rebase else 0.0)


# ---------------------------------------------------------------- lengths
def cap_context(w: Workload, max_model_len: int, *, drop: bool = False) -> Workload:
    """Make every request fit the model's context: prompt_len + max_output <= max_model_len.

    Default: truncate (prompt to at most max_model_len - 1, then max_output and output_len to
    what is left; prefix blocks beyond the kept prompt are dropped). ``drop=True`` removes the
    requests that do not fit instead (as an engine rejects them), and with them the later turns
    of their conversations (multi-turn sessions end there).
    """
    m = int(max_model_len)
    if m != max_model_len or m < 2:
        raise ValueError(f"cap_context: max_model_len={max_model_len!r} must be an integer >= 2")
    if drop:
        keep = (w.prompt_len.astype(np.int64) + w.max_output) <= m
        if w.has_sessions:
            for i, p in enumerate(w.parent.tolist()):  # type: ignore[union-attr]  # (parents come first)
                if p >= 0 and not keep[p]:
                    keep[i] = False
        if not keep.any():
            raise ValueError(f"cap_context: no request of {w.name!r} fits max_model_len={m}")
        out = w.take(np.flatnonzero(keep))
        return out.replace(meta=_meta(w, f"cap_context({m}, drop)"))
    prompt = np.minimum(w.prompt_len, m - 1)
    max_out = np.minimum(w.max_output, m - prompt)
    out_len = np.minimum(w.output_len, max_out)
    kw = {}
    if w.prefix_offsets is not None:
        nblk = np.diff(w.prefix_offsets)
        keep_blk = np.minimum(nblk, -(-prompt.astype(np.int64) // w.prefix_block_tokens))
        if np.any(keep_blk < nblk):
            off = np.r_[0, np.cumsum(keep_blk)].astype(np.int64)
            src = np.repeat(w.prefix_offsets[:-1] - off[:-1], keep_blk) + np.arange(off[-1], dtype=np.int64)
            kw = {"prefix_offsets": off, "prefix_ids": w.prefix_ids[src]}
    return w.replace(prompt_len=prompt, max_output=max_out, output_len=out_len, meta=_meta(w, f"cap_context({m})"), **kw)


def set_max_output(w: Workload, value: int | str) -> Workload:
    """Set each request's max_tokens: ``"output_len"`` (exactly what it generates) or a fixed cap
    (tokens); with a cap, output_len is clipped to it."""
    if value == "output_len":
        return w.replace(max_output=w.output_len, meta=_meta(w, "set_max_output(output_len)"))
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"set_max_output: {value!r} must be 'output_len' or an integer >= 1 (tokens)")
    cap = np.full(w.n, int(value), np.int32)
    return w.replace(max_output=cap, output_len=np.minimum(w.output_len, cap), meta=_meta(w, f"set_max_output({value})"))


# ---------------------------------------------------------------- SLO tiers and priority
def set_slo_classes(w: Workload, classes: Sequence[SLOClass]) -> Workload:
    """Replace the class definitions; a request keeps a class of the same name, else gets the first."""
    new = tuple(classes)
    if not new:
        raise ValueError("set_slo_classes: needs at least one SLO class")
    idx = {c.name: i for i, c in enumerate(new)}
    remap = np.array([idx.get(c.name, 0) for c in w.slo_classes], np.int32)
    return w.replace(slo_class=remap[w.slo_class], slo_classes=new)


def _keys(w: Workload, by: str) -> tuple[np.ndarray, dict]:
    if by == "tenant":
        return w.tenant, {name: i for i, name in enumerate(w.tenants)}
    if by == "priority":
        return w.priority, None
    raise ValueError(f"rule by={by!r}: expected one of tenant, priority, prompt_len, output_len, all")


def _map_values(w: Workload, by: str, mapping: Mapping, what: str) -> np.ndarray:
    """Per-request mapping[key] (values already ints); -1 where the key is not mapped."""
    keys, names = _keys(w, by)
    out = np.full(w.n, -1, np.int64)
    for k, v in mapping.items():
        if names is not None:
            if str(k) not in names:
                raise ValueError(f"{what}: map names tenant {k!r}, not in the workload (tenants: {', '.join(w.tenants[:8])}"
                                 f"{', ...' if len(w.tenants) > 8 else ''})")
            out[keys == names[str(k)]] = v
        else:
            try:
                out[keys == int(k)] = v
            except (TypeError, ValueError):
                raise ValueError(f"{what}: priority key {k!r} is not an integer") from None
    return out


def assign_slo(
    w: Workload,
    by: str = "all",
    *,
    classes: Sequence[SLOClass] | None = None,
    mapping: Mapping[str | int, str] | None = None,
    threshold: float | None = None,
    below: str | None = None,
    above: str | None = None,
    default: str | None = None,
) -> Workload:
    """Assign SLO classes by rule.

    by="tenant" or "priority": ``mapping`` key → class name; unmapped requests get ``default``
    (or keep their class). by="prompt_len" / "output_len": tokens < ``threshold`` → ``below``,
    else ``above``. by="all": every request gets ``default``. ``classes`` replaces the workload's
    class definitions (requests keep a class of the same name, else ``default``, else the first).
    """
    new = tuple(classes) if classes is not None else w.slo_classes
    idx = {c.name: i for i, c in enumerate(new)}

    def cls(name: str | None, field: str) -> int | None:
        if name is None:
            return None
        if str(name) not in idx:
            raise ValueError(f"assign_slo: {field}={name!r} is not a known SLO class (known: {', '.join(idx)})")
        return idx[str(name)]

    d = cls(default, "default")
    old_names = [c.name for c in w.slo_classes]
    remap = np.array([idx.get(n, d if d is not None else 0) for n in old_names], np.int64)
    current = remap[w.slo_class]
    if by in ("prompt_len", "output_len"):
        if threshold is None or below is None or above is None:
            raise ValueError(f"assign_slo by={by}: needs threshold, below and above")
        col = getattr(w, by)
        slo = np.where(col < float(threshold), cls(below, "below"), cls(above, "above"))
    elif by == "all":
        if d is None:
            raise ValueError("assign_slo by=all: needs default (the class for every request)")
        slo = np.full(w.n, d)
    else:
        if not mapping:
            raise ValueError(f"assign_slo by={by}: needs map (a {by} → class table)")
        m = {k: cls(v, f"map[{k!r}]") for k, v in mapping.items()}
        slo = _map_values(w, by, m, "assign_slo")
        slo = np.where(slo < 0, current if d is None else d, slo)
    return w.replace(slo_class=slo.astype(np.int32), slo_classes=new, meta=_meta(w, f"assign_slo({by})"))


def set_priority(w: Workload, by: str, mapping: Mapping[str, int], *, default: int | None = None) -> Workload:
    """Set priorities (lower is served first) by tenant: ``mapping`` tenant → priority; other
    tenants get ``default`` (or keep theirs)."""
    if by != "tenant":
        raise ValueError(f"set_priority by={by!r}: only 'tenant' is supported")
    names = {n: i for i, n in enumerate(w.tenants)}
    p = w.priority.astype(np.int64) if default is None else np.full(w.n, int(default), np.int64)
    for k, v in mapping.items():
        if str(k) not in names:
            raise ValueError(f"set_priority: map names tenant {k!r}, not in the workload")
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise ValueError(f"set_priority: map[{k!r}]={v!r} must be an integer")
        p[w.tenant == names[str(k)]] = int(v)
    return w.replace(priority=p.astype(np.int32), meta=_meta(w, "set_priority(tenant)"))
