"""Cluster simulator speed: wall time of azure-conv (19,366 requests over 1 h) on 4 × H100,
Llama-3.1-8B, for one instance and for 4 replicas (round robin, least_loaded, migration, spot),
2:2 disaggregated pools and autoscaling. A cluster run should cost about the sum of its
instances' runs plus the router's Python loop over requests.

    python benchmarks/bench_cluster.py [--repeat 3]

Times are the best of ``--repeat`` runs (the machine is shared).
"""

from __future__ import annotations

import argparse
import time

from backends.base import Deployment
from backends.sim import simulate
from backends.sim.cluster import simulate_cluster
from tuner.policy import Policy
from tuner.scorecard import score
from workloads import load_workload

CASES = {
    "1 instance (tp=1)": (Policy(), 1),
    "4 replicas round_robin": (Policy(replicas=4), 4),
    "4 replicas least_loaded": (Policy(replicas=4, routing="least_loaded"), 4),
    "4 replicas prefix_affinity+migration": (Policy(replicas=4, routing="prefix_affinity", migration=True), 4),
    "4 replicas, half spot (60/h)": (Policy(replicas=4, spot_fraction=0.5, spot_interruptions_per_hour=60), 4),
    "disaggregated 2P:2D": (Policy(disaggregated=True, prefill_instances=2, decode_instances=2,
                                   routing="least_loaded"), 4),
    "autoscale 1..4": (Policy(autoscale=True, cold_start_s=30), 4),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    w = load_workload("azure-conv")
    print(f"azure-conv: {w.n} requests, {w.rate:.2f} req/s")
    print(f"{'case':40s} {'wall s':>8s} {'req/s':>9s} {'ttft p99 ms':>12s} {'tpot p50 ms':>12s} {'$/1M tok':>9s}")
    for name, (pol, n_gpus) in CASES.items():
        dep = Deployment("llama-3.1-8b", "h100", n_gpus=n_gpus)
        best, res = float("inf"), None
        for _ in range(args.repeat):
            t = time.perf_counter()
            res = simulate(pol, w, dep) if n_gpus == 1 else simulate_cluster(pol, w, dep)
            best = min(best, time.perf_counter() - t)
        s = score(res, w)
        print(f"{name:40s} {best:8.2f} {w.n / best:9.0f} {s.ttft_p99_ms:12.1f} {s.tpot_p50_ms:12.2f} "
              f"{s.usd_per_1m_tokens:9.3f}")


if __name__ == "__main__":
    main()
