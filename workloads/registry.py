"""Resolve a workload by bundled short name or by file (YAML spec, Parquet, CSV, JSONL)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workloads.workload import Workload


@dataclass(frozen=True, slots=True)
class Bundled:
    """A bundled data set: ``kind`` is "trace" (requests with arrivals), "servegen" (per-client
    fits that generate requests; options clients/top/start_s/duration_s, seeded) or "lengths"
    (a length table without arrivals, for synthetic specs)."""

    name: str
    kind: str
    description: str


BUNDLED: dict[str, Bundled] = {
    b.name: b
    for b in (
        Bundled("azure-conv", "trace", "Azure LLM inference 2023, conversation: 19,366 req over 1 h (CC-BY-4.0)"),
        Bundled("azure-code", "trace", "Azure LLM inference 2023, code: 8,819 req over 1 h, long prompts (CC-BY-4.0)"),
        Bundled("mooncake-conv", "trace", "Mooncake FAST'25 conversation: 12,031 req, 512-token prefix blocks (Apache-2.0)"),
        Bundled("mooncake-synthetic", "trace", "Mooncake FAST'25 synthetic: 3,993 req, heavy prefix reuse (Apache-2.0)"),
        Bundled("vtc-lmsys", "trace", "VTC LMSYS multi-client: 1,500 req, 27 skewed tenants over 600 s (Apache-2.0)"),
        Bundled("servegen-reason", "servegen", "ServeGen DeepSeek-R1 client fits, 73 clients x 24 h; default: 1 h from 12 h (Apache-2.0)"),
        Bundled("servegen-mm", "servegen", "ServeGen multimodal image client fits, 35 clients x 24 h; default: 1 h from 12 h (Apache-2.0)"),
        Bundled("sharegpt", "lengths", "ShareGPT-8k length table (Sarathi-Serve), 30,731 prompt/output pairs (Apache-2.0)"),
        Bundled("arxiv", "lengths", "arXiv summarisation length table (Vidur), 28,257 prompt/output pairs (MIT)"),
    )
}

FILE_SUFFIXES = (".yaml", ".yml", ".parquet", ".csv", ".jsonl")


def bundled_names(kind: str | None = None) -> tuple[str, ...]:
    """Short names of the bundled data sets (optionally of one kind)."""
    return tuple(n for n, b in BUNDLED.items() if kind is None or b.kind == kind)


def load_workload(name_or_path: str | Path, *, seed: int | None = None, **options: Any) -> Workload:
    """A Workload from a bundled short name or a workload file.

    Names: see ``bundled_names()`` (length tables are not workloads: use them in a synthetic spec).
    Files: ``.yaml``/``.yml`` spec, ``.parquet``/``.csv``/``.jsonl`` explicit requests.
    ``seed`` drives generated workloads (ServeGen, synthetic specs); None ⇒ a spec's own seed
    (0 when it has none). ``options`` go to the ServeGen generator (clients, top, start_s,
    duration_s). Raises ValueError for an unknown name, FileNotFoundError for a missing file.
    """
    key = str(name_or_path)
    if key in BUNDLED:
        b = BUNDLED[key]
        if b.kind == "lengths":
            raise ValueError(f"{key!r} is a length table (prompt/output lengths, no arrivals): use it in a synthetic "
                             f"spec (lengths: {key}) or inspect it with `servetune workloads inspect {key}`")
        if b.kind == "servegen":
            from workloads.servegen import load_servegen

            return load_servegen(key, seed=0 if seed is None else seed, **options)
        if options:
            raise ValueError(f"{key!r} takes no options (got {', '.join(options)})")
        from workloads.traces import load_trace

        return load_trace(key)
    path = Path(key).expanduser()
    suffix = path.suffix.lower()
    if suffix in FILE_SUFFIXES:
        if options:
            raise ValueError(f"{key}: a workload file takes no options (got {', '.join(options)})")
        if suffix in (".yaml", ".yml"):
            from workloads.spec import load_spec

            return load_spec(path, seed=seed)
        from workloads.files import read_requests

        return read_requests(path)
    if path.exists():
        raise ValueError(f"{key}: unknown workload file type {suffix or '(none)'!r} (expected {', '.join(FILE_SUFFIXES)})")
    raise ValueError(f"unknown workload {key!r}: not a bundled name ({', '.join(BUNDLED)}) nor a workload file "
                     f"({', '.join(FILE_SUFFIXES)})")


def load_cut(name_or_path: str | Path, *, seed: int | None = None, first: int | None = None,
             rate: float | None = None) -> Workload:
    """``load_workload`` cut to its first ``first`` requests, then rescaled to ``rate`` req/s
    (``transforms.first_at_rate``: a study's order), for the ``--first``/``--rate`` flags."""
    from workloads.transforms import first_at_rate

    return first_at_rate(load_workload(name_or_path, seed=seed), first, rate)


def load_lengths(name_or_path: str | Path):
    """A LengthTable from a bundled name (any kind) or from the lengths of any workload file."""
    from workloads.traces import LengthTable, load_length_table

    key = str(name_or_path)
    if key in BUNDLED and BUNDLED[key].kind != "servegen":
        return load_length_table(key)
    w = load_workload(key)
    return LengthTable(w.name, w.prompt_len, w.output_len)
