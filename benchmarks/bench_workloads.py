"""Workload loading and generation speed/memory (servetune issue 2, "Workloads").

Each figure is measured in a FRESH subprocess (cold caches), so a load time includes
decompressing the bundled xz file, not importing numpy/pandas (warmed up first).
Peak MB is tracemalloc's peak of the Python heap during the call (a separate run).

    python benchmarks/bench_workloads.py

Targets: azure-conv loads well under 1 s; a 1M-request Poisson workload generates in a couple
of seconds and takes < 100 MB (its columns; the peak during generation is shown as well).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "load azure-conv": "load_workload('azure-conv')",
    "load azure-code": "load_workload('azure-code')",
    "load mooncake-conv": "load_workload('mooncake-conv')",
    "load mooncake-synthetic": "load_workload('mooncake-synthetic')",
    "load vtc-lmsys": "load_workload('vtc-lmsys')",
    "length table sharegpt": "load_lengths('sharegpt')",
    "servegen-reason (73 clients, 1 h)": "load_workload('servegen-reason')",
    "servegen-mm (35 clients, 1 h)": "load_workload('servegen-mm')",
    "spec chat_batch_mix.yaml": "load_workload(EX / 'chat_batch_mix.yaml')",
    "synthetic Poisson 1M": "poisson(100.0, num_requests=1_000_000)",
    "synthetic 2-tenant mix 1M": "generate_mix('m', [Tenant('a', Arrival('gamma', rate=60.0, cv=2.0), lengths='sharegpt'), "
    "Tenant('b', Arrival('poisson', rate=40.0))], num_requests=1_000_000)",
}

PROBE = r"""
import json, time, tracemalloc
from pathlib import Path
import numpy as np, pandas
import workloads
from workloads import load_workload, load_lengths, poisson, generate_mix, Tenant, Arrival
EX = Path(workloads.__file__).parent / "examples"
import io, lzma, tarfile, ast, yaml  # warm-up: pandas' lazy imports are not part of a load
pandas.read_csv(io.StringIO("a,b\n1,x\n"))
pandas.to_datetime(pandas.Series(["2023-11-16 18:17:03.9799600"]), format="%Y-%m-%d %H:%M:%S.%f")
if {trace}:
    tracemalloc.start()
t = time.perf_counter()
obj = {expr}
dt = time.perf_counter() - t
peak = tracemalloc.get_traced_memory()[1] if {trace} else 0
cols = [getattr(obj, c) for c in ("arrival_s", "prompt_len", "output_len", "max_output", "tenant", "priority",
        "slo_class", "adapter", "prefix_offsets", "prefix_ids") if getattr(obj, c, None) is not None]
if not cols:
    cols = [obj.prompt_len, obj.output_len]
n = len(cols[0])
print(json.dumps({{"s": dt, "peak_mb": peak / 1e6, "mb": sum(c.nbytes for c in cols) / 1e6, "n": n}}))
"""


def run(expr: str, trace: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE.format(expr=expr, trace=trace)], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    print(f"{'case':<36} {'requests':>10} {'time s':>8} {'columns MB':>11} {'peak MB':>8}")
    for name, expr in CASES.items():
        r = run(expr, trace=False)  # time without tracemalloc's overhead
        peak = run(expr, trace=True)["peak_mb"]  # Python-heap peak in a second fresh process
        print(f"{name:<36} {r['n']:>10,} {r['s']:>8.3f} {r['mb']:>11.1f} {peak:>8.1f}")
    data = ROOT / "workloads" / "data"
    total = 0
    print(f"\n{'bundled file':<72} {'bytes':>10}")
    for p in sorted(data.iterdir()):
        total += p.stat().st_size
        print(f"{p.name:<72} {p.stat().st_size:>10,}")
    print(f"{'total':<72} {total:>10,}")


if __name__ == "__main__":
    main()
