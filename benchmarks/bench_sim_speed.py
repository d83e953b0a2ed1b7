"""Simulator speed and memory: simulated requests per second of wall (and CPU) time, peak RSS.

    python benchmarks/bench_sim_speed.py            # azure-conv × every batching mode + 10k/100k/1M Poisson
    python benchmarks/bench_sim_speed.py --quick    # without the 1M case

Each case runs in a fresh subprocess so its peak RSS (ru_maxrss) is its own; "sim MB" is the
peak RSS minus the RSS after the workload was built (what the simulation itself added).
Times are the best of ``--repeat`` runs (default 5; 1 for the 1M case), as ``timeit`` does: the
machine is shared, and the minimum is the least disturbed measurement.
Deployment: Llama-3.1-8B on one H100 (vLLM V1 preset). Targets (servetune issue 3):
>= 20,000 simulated req/s on azure-conv, < 1 GB for a million requests.
The header says whether the simulator core runs compiled (mypyc: what ``pip install .``
builds; in a checkout ``python setup.py build_ext --inplace``) or as pure Python source.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AZURE_CONV = Path("/work/shared/data/traces/azure_llm_2023_conv.csv")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _azure_conv():
    try:
        from workloads import load_workload

        return load_workload("azure-conv")
    except (ImportError, ValueError):  # workloads/ not there yet: read the trace directly
        import numpy as np
        import pandas as pd

        from workloads.workload import build_workload

        df = pd.read_csv(AZURE_CONV)
        t = pd.to_datetime(df["TIMESTAMP"]).astype("int64").to_numpy() / 1e9
        return build_workload("azure-conv", t - t.min(), df["ContextTokens"].clip(lower=1),
                              np.maximum(df["GeneratedTokens"], 1))


def _poisson(n: int, rate: float = 10.0):
    import numpy as np

    from workloads.workload import build_workload

    rng = np.random.default_rng(0)
    arr = np.cumsum(rng.exponential(1.0 / rate, n))
    prompt = np.clip(rng.lognormal(6.8, 0.7, n), 1, 8000).astype(np.int64)   # ~ azure-conv shapes
    out = np.clip(rng.lognormal(4.9, 0.9, n), 1, 2000).astype(np.int64)
    return build_workload(f"poisson-{n // 1000}k", arr, prompt, out, sort=False)


def _sessions(n: int):
    """Multi-turn conversations (closed loop): ~n requests, 2-6 turns each, 10 s pauses."""
    from workloads.synthetic import Arrival, Lengths, Session, Tenant, generate_mix

    t = Tenant("chat", Arrival("poisson", rate=2.0), prompt=Lengths("lognormal", mean=800, sigma=0.6, max=4000),
               output=Lengths("lognormal", mean=200, sigma=0.7, max=1000),
               session=Session(Lengths("uniform", low=2, high=6), Lengths("lognormal", mean=100, sigma=0.6, max=800),
                               think_s=10.0))
    w = generate_mix(f"sessions-{n // 1000}k", [t], duration_s=n / 8.0, seed=0)
    return w


PRIMITIVES = {  # in-instance primitives switched on (servetune issue 5): case "azure-conv:<name>"
    "spec": {"speculation": "ngram", "spec_k": 4},
    "spec_dyn": {"speculation": "ngram", "spec_k": 4, "spec_dynamic": True},
    "tiers": {"cpu_offload_gb": 64.0, "ssd_offload_gb": 256.0, "offload_threshold": 0.8},
    "vtc": {"queue": "vtc", "tenant_cap_tokens_s": 0.0},
    "lora": {"max_loras": 4},
    "all": {"speculation": "ngram", "spec_k": 4, "spec_dynamic": True, "cpu_offload_gb": 64.0,
            "queue": "vtc", "max_loras": 4},
    "all_lora16": {"speculation": "ngram", "spec_k": 4, "spec_dynamic": True, "cpu_offload_gb": 64.0,
                   "queue": "vtc", "max_loras": 16},
}


def _with_tenants(w, k: int):
    """The workload with requests spread round-robin over k tenants."""
    import dataclasses

    import numpy as np

    return dataclasses.replace(w, tenant=(np.arange(w.n) % k).astype(np.int32),
                               tenants=tuple(f"t{i}" for i in range(k)))


def run_case(case: str, repeat: int) -> dict:
    from backends.base import Deployment
    from backends.sim import simulate
    from tuner.policy import Policy
    from workloads.adapters import assign_adapters

    kind, _, arg = case.partition(":")
    w = _azure_conv() if kind == "azure-conv" else _sessions(int(arg)) if kind == "sessions" else _poisson(int(arg))
    if arg in PRIMITIVES:
        policy = Policy(**PRIMITIVES[arg])
        if arg == "vtc" or arg.startswith("all"):
            w = _with_tenants(w, 8)
        if arg == "lora" or arg.startswith("all"):
            w = assign_adapters(w, 32)  # Zipf popularity, adapter i ∝ 1/(i+1)
    else:
        policy = Policy(batching=arg) if kind == "azure-conv" and arg else Policy()
    dep = Deployment("llama-3.1-8b", "h100")
    base = _rss_mb()
    wall = cpu = float("inf")
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        res = simulate(policy, w, dep)
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    done = int(res.records["finish_s"].notna().sum())
    return {"case": case, "workload": w.name, "policy": arg if arg in PRIMITIVES else policy.batching, "requests": w.n, "completed": done,
            "wall_s": wall, "cpu_s": cpu, "req_s_wall": w.n / wall, "req_s_cpu": w.n / cpu,
            "iterations": res.telemetry.counters["iterations"], "peak_rss_mb": peak, "sim_mb": peak - base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the 1M-request case")
    ap.add_argument("--repeat", type=int, default=5, help="runs per case; the best is reported (default 5)")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.repeat)))
        return
    cases = ["azure-conv:", "azure-conv:continuous", "azure-conv:decode_maximal", "azure-conv:static",
             *(f"azure-conv:{p}" for p in PRIMITIVES), "sessions:20000", "poisson:10000", "poisson:100000"] + ([] if args.quick else ["poisson:1000000"])
    hdr = (f"{'workload':14s} {'batching':15s} {'requests':>9s} {'iters':>9s} {'wall s':>8s} {'cpu s':>7s} "
           f"{'req/s wall':>11s} {'req/s cpu':>10s} {'peak RSS MB':>12s} {'sim MB':>7s}")
    import backends.sim.engine as engine

    core = "compiled (mypyc)" if not engine.__file__.endswith(".py") else "pure Python"
    print(f"Llama-3.1-8B on one H100 (vllm-v1 preset); simulator core: {core}; best of {args.repeat} runs per case "
          "(1M: one run)")
    print(hdr)
    print("-" * len(hdr))
    for case in cases:
        rep = 1 if case.endswith("000000") else args.repeat
        out = subprocess.run([sys.executable, __file__, "--case", case, "--repeat", str(rep)], cwd=ROOT,
                             capture_output=True, text=True)
        if out.returncode:
            print(f"{case}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['workload']:14s} {r['policy']:15s} {r['requests']:9d} {r['iterations']:9.0f} {r['wall_s']:8.2f} "
              f"{r['cpu_s']:7.2f} {r['req_s_wall']:11,.0f} {r['req_s_cpu']:10,.0f} {r['peak_rss_mb']:12.0f} "
              f"{r['sim_mb']:7.0f}", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
