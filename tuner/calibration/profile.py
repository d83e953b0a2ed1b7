"""The calibration profile: ONE long-format table of measured timings (schema version 1).

Every row is one measurement. Columns (``COLUMNS``; Parquet or CSV, the suffix decides):

=========  =======  =====================================================================
column     type     meaning
=========  =======  =====================================================================
source     str      where it came from: calibrate, vidur, splitwise, sarathi, live, ...
device     str      GPU catalog name (h100-sxm, a100-80gb, ...) or ``cpu-host``
model      str      catalog model name or config path ("" for all_reduce rows)
tp         int      tensor-parallel degree (GPUs of the all-reduce for all_reduce rows)
op         str      see ``OPS`` below
tokens     int      GEMM rows (linear ops); prefill tokens in the batch (batch_* rows)
batch      int      sequences (attention and batch rows; decode sequences of batch_mixed)
context    float    KV tokens before this step, per sequence (decode: the sequence's context)
chunk      int      prefill tokens per sequence this step (attn_prefill, batch_prefill,
                    batch_mixed); chunk size of prefill_chunked
nbytes     float    all_reduce message bytes
time_ms    float    measured time, ms (per LAYER for linear/attention ops, per step or whole
                    batch for batch_* rows, one collective for all_reduce)
dtype      str      weight dtype (bf16, fp16, fp8, fp32 on CPU)
repeats    int      timed repetitions behind ``time_ms`` (median); 0 = unknown
=========  =======  =====================================================================

``OPS``: per-layer operators ``qkv_proj``, ``o_proj``, ``mlp_up`` (gate+up), ``mlp_down``,
``attn_prefill`` (``batch`` sequences × ``chunk`` new tokens after ``context``),
``attn_decode`` (``batch`` sequences, one token each, ``context`` each); ``all_reduce``; whole
model steps ``batch_prefill`` (``batch`` × ``chunk`` tokens after ``context``), ``batch_decode``
(``batch`` sequences at ``context``), ``batch_mixed`` (one ``chunk``-token prefill + ``batch``
decodes at ``context``), ``prefill_chunked`` (one ``tokens``-token prompt prefilled in chunks
of ``chunk``: total time of all its steps).

``read_profile`` also reads the measured public tables (``shared_profile``): Vidur per-layer
operator timings and all-reduce, Splitwise and Sarathi batch latencies, via
``backends.sim.profiles`` (whose stated assumptions hold: e.g. Splitwise decode context =
prompt + output/2). ``to_profile_rows`` turns a profile into ``ProfileRow``s for
``backends.sim.profiles.predict`` / ``fit_efficiency``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

SCHEMA_VERSION = 1
COLUMNS: dict[str, str] = {
    "source": "object", "device": "object", "model": "object", "tp": "int64", "op": "object", "tokens": "int64",
    "batch": "int64", "context": "float64", "chunk": "int64", "nbytes": "float64", "time_ms": "float64",
    "dtype": "object", "repeats": "int64"}
LINEAR_OPS = ("qkv_proj", "o_proj", "mlp_up", "mlp_down")
ATTN_OPS = ("attn_prefill", "attn_decode")
BATCH_OPS = ("batch_prefill", "batch_decode", "batch_mixed", "prefill_chunked")
OPS = (*LINEAR_OPS, *ATTN_OPS, "all_reduce", *BATCH_OPS)
SHARED_TABLES = ("vidur", "splitwise", "sarathi")
_VIDUR_TO_OP = {"qkv": "qkv_proj", "o": "o_proj", "mlp_up": "mlp_up", "mlp_down": "mlp_down"}
_OP_TO_VIDUR = {v: k for k, v in _VIDUR_TO_OP.items()}


def make_profile(rows: Iterable[dict]) -> pd.DataFrame:
    """A profile DataFrame from row dicts (missing columns get 0 / ""), validated."""
    df = pd.DataFrame(list(rows))
    return normalise(df)


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Columns in schema order and dtype; ValueError naming the first bad row/column."""
    df = df.copy()
    for col, dt in COLUMNS.items():
        if col not in df.columns:
            df[col] = "" if dt == "object" else 0
        if dt == "object":
            df[col] = df[col].astype(object).fillna("").astype(str)
        else:
            v = pd.to_numeric(df[col], errors="coerce")
            bad = v.isna() & df[col].notna()
            if bad.any():
                i = int(bad.to_numpy().nonzero()[0][0])
                raise ValueError(f"profile row {i}: column {col}={df[col].iloc[i]!r} is not a number")
            df[col] = v.fillna(0).astype(dt)
    df = df[list(COLUMNS)].reset_index(drop=True)
    unknown = ~df.op.isin(OPS)
    if unknown.any():
        i = int(unknown.to_numpy().nonzero()[0][0])
        raise ValueError(f"profile row {i}: op={df.op.iloc[i]!r} unknown (known: {', '.join(OPS)})")
    bad = ~(df.time_ms > 0)
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise ValueError(f"profile row {i}: time_ms={df.time_ms.iloc[i]} must be > 0")
    if (df.tp < 1).any():
        i = int((df.tp < 1).to_numpy().nonzero()[0][0])
        raise ValueError(f"profile row {i}: tp={df.tp.iloc[i]} must be >= 1")
    return df


def write_profile(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a profile as Parquet (``.parquet``) or CSV (``.csv``); the schema version goes in
    the Parquet metadata / a ``# servetune-profile v1`` CSV comment line."""
    p = Path(path)
    df = normalise(df)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        t = pa.Table.from_pandas(df, preserve_index=False)
        t = t.replace_schema_metadata({**(t.schema.metadata or {}), b"servetune_profile": str(SCHEMA_VERSION).encode()})
        pq.write_table(t, p)
    elif p.suffix == ".csv":
        with p.open("w") as f:
            f.write(f"# servetune-profile v{SCHEMA_VERSION}\n")
            df.to_csv(f, index=False)
    else:
        raise ValueError(f"profile path {p}: suffix must be .parquet or .csv")
    return p


def read_profile(path_or_table: str | Path) -> pd.DataFrame:
    """A profile from a file (.parquet / .csv) or a shared table name (vidur, splitwise,
    sarathi, shared = all three)."""
    s = str(path_or_table)
    if s in SHARED_TABLES or s == "shared":
        return shared_profile(SHARED_TABLES if s == "shared" else (s,))
    p = Path(s)
    if not p.is_file():
        raise OSError(f"profile {p}: no such file (or give a table: {', '.join(SHARED_TABLES)}, shared)")
    if p.suffix == ".parquet":
        df = pd.read_parquet(p)
    elif p.suffix == ".csv":
        df = pd.read_csv(p, comment="#")
    else:
        raise ValueError(f"profile {p}: suffix must be .parquet or .csv")
    missing = {"op", "time_ms", "model", "device", "tp"} - set(df.columns)
    if missing:
        raise ValueError(f"profile {p}: missing columns {sorted(missing)}")
    return normalise(df)


def content_hash(df: pd.DataFrame) -> str:
    """12 hex digits of a hash of the profile's content (row order matters)."""
    h = hashlib.sha256(pd.util.hash_pandas_object(normalise(df), index=False).to_numpy().tobytes())
    return h.hexdigest()[:12]


# ------------------------------------------------------------------ shared tables <-> rows
def from_profile_rows(rows: Sequence, source: str) -> pd.DataFrame:
    """``backends.sim.profiles.ProfileRow``s as profile rows."""
    out = []
    for r in rows:
        d = {"source": source, "device": r.gpu, "model": r.model, "tp": r.tp, "time_ms": r.measured_s * 1e3,
             "dtype": r.weight_dtype}
        if r.op == "allreduce":
            d.update(op="all_reduce", nbytes=r.nbytes, model="")
        elif r.op:
            d.update(op=_VIDUR_TO_OP[r.op], tokens=r.tokens)
        else:
            d.update(_batch_fields(r.batches))
        out.append(d)
    return make_profile(out)


def _batch_fields(batches: Sequence[tuple]) -> dict:
    if len(batches) > 1:
        return {"op": "prefill_chunked", "tokens": int(sum(b[0] for b in batches)), "chunk": int(batches[0][0]),
                "batch": 1}
    pf, pairs, pseqs, dseqs, _dtok, dctx = batches[0]
    ctx = dctx / dseqs if dseqs else 0.0
    if pf and dseqs:
        return {"op": "batch_mixed", "tokens": pf, "chunk": pf, "batch": dseqs, "context": ctx}
    if pf:
        c = pf // max(pseqs, 1)
        return {"op": "batch_prefill", "tokens": pf, "chunk": c, "batch": pseqs,
                "context": pairs / max(pf, 1) - (c + 1) / 2.0}
    return {"op": "batch_decode", "batch": dseqs, "context": ctx}


def _batches_of(r) -> tuple[tuple, ...]:
    if r.op == "batch_decode":
        return ((0, 0.0, 0, r.batch, r.batch, r.batch * r.context),)
    if r.op == "batch_prefill":
        return ((r.batch * r.chunk, r.batch * r.chunk * (r.context + (r.chunk + 1) / 2.0), r.batch, 0, 0, 0.0),)
    if r.op == "batch_mixed":
        return ((r.chunk, r.chunk * (r.chunk + 1) / 2.0, 1, r.batch, r.batch, r.batch * r.context),)
    out, done = [], 0
    while done < r.tokens:
        n = min(r.chunk, r.tokens - done)
        out.append((n, n * (done + (n + 1) / 2.0), 1, 0, 0, 0.0))
        done += n
    return tuple(out)


def to_profile_rows(df: pd.DataFrame) -> list:
    """Profile rows the analytical model can predict (linear ops, all-reduce, batch rows) as
    ``ProfileRow``s; attention-only rows are skipped (the roofline has no per-op attention term)."""
    from backends.sim.profiles import ProfileRow

    out = []
    for r in normalise(df).itertuples(index=False):
        common = {"table": r.source, "model": r.model or "llama-2-7b", "gpu": r.device, "tp": int(r.tp),
                  "measured_s": r.time_ms / 1e3, "weight_dtype": r.dtype if r.dtype in ("bf16", "fp16", "fp8") else "bf16"}
        if r.op in LINEAR_OPS:
            out.append(ProfileRow(**common, op=_OP_TO_VIDUR[r.op], tokens=int(r.tokens)))
        elif r.op == "all_reduce":
            out.append(ProfileRow(**common, op="allreduce", nbytes=float(r.nbytes)))
        elif r.op in BATCH_OPS:
            out.append(ProfileRow(**common, batches=_batches_of(r), label=f"{r.op} b{r.batch} c{r.chunk} ctx{r.context:g}"))
    return out


def shared_profile(tables: Sequence[str] = SHARED_TABLES) -> pd.DataFrame:
    """The measured public tables in the profile schema (Vidur: operators and all-reduce)."""
    from backends.sim.profiles import load_rows

    parts = []
    for t in tables:
        if t == "vidur":
            parts += [from_profile_rows(load_rows("vidur_mlp"), "vidur"),
                      from_profile_rows(load_rows("vidur_allreduce"), "vidur")]
        elif t in ("splitwise", "sarathi"):
            parts.append(from_profile_rows(load_rows(t), t))
        else:
            raise ValueError(f"unknown shared table {t!r}: choose from {', '.join(SHARED_TABLES)}")
    return normalise(pd.concat(parts, ignore_index=True))


__all__ = ["ATTN_OPS", "BATCH_OPS", "COLUMNS", "LINEAR_OPS", "OPS", "SCHEMA_VERSION", "SHARED_TABLES", "content_hash",
           "from_profile_rows", "make_profile", "normalise", "read_profile", "shared_profile", "to_profile_rows",
           "write_profile"]
