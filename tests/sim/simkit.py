"""Helpers for the simulator tests: small synthetic workloads and one-line runs."""

from __future__ import annotations

import numpy as np

from backends.base import Deployment
from backends.sim import simulate
from tuner.policy import Policy
from tuner.scorecard import score
from workloads.workload import DEFAULT_SLO, build_workload

H100_8B = Deployment("llama-3.1-8b", "h100")


def poisson_workload(n: int, rate: float, prompt, output, *, seed: int = 1, name: str = "synthetic", **kw):
    """n requests with Poisson arrivals at ``rate`` req/s; prompt/output: an int or (lo, hi) uniform."""
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1.0 / rate, n))

    def draw(x):
        return np.full(n, x) if np.isscalar(x) else rng.integers(x[0], x[1] + 1, n)

    return build_workload(name, arrival, draw(prompt), draw(output), slo_classes=kw.pop("slo_classes", (DEFAULT_SLO,)),
                          **kw)


def run(workload, deployment: Deployment = H100_8B, seed: int = 0, check: bool = True, **knobs):
    """(RunResult, Scorecard) of ``workload`` under Policy(**knobs), invariants fully checked."""
    res = simulate(Policy(**knobs), workload, deployment, seed=seed, check=check)
    return res, score(res, workload)


def long_workload():
    """100 long requests at 1 req/s (prompts 3-6k, outputs 300-800 tokens): on a small KV pool
    (Llama-3.1-8B, A100-40GB at 0.5 memory) the decodes preempt each other."""
    return poisson_workload(100, 1.0, (3000, 6000), (300, 800), seed=3)
