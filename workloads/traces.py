"""Loaders for the real request traces bundled in ``workloads/data`` (see DATA.md there).

Every bundled file is the published original compressed with xz; ``bundled_bytes`` returns
the original bytes. Each loader returns a :class:`Workload` with arrivals in seconds from the
first request, lengths in tokens, ``max_output = output_len`` (the traces do not record the
request's max_tokens; change it with ``transforms.set_max_output``), priority 0 and the
default SLO class (change with ``transforms.assign_slo``).

Length tables (``sharegpt``, ``arxiv``) have no arrivals: they load as :class:`LengthTable`,
the (prompt, output) pairs a synthetic spec samples from.
"""

from __future__ import annotations

import io
import json
import lzma
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from workloads.workload import Workload

DATA_DIR = Path(__file__).resolve().parent / "data"

TRACE_FILES = {
    "azure-code": "azure_llm_2023_code.csv.xz",
    "azure-conv": "azure_llm_2023_conv.csv.xz",
    "mooncake-conv": "mooncake_fast25_conversation_trace.jsonl.xz",
    "mooncake-synthetic": "mooncake_fast25_synthetic_trace.jsonl.xz",
    "vtc-lmsys": "vtc_lmsys_arena_multiclient_trace.csv.xz",
    "sharegpt": "sarathi_sharegpt_8k_filtered_stats_llama2_tokenizer.csv.xz",
    "arxiv": "vidur_arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv.xz",
}
LENGTH_TABLES = ("sharegpt", "arxiv")


@lru_cache(maxsize=16)
def bundled_bytes(filename: str) -> bytes:
    """The original bytes of a bundled file (xz-decompressed). Cached: the data is immutable."""
    path = DATA_DIR / filename
    if not path.is_file():
        raise FileNotFoundError(f"bundled trace {filename!r} is missing from {DATA_DIR} (broken install?)")
    return lzma.decompress(path.read_bytes())


def _mk(name: str, arrival: np.ndarray, prompt: np.ndarray, output: np.ndarray, **kw) -> Workload:
    n = len(arrival)
    out = np.asarray(output, np.int32)
    return Workload(
        name=name,
        arrival_s=arrival,
        prompt_len=np.asarray(prompt, np.int32),
        output_len=out,
        max_output=out,
        tenant=kw.pop("tenant", np.zeros(n, np.int32)),
        priority=np.zeros(n, np.int32),
        slo_class=np.zeros(n, np.int32),
        **kw,
    )


# ---------------------------------------------------------------- Azure 2023
@lru_cache(maxsize=4)
def load_azure(kind: str = "conv") -> Workload:
    """Azure LLM inference trace 2023 (``kind`` = "conv" or "code").

    ``TIMESTAMP`` is wall clock with 100 ns digits; arrivals become seconds from the first row
    (``files.foreign_csv``, which reads any Azure-format trace file the same way).
    """
    if kind not in ("conv", "code"):
        raise ValueError(f"azure trace kind {kind!r}: expected 'conv' or 'code'")
    from workloads.files import foreign_csv

    name = f"azure-{kind}"
    df = foreign_csv(pd.read_csv(io.BytesIO(bundled_bytes(TRACE_FILES[name]))), name)
    return _mk(
        name,
        df["arrival_s"].to_numpy(),
        df["prompt_len"].to_numpy(),
        df["output_len"].to_numpy(),
        meta={"source": f"Azure LLM inference trace 2023 ({kind})", "licence": "CC-BY-4.0"},
    )


# ---------------------------------------------------------------- Mooncake
@lru_cache(maxsize=4)
def load_mooncake(kind: str = "conversation") -> Workload:
    """Mooncake FAST'25 trace (``kind`` = "conversation" or "synthetic").

    ``timestamp`` (ms) becomes seconds; ``hash_ids`` become CSR prefix blocks of 512 tokens.
    """
    key = {"conversation": "mooncake-conv", "conv": "mooncake-conv", "synthetic": "mooncake-synthetic"}.get(kind)
    if key is None:
        raise ValueError(f"mooncake trace kind {kind!r}: expected 'conversation' or 'synthetic'")
    return parse_mooncake_jsonl(bundled_bytes(TRACE_FILES[key]), key)


def parse_mooncake_jsonl(data: bytes, name: str, *, where: str | None = None) -> Workload:
    """Parse Mooncake-format JSONL (timestamp ms, input_length, output_length, hash_ids)."""
    where = where or name
    lines = [ln for ln in data.splitlines() if ln.strip()]
    try:  # fast path: one json.loads for the whole file
        recs = json.loads(b"[" + b",".join(lines) + b"]")
        ts = [r["timestamp"] for r in recs]
        inp = [r["input_length"] for r in recs]
        out = [r["output_length"] for r in recs]
        blocks = [r.get("hash_ids") or [] for r in recs]
        nblk = [len(b) for b in blocks]
        ids = [x for b in blocks for x in b]
    except (ValueError, KeyError, TypeError, AttributeError):
        ts, inp, out, nblk, ids = _parse_mooncake_lines(data, where)
    arrival = np.asarray(ts, np.float64) / 1000.0
    arrival = arrival - arrival[0] if len(arrival) else arrival
    return _mk(
        name,
        arrival,
        np.asarray(inp),
        np.asarray(out),
        prefix_offsets=np.r_[0, np.cumsum(nblk)].astype(np.int64),
        prefix_ids=np.asarray(ids, np.int64),
        prefix_block_tokens=512,
        meta={"source": "Mooncake FAST'25 trace", "licence": "Apache-2.0"},
    )


def _parse_mooncake_lines(data: bytes, where: str) -> tuple[list, list, list, list, list]:
    """Line-by-line parse that names the first bad line."""
    ts, inp, out, nblk, ids = [], [], [], [], []
    for k, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            ts.append(float(r["timestamp"]))
            inp.append(int(r["input_length"]))
            out.append(int(r["output_length"]))
            h = r.get("hash_ids") or []
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{where} line {k}: bad Mooncake record ({type(e).__name__}: {e})") from None
        nblk.append(len(h))
        ids.extend(h)
    return ts, inp, out, nblk, ids


# ---------------------------------------------------------------- VTC
@lru_cache(maxsize=1)
def load_vtc() -> Workload:
    """VTC multi-client LMSYS trace: 1,500 requests, 27 clients (tenants = ``client_name``)."""
    df = pd.read_csv(io.BytesIO(bundled_bytes(TRACE_FILES["vtc-lmsys"])))
    names = df["client_name"].astype(str).to_numpy()
    tenants, idx = np.unique(names, return_inverse=True)
    order = np.argsort(df["req_time_s"].to_numpy(), kind="stable")
    return _mk(
        "vtc-lmsys",
        df["req_time_s"].to_numpy(np.float64)[order],
        df["prompt_len"].to_numpy()[order],
        df["output_len"].to_numpy()[order],
        tenant=idx[order],
        tenants=tuple(str(t) for t in tenants),
        meta={"source": "VTC-artifact fair_bench (LMSYS Chatbot Arena)", "licence": "Apache-2.0"},
    )


# ---------------------------------------------------------------- length tables
@dataclass(frozen=True, slots=True)
class LengthTable:
    """Observed (prompt, output) token-length pairs, sampled jointly by synthetic specs."""

    name: str
    prompt_len: np.ndarray
    output_len: np.ndarray

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """n pairs drawn with replacement (prompt tokens, output tokens)."""
        i = rng.integers(0, len(self.prompt_len), n)
        return self.prompt_len[i], self.output_len[i]


@lru_cache(maxsize=8)
def load_length_table(name: str) -> LengthTable:
    """A length table: ``sharegpt``, ``arxiv``, or the lengths of any bundled trace."""
    if name in LENGTH_TABLES:
        df = pd.read_csv(io.BytesIO(bundled_bytes(TRACE_FILES[name])))
        p = df["num_prefill_tokens"].to_numpy().astype(np.int32)
        o = df["num_decode_tokens"].to_numpy().astype(np.int32)
    else:
        w = load_trace(name)
        p, o = w.prompt_len, w.output_len
    p.flags.writeable = False
    o.flags.writeable = False
    return LengthTable(name, p, o)


def load_trace(name: str) -> Workload:
    """A bundled trace with arrivals by short name (not the ServeGen fits; see servegen.py)."""
    loaders = {
        "azure-conv": lambda: load_azure("conv"),
        "azure-code": lambda: load_azure("code"),
        "mooncake-conv": lambda: load_mooncake("conversation"),
        "mooncake-synthetic": lambda: load_mooncake("synthetic"),
        "vtc-lmsys": load_vtc,
    }
    if name not in loaders:
        raise ValueError(f"unknown trace {name!r} (known: {', '.join(loaders)})")
    return loaders[name]()
