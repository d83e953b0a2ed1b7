"""Random policies from the full checklist's search space, every invariant checked: the simulator
either serves the workload or refuses the combination with a one-line ValueError; it never breaks
an invariant, crashes or runs forever. (This sweep found a livelock of prefilled requests paged
out before their first decode step, and paged-out requests declared stranded after the last
running request left: tests/sim/test_primitives_prefilled.py, test_primitives_offload.py.)"""

from __future__ import annotations

import dataclasses

import numpy as np
import optuna
import pytest
from simkit import long_workload

from backends.base import Deployment
from backends.sim import SimBackend
from tuner.space import for_workload, sample
from tuner.study_spec import load_study
from workloads.adapters import assign_adapters
from workloads.workload import build_workload

MODELS = ("llama-3.1-8b", "qwen2.5-7b", "mistral-nemo-12b", "llama-2-7b")
GPUS = ("a100-40gb", "h100-sxm", "l40s")
ENGINES = ("vllm-v1", "sglang", "vllm-v0", "tensorrt-llm")


def _tenants_and_adapters(w, tenants: int = 4, adapters: int = 8):
    """Requests round-robin over ``tenants`` and on ``adapters`` LoRA adapters (Zipf popularity)."""
    w = dataclasses.replace(w, tenant=(np.arange(w.n) % tenants).astype(np.int32),
                            tenants=tuple(f"t{i}" for i in range(tenants)))
    return assign_adapters(w, adapters)


def _workloads(study_workload):
    rng = np.random.default_rng(9)
    n = 150
    g = rng.integers(0, 40, n)
    shared = build_workload("shared40", np.cumsum(rng.exponential(0.25, n)), 4096 + rng.integers(200, 400, n),
                            rng.integers(20, 80, n), prefix_blocks=[[int(gi) * 1000 + k for k in range(8)] for gi in g],
                            prefix_block_tokens=512)
    long = long_workload()
    return {"shared": _tenants_and_adapters(shared), "long": _tenants_and_adapters(long), "study": study_workload}


def sweep(seed: int, n: int) -> tuple[int, int, list[str]]:
    """(served, refused, errors) of ``n`` random policies, cycling workloads, memory fractions,
    engines, GPUs and models."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_study("studies/full-checklist.yaml")
    base, wls = spec.base_policy(), _workloads(spec.load_workload())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    backend = SimBackend(check=True)
    served = refused = 0
    errors: list[str] = []
    for k in range(n):
        trial = study.ask()
        name = list(wls)[k % 3]
        w = wls[name]
        dep = Deployment(MODELS[(k // 8) % 4], GPUS[(k // 3) % 3], n_gpus=4, engine=ENGINES[(k // 2) % 4])
        try:
            policy = sample(trial, for_workload(spec.search, w), base, n_gpus=dep.n_gpus)
            if k % 2:
                policy = policy.replace(gpu_memory_utilization=0.5)
            res = backend.run(policy, w, dep, seed=k)
            rec = res.records
            if not (np.isfinite(rec.finish_s.to_numpy()) | rec.failed.to_numpy() | rec.rejected.to_numpy()).all():
                errors.append(f"{k} {name} {dep}: a request neither finished, failed nor was rejected")
            served += 1
        except ValueError:
            refused += 1
        except Exception as e:  # noqa: BLE001 (what the test reports)
            errors.append(f"{k} {name} {dep.model} {dep.gpu} {dep.engine}: {type(e).__name__}: {e}; "
                          f"policy {policy.to_dict()}")
        study.tell(trial, 0.0)
    return served, refused, errors


def test_random_policies_are_served_or_refused():
    served, refused, errors = sweep(seed=0, n=90)
    assert not errors, "\n".join(errors)
    assert served > 0.8 * 90


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_policies_are_served_or_refused_longer_sweep(seed):
    served, refused, errors = sweep(seed=seed, n=300)
    assert not errors, "\n".join(errors)
    assert served > 0.8 * 300
