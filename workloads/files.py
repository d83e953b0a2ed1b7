"""Explicit-request workload files: Parquet, CSV, JSONL (read, validate, write).

Columns are those of ``Workload.to_frame()``:

  arrival_s (s, required), prompt_len (tokens, required), output_len (tokens, required),
  max_output (tokens; default output_len), tenant (name; default "default"),
  priority (int, lower first; default 0), slo_class (name; default: the first class),
  adapter (LoRA adapter name or empty; optional), prefix_ids (optional: a list of ints in
  Parquet/JSONL, space-separated ints in CSV; ids of ``prefix_block_tokens``-token blocks),
  parent (optional, multi-turn sessions: the 0-based row in this file of the conversation's
  previous turn, -1 or empty for a first turn) and think_s (s after that turn's last token;
  default 0): see ``Workload``.

Workload-level fields travel with the file: in Parquet as schema metadata, in CSV as leading
comment lines ``# key: value`` (``schema_version: 1``, ``name``, ``prefix_block_tokens``,
``slo_classes`` as JSON ``[{"name": ..., "ttft_ms": ..., "tpot_ms": ...}]``, optional ``tenants``
as a JSON list that fixes the tenant order), in JSONL as a
first line ``{"servetune_workload": {...}}``. Without ``slo_classes`` the only known class is
``default``; a request naming another class is an error.

Rows are numbered from 1 (the first request) in messages. Unsorted arrivals are accepted and
sorted stably by arrival (the order of equal arrivals is kept). Mooncake-format JSONL
(``timestamp`` ms, ``input_length``, ``output_length``, ``hash_ids``) is read as well, and so are
the CSVs of two public trace families as published (``foreign_csv``): the Azure LLM inference
traces (``TIMESTAMP``, ``ContextTokens``, ``GeneratedTokens``; 2023 and 2024) and BurstGPT
(``Timestamp`` s, ``Request tokens``, ``Response tokens``, ``Model`` as the tenant).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from workloads.workload import DEFAULT_SLO, SCHEMA_VERSION, SLOClass, Workload, arrival_order, remap_parent

REQUIRED = ("arrival_s", "prompt_len", "output_len")
OPTIONAL = ("max_output", "tenant", "priority", "slo_class", "adapter", "prefix_ids", "parent", "think_s")
INT_COLS = ("prompt_len", "output_len", "max_output", "priority")
SUFFIXES = (".parquet", ".csv", ".jsonl")


# ---------------------------------------------------------------- header (workload-level fields)
def _header(w: Workload) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "name": w.name,
        "prefix_block_tokens": w.prefix_block_tokens,
        "tenants": list(w.tenants),
        "slo_classes": [{"name": c.name, "ttft_ms": c.ttft_ms, "tpot_ms": c.tpot_ms} for c in w.slo_classes],
    }


def _parse_header(h: dict, where: str) -> tuple[str | None, tuple[SLOClass, ...], int]:
    unknown = set(h) - {"schema_version", "name", "prefix_block_tokens", "slo_classes", "tenants"}
    if unknown:
        raise ValueError(f"{where}: unknown header key {sorted(unknown)[0]!r}")
    v = h.get("schema_version", SCHEMA_VERSION)
    if str(v) != str(SCHEMA_VERSION):
        raise ValueError(f"{where}: schema_version {v!r} is not supported (this servetune reads {SCHEMA_VERSION})")
    classes = (DEFAULT_SLO,)
    if "slo_classes" in h:
        raw = h["slo_classes"]
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: slo_classes is not valid JSON ({e.msg})") from None
        try:
            classes = tuple(SLOClass(str(c["name"]), float(c["ttft_ms"]), float(c["tpot_ms"])) for c in raw)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: slo_classes: each needs name, ttft_ms, tpot_ms > 0 ({e})") from None
        if not classes:
            raise ValueError(f"{where}: slo_classes is empty")
    try:
        pbt = int(h.get("prefix_block_tokens", 512))
    except (TypeError, ValueError):
        raise ValueError(f"{where}: prefix_block_tokens={h['prefix_block_tokens']!r} is not an integer") from None
    return h.get("name"), classes, pbt


# ---------------------------------------------------------------- readers
def _read_csv(path: Path) -> tuple[pd.DataFrame, dict]:
    header: dict = {}
    skip = 0
    with path.open("r", encoding="utf-8", newline="") as f:
        for line in f:
            if not line.startswith("#"):
                break
            skip += 1
            key, sep, value = line[1:].strip().partition(":")
            if sep:
                header[key.strip()] = value.strip()
    try:
        df = pd.read_csv(path, skiprows=skip, keep_default_na=False, skipinitialspace=True,
                         dtype={c: str for c in ("tenant", "slo_class", "adapter", "prefix_ids")})
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: no header row (expected columns {', '.join(REQUIRED)}, ...)") from None
    except pd.errors.ParserError as e:
        raise ValueError(f"{path}: not a readable CSV ({str(e).strip().splitlines()[0]})") from None
    df.columns = [str(c).strip() for c in df.columns]
    df = foreign_csv(df, str(path))
    if "prefix_ids" in df:
        df["prefix_ids"] = df["prefix_ids"].map(lambda s: s.replace(",", " ").replace("[", " ").replace("]", " ").split())
    return df, header


FOREIGN_FORMATS = {
    "Azure LLM inference trace": ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
    "BurstGPT": ("Timestamp", "Request tokens", "Response tokens"),
}
"""Public trace CSVs read as published: format -> the columns that identify it (arrival, prompt
tokens, output tokens)."""


def foreign_csv(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """``df`` as request columns when it is one of ``FOREIGN_FORMATS`` (else unchanged).

    Azure: ``TIMESTAMP`` is wall clock (ISO 8601, any sub-second digits), arrivals become
    seconds from the earliest row. BurstGPT: ``Timestamp`` is seconds, shifted to start at 0;
    ``Model`` (ChatGPT, GPT-4) becomes the tenant. A 0-token output (a request that stopped at
    once or failed, as BurstGPT logs them) is served as 1 token: its prefill still ran."""
    fmt = next((f for f, cols in FOREIGN_FORMATS.items() if set(cols) <= set(df.columns)), None)
    if fmt is None:
        return df
    t_col, p_col, o_col = FOREIGN_FORMATS[fmt]
    if fmt.startswith("Azure"):
        ts = pd.to_datetime(df[t_col], format="ISO8601", errors="coerce")
        if ts.isna().any():
            k = int(np.flatnonzero(ts.isna().to_numpy())[0])
            raise ValueError(f"{where} row {k + 1}: {t_col}={_show(df[t_col].iloc[k])} is not a date and time")
        ns = ts.to_numpy("datetime64[ns]").astype(np.int64)
        arrival = (ns - ns.min()) / 1e9
    else:
        t = _column(df, t_col, where, integer=False)
        arrival = t - t.min()
    out = pd.DataFrame({"arrival_s": arrival, "prompt_len": _column(df, p_col, where, integer=False),
                        "output_len": np.maximum(_column(df, o_col, where, integer=False), 1)})
    if fmt == "BurstGPT" and "Model" in df:
        out["tenant"] = df["Model"].astype(str).str.strip().to_numpy()
    return out


def _read_parquet(path: Path) -> tuple[pd.DataFrame, dict]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise ValueError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    meta = table.schema.metadata or {}
    raw = meta.get(b"servetune_workload")
    header = json.loads(raw) if raw else {}
    return table.to_pandas(), header


def _read_jsonl(path: Path) -> tuple[pd.DataFrame | Workload, dict]:
    lines = path.read_bytes().splitlines()
    first = next((ln for ln in lines if ln.strip()), b"")
    try:
        rec = json.loads(first) if first else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} line 1: not JSON ({e.msg})") from None
    if isinstance(rec, dict) and "input_length" in rec and "timestamp" in rec:
        from workloads.traces import parse_mooncake_jsonl

        return parse_mooncake_jsonl(b"\n".join(lines), path.stem, where=str(path)), {}
    header: dict = {}
    rows = []
    for k, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {k}: not JSON ({e.msg})") from None
        if not isinstance(r, dict):
            raise ValueError(f"{path} line {k}: expected a JSON object per line")
        if "servetune_workload" in r and not rows:
            header = r["servetune_workload"]
            continue
        rows.append(r)
    return pd.DataFrame(rows), header


def _show(v) -> str:
    """A cell as the user wrote it: numbers plain (-10, 10.5), text quoted ('abc')."""
    v = v.item() if isinstance(v, np.generic) else v
    return repr(v)


def _column(df: pd.DataFrame, col: str, where: str, *, integer: bool) -> np.ndarray:
    s = df[col]
    num = pd.to_numeric(s, errors="coerce")
    bad = num.isna().to_numpy()
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{where} row {k + 1}: {col}={_show(s.iloc[k])} is not a number")
    x = num.to_numpy(np.float64)
    if not np.isfinite(x).all():
        k = int(np.flatnonzero(~np.isfinite(x))[0])
        raise ValueError(f"{where} row {k + 1}: {col}={_show(s.iloc[k])} is not a finite number")
    if integer:
        frac = x != np.round(x)
        if frac.any():
            k = int(np.flatnonzero(frac)[0])
            raise ValueError(f"{where} row {k + 1}: {col}={_show(s.iloc[k])} is not an integer")
        big = np.abs(x) > 2**31 - 1
        if big.any():
            k = int(np.flatnonzero(big)[0])
            raise ValueError(f"{where} row {k + 1}: {col}={_show(s.iloc[k])} is out of range")
        return x.astype(np.int64)
    return x


def _column_or(df: pd.DataFrame, col: str, default: float, where: str, *, integer: bool) -> np.ndarray:
    """``_column`` with empty cells (NaN, or blank text in a CSV) read as ``default``."""
    s = df[col]
    s = s.where(~(s.isna() | (s.astype(str).str.strip() == "")), default)
    return _column(pd.DataFrame({col: s}), col, where, integer=integer)


def frame_to_workload(df: pd.DataFrame, header: dict, where: str, name: str) -> Workload:
    """Validate a request frame and build the Workload; errors name the row and column."""
    hname, classes, pbt = _parse_header(header, where)
    df.columns = [str(c).strip() for c in df.columns]
    unknown = [c for c in df.columns if c not in REQUIRED + OPTIONAL]
    if unknown:
        raise ValueError(f"{where}: unknown column {unknown[0]!r} (known: {', '.join(REQUIRED + OPTIONAL)})")
    for c in REQUIRED:
        if c not in df.columns:
            raise ValueError(f"{where}: missing column {c!r} (required: {', '.join(REQUIRED)})")
    if len(df) == 0:
        raise ValueError(f"{where}: no requests")
    cols = {c: _column(df, c, where, integer=c in INT_COLS) for c in REQUIRED + ("max_output", "priority") if c in df}
    checks = [
        ("arrival_s", cols["arrival_s"] < 0, "is negative (arrivals are seconds from the start)"),
        ("prompt_len", cols["prompt_len"] < 1, "must be >= 1 token"),
        ("output_len", cols["output_len"] < 1, "must be >= 1 token"),
    ]
    if "max_output" in cols:
        checks.append(("max_output", cols["max_output"] < cols["output_len"], "is below output_len"))
    for col, mask, why in checks:
        if mask.any():
            k = int(np.flatnonzero(mask)[0])
            extra = f" (output_len={cols['output_len'][k]})" if col == "max_output" else ""
            raise ValueError(f"{where} row {k + 1}: {col}={_show(df[col].iloc[k])} {why}{extra}")
    n = len(df)
    if "think_s" in df and "parent" not in df:
        raise ValueError(f"{where}: column 'think_s' needs the 'parent' column (multi-turn sessions)")
    parent = think = None
    if "parent" in df:
        parent = _column_or(df, "parent", -1, where, integer=True)  # empty: a first turn
        bad = (parent < -1) | (parent >= n) | (parent == np.arange(n))
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{where} row {k + 1}: parent={parent[k]} is not -1 or the 0-based "
                             f"row of another request")
        think = np.zeros(n)
        if "think_s" in df:
            think = _column_or(df, "think_s", 0, where, integer=False)  # empty: no pause
            if (think < 0).any():
                k = int(np.flatnonzero(think < 0)[0])
                raise ValueError(f"{where} row {k + 1}: think_s={_show(df['think_s'].iloc[k])} is negative")
        late = (parent >= 0) & (cols["arrival_s"][np.maximum(parent, 0)] > cols["arrival_s"])
        if late.any():
            k = int(np.flatnonzero(late)[0])
            raise ValueError(f"{where} row {k + 1}: arrival_s is before its parent's (row {parent[k] + 1}); a later "
                             f"turn's arrival_s is the earliest it may be sent")
    try:
        order = arrival_order(cols["arrival_s"], parent)  # sorted by arrival (a later turn after its previous one)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    slo = np.zeros(n, np.int32)
    if "slo_class" in df:
        names = df["slo_class"].fillna("").astype(str).str.strip()
        names = names.where(names != "", classes[0].name)
        slo = _codes(names, [c.name for c in classes], where, "slo_class", "is not a defined SLO class")
    fixed = _json_list(header.get("tenants"), where, "tenants")
    tenants: tuple[str, ...] = ("default",)
    tenant = np.zeros(n, np.int32)
    if "tenant" in df:
        names = df["tenant"].fillna("").astype(str).str.strip()
        names = names.where(names != "", "default")
        tenants = tuple(fixed) if fixed else tuple(sorted(pd.unique(names)))
        tenant = _codes(names, list(tenants), where, "tenant", "is not in the header's tenants list")
    adapters: tuple[str, ...] = ()
    adapter = None
    if "adapter" in df:
        names = df["adapter"].fillna("").astype(str).str.strip()
        adapters = tuple(sorted(set(pd.unique(names)) - {""}))
        adapter = _codes(names, ["", *adapters], where, "adapter", "is not an adapter") - 1
    kw = {}
    if "prefix_ids" in df:
        blocks = []
        for k, v in enumerate(df["prefix_ids"]):
            try:
                empty = v is None or (isinstance(v, float) and np.isnan(v))
                blocks.append([] if empty else [int(x) for x in (v.split() if isinstance(v, str) else v)])
            except (TypeError, ValueError):
                raise ValueError(f"{where} row {k + 1}: prefix_ids={v!r} is not a list of integers") from None
        nblk = np.array([len(b) for b in blocks], np.int64)
        ids = np.fromiter((x for b in blocks for x in b), np.int64, int(nblk.sum()))
        off = np.r_[0, np.cumsum(nblk)].astype(np.int64)
        lens = nblk[order]
        new_off = np.r_[0, np.cumsum(lens)].astype(np.int64)
        src = np.repeat(off[:-1][order] - new_off[:-1], lens) + np.arange(new_off[-1], dtype=np.int64)
        kw = {"prefix_offsets": new_off, "prefix_ids": ids[src], "prefix_block_tokens": pbt}
    if parent is not None:
        kw.update(parent=remap_parent(parent, order, n), think_s=think[order])
    out = cols["output_len"]
    return Workload(
        name=str(hname or name),
        arrival_s=cols["arrival_s"][order],
        prompt_len=cols["prompt_len"][order],
        output_len=out[order],
        max_output=cols.get("max_output", out)[order],
        tenant=tenant[order],
        priority=cols["priority"][order] if "priority" in cols else np.zeros(n, np.int32),
        slo_class=slo[order],
        tenants=tenants,
        slo_classes=classes,
        adapter=None if adapter is None else adapter[order],
        adapters=adapters,
        meta={"source": where},
        **kw,
    )


def _codes(names: pd.Series, categories: list[str], where: str, col: str, why: str) -> np.ndarray:
    """Index of each name in ``categories``; the first unknown name is a one-line error."""
    local, uniques = pd.factorize(names)  # hash once; map the few distinct names
    pos = {c: i for i, c in enumerate(categories)}
    codes = np.array([pos.get(str(u), -1) for u in uniques], np.int32)[local]
    if (codes < 0).any():
        k = int(np.flatnonzero(codes < 0)[0])
        raise ValueError(f"{where} row {k + 1}: {col}={names.iloc[k]!r} {why} (known: {', '.join(categories[:10])}"
                         f"{', ...' if len(categories) > 10 else ''})")
    return codes


def _json_list(v, where: str, key: str) -> list[str] | None:
    if v is None or v == "":
        return None
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: {key} is not valid JSON ({e.msg})") from None
    if not isinstance(v, list) or len(set(map(str, v))) != len(v):
        raise ValueError(f"{where}: header {key} must be a list of distinct names")
    return [str(x) for x in v]


def read_requests(path: str | Path) -> Workload:
    """Read an explicit-request file (.parquet, .csv, .jsonl) into a validated Workload."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        df, header = _read_csv(p)
    elif suffix == ".parquet":
        df, header = _read_parquet(p)
    elif suffix == ".jsonl":
        df, header = _read_jsonl(p)
        if isinstance(df, Workload):
            return df
    else:
        raise ValueError(f"{p}: unknown workload file type {suffix!r} (expected {', '.join(SUFFIXES)} or .yaml)")
    return frame_to_workload(df, header, str(p), p.stem)


# ---------------------------------------------------------------- writers
def write_workload(w: Workload, path: str | Path) -> Path:
    """Write a Workload as explicit requests (.parquet with zstd, .csv or .jsonl); returns the path."""
    p = Path(path)
    df = w.to_frame()
    header = _header(w)
    suffix = p.suffix.lower()
    p.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(df, preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[b"servetune_workload"] = json.dumps(header).encode()
        pq.write_table(table.replace_schema_metadata(meta), p, compression="zstd")
    elif suffix == ".csv":
        if "prefix_ids" in df:
            df["prefix_ids"] = [" ".join(map(str, b)) for b in df["prefix_ids"]]
        with p.open("w", encoding="utf-8", newline="") as f:
            for k, v in header.items():
                f.write(f"# {k}: {json.dumps(v) if isinstance(v, list) else v}\n")
            df.to_csv(f, index=False, lineterminator="\n")
    elif suffix == ".jsonl":
        with p.open("w", encoding="utf-8") as f:
            f.write(json.dumps({"servetune_workload": header}) + "\n")
            for rec in df.to_dict(orient="records"):
                f.write(json.dumps(rec) + "\n")
    else:
        raise ValueError(f"{p}: cannot write {suffix!r} (use .parquet, .csv or .jsonl)")
    return p
