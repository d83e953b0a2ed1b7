"""Real vLLM v0.15.1 serving runs on H100 (``vllm_v0151_trainval_runs.csv``) as simulator inputs.

Each run's workload is regenerated statistically from the table in ``shared/data/SOURCES.md``
(the per-request traces are not public):

* load stages of ``rate × duration`` with EXACTLY round(rate × duration) requests each and
  exponential gaps rescaled so the stage's arrivals span its duration (inference-perf's
  ``constant`` load: Poisson-like with an exact count);
* requests cycle round-robin over ``groups × users`` prompts (inference-perf ``shared_prefix``);
  the prompt is its group's system prompt + a question, lengths × 1.045 (the client re-tokenises
  random token ids: measured prompts run ≈ 4.5 % above nominal);
* the KV blocks of a group's system prompt are shared (prefix blocks of 16 tokens, vLLM's block
  size); ``share="prompt"`` also shares each (group, user) question (inference-perf repeats the
  same prompt list, so whole prompts can hit vLLM's prefix cache);
* output = the max output tokens (``ignore_eos``).

Metrics compared (all ms): mean TTFT, mean E2E and TPOT = (E2E mean − TTFT mean) / (output − 1)
with output = the tokens the engine generated (max output, ``ignore_eos``). The study's own
``tpot_mean_study_ms`` divides by the CLIENT's output count, which for the two Llama-2-7B runs is
≈ 0.78 × the generated tokens (re-tokenisation of random ids), so it is recomputed here.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def _trainval_csv() -> Path:
    """Where the trainval runs are read from: ``$SERVETUNE_TRAINVAL_CSV``, else
    ``shared/data/profiles/`` beside the checkout (the table is not bundled: its licence is not
    stated upstream, ``backends/sim/data/profiles/DATA.md``)."""
    env = os.environ.get("SERVETUNE_TRAINVAL_CSV")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "profiles" / "vllm_v0151_trainval_runs.csv"


TRAINVAL_CSV = _trainval_csv()
PROMPT_SCALE = 1.045
"""Measured prompt tokens / nominal (client re-tokenisation), from the table's measured means."""


@dataclass(frozen=True, slots=True)
class WorkloadDef:
    """One row of the SOURCES.md workload table."""

    stages: tuple[tuple[float, float], ...]
    """(rate req/s, duration s) per load stage."""
    groups: int
    users: int
    system_len: int
    question_len: int
    max_output: int


WORKLOADS: dict[str, WorkloadDef] = {
    "general": WorkloadDef(((8, 600), (20, 600)), 9, 5, 100, 447, 248),
    "codegen": WorkloadDef(((5, 600), (10, 600)), 11, 4, 100, 466, 247),
    "roleplay": WorkloadDef(((6, 1200),), 10, 5, 150, 600, 251),
    "reasoning": WorkloadDef(((4, 1200),), 23, 1, 100, 934, 1448),
    "general-lite": WorkloadDef(((2.5, 600), (6, 600)), 9, 5, 100, 447, 248),
    "reasoning-lite": WorkloadDef(((1, 1200),), 23, 1, 100, 934, 1448),
}


@dataclass(frozen=True, slots=True)
class TrainvalRun:
    """One measured run: model, deployment settings and measured means (ms)."""

    run_id: str
    model: str
    tp: int
    weight_dtype: str
    max_num_batched_tokens: int
    gpu_memory_utilization: float
    max_num_seqs: int
    max_model_len: int
    cpu_offload: bool
    workload: str
    ttft_ms: float
    e2e_ms: float
    tpot_study_ms: float
    gpu: str = "h100-sxm"
    """GPU catalog name (from the row's gpu_sku / gpu_type)."""
    wdef: WorkloadDef | None = None
    """The workload as the row defines it (stage rates/durations, groups, users, lengths); None =
    ``WORKLOADS[workload]``."""
    cpu_offload_gb: float = 0.0
    """vLLM's ``--kv-offloading-size`` (CPU KV tier, GiB for the whole instance; 0 = none)."""
    stage_ms: tuple[tuple[float, float], ...] = ()
    """Measured (mean TTFT, mean E2E) per load stage, ms (the row's ``stage<k>_*`` columns; empty
    when the row lacks them)."""
    dp: int = 1
    """vLLM's ``--data-parallel-size``: engine replicas of ``tp`` GPUs each behind the API
    server's load balancer (simulated as replicas with least-loaded routing)."""
    tails_ms: tuple[float, float, float, float] = (math.nan,) * 4
    """Measured TTFT p90, TTFT p99, E2E p90, E2E p99 over the whole run, ms (``TAIL_COLUMNS``; NaN
    where the row lacks them)."""

    @property
    def workload_def(self) -> WorkloadDef:
        return self.wdef or WORKLOADS[self.workload]

    @property
    def tpot_ms(self) -> float:
        """(E2E − TTFT) / (generated tokens − 1), ms (see module doc)."""
        return (self.e2e_ms - self.ttft_ms) / (self.workload_def.max_output - 1)

    @property
    def label(self) -> str:
        return f"{self.model} tp{self.tp} {self.workload}"


TAIL_COLUMNS = ("ttft_p90_ms", "ttft_p99_ms", "e2e_p90_ms", "e2e_p99_ms")
"""The tail percentiles a row may give (``TrainvalRun.tails_ms``, ``tail_metrics``)."""
REQUIRED_COLUMNS = ("workload", "model_hf", "tp", "precision", "ttft_mean_ms", "e2e_mean_ms", "tpot_mean_study_ms")
"""Columns every row of a trainval runs CSV needs (the others have defaults)."""


def load_runs(path: str | Path = TRAINVAL_CSV) -> list[TrainvalRun]:
    """The runs of the trainval table (OSError when the file is missing)."""
    import pandas as pd

    from backends.sim.catalog import get_model

    p = Path(path)
    if not p.is_file():
        raise OSError(f"trainval runs: {p} not found (not bundled: give --runs FILE or set SERVETUNE_TRAINVAL_CSV)")
    try:
        df = pd.read_csv(p)
    except ValueError as e:  # not text, not a table, empty
        raise ValueError(f"trainval runs {p}: not a CSV table ({str(e).splitlines()[0]})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"trainval runs {p}: missing column(s) {', '.join(missing)} (needed: "
                         f"{', '.join(REQUIRED_COLUMNS)})")
    out = []
    for i, r in enumerate(df.to_dict("records")):
        wl = str(r["workload"])

        def num(key: str, default: float, r=r) -> float:
            v = r.get(key)
            return default if v is None or v != v else float(v)

        wdef = _row_workload(r)
        if wdef is None and wl not in WORKLOADS:
            raise ValueError(f"trainval row {i}: unknown workload {wl!r} and no stage/prompt columns to rebuild it")

        eid = r.get("exp_id")
        out.append(TrainvalRun(
            run_id=str(int(eid)) if eid == eid and eid is not None else f"row{i}",
            model=get_model(str(r["model_hf"])).name, tp=int(r["tp"]),
            weight_dtype="fp8" if "FP8" in str(r["precision"]).upper() else "bf16",
            max_num_batched_tokens=int(num("max_num_batched_tokens", 2048)),
            gpu_memory_utilization=num("gpu_memory_utilization", 0.9),
            max_num_seqs=int(num("max_num_seqs", 128)), max_model_len=int(num("max_model_len", 4096)),
            cpu_offload=str(r.get("cpu_offload")) == "True", workload=wl,
            ttft_ms=float(r["ttft_mean_ms"]), e2e_ms=float(r["e2e_mean_ms"]),
            tpot_study_ms=float(r["tpot_mean_study_ms"]), gpu=_gpu_of(r), wdef=wdef,
            cpu_offload_gb=_offload_gib(r), dp=max(int(num("dp", 1)), 1),
            stage_ms=_stage_ms(r, len((wdef or WORKLOADS[wl]).stages)),
            tails_ms=tuple(num(c, math.nan) for c in TAIL_COLUMNS)))  # type: ignore[arg-type]
    return out


def _stage_ms(r: dict, n: int) -> tuple[tuple[float, float], ...]:
    """(mean TTFT, mean E2E) of each of the row's ``n`` stages, ms; () unless all are given."""
    out = []
    for k in range(n):
        t, e = r.get(f"stage{k}_ttft_mean_ms"), r.get(f"stage{k}_e2e_mean_ms")
        if t is None or e is None or t != t or e != e:
            return ()
        out.append((float(t), float(e)))
    return tuple(out)


def _offload_gib(r: dict) -> float:
    """The CPU KV tier of a row, GiB: ``--kv-offloading-size=X`` in ``kv_offload_args`` (vLLM
    v0.15: GiB for all TP ranks together), 0 when ``cpu_offload`` is off."""
    if str(r.get("cpu_offload")) != "True":
        return 0.0
    m = re.search(r"--kv-offloading-size[= ]([0-9.]+)", str(r.get("kv_offload_args") or ""))
    if m is None:
        raise ValueError(f"trainval run {r.get('exp_id')}: cpu_offload on but no --kv-offloading-size in kv_offload_args")
    return float(m.group(1))


def _gpu_of(r: dict) -> str:
    """Catalog GPU of a row: its gpu_sku / gpu_type (PCIe SKUs map to the PCIe entry)."""
    from backends.sim.catalog import get_gpu

    sku, typ = str(r.get("gpu_sku") or ""), str(r.get("gpu_type") or "H100")
    for name in ((f"{typ}-PCIe" if "pcie" in sku.lower() else ""), sku.split(" ")[0], typ):
        if name and name != "nan":
            try:
                return get_gpu(name).name
            except ValueError:
                continue
    raise ValueError(f"trainval run: unknown GPU {sku or typ!r}")


def _row_workload(r: dict) -> WorkloadDef | None:
    """The workload definition carried by the row's own columns, if complete."""
    try:
        rates = [float(x) for x in str(r["stage_rates_req_s"]).split(";")]
        durs = [float(x) for x in str(r["stage_durations_s"]).split(";")]
        vals = [int(float(r[k])) for k in ("num_unique_system_prompts", "num_users_per_system_prompt",
                                           "system_prompt_len_tok", "question_len_tok", "output_len_max_tok")]
    except (KeyError, ValueError, TypeError):
        return None
    if len(rates) != len(durs):
        return None
    return WorkloadDef(tuple(zip(rates, durs, strict=True)), *vals)


def regenerate(workload: str | WorkloadDef, seed: int = 0, *, share: str = "system", block_tokens: int = 16,
               duration_scale: float = 1.0):
    """A ``Workload`` statistically equivalent to the named trainval workload (see module doc).
    ``share``: ``system`` (only the group's system prompt blocks are shared) or ``prompt``
    (the whole (group, user) prompt repeats). ``duration_scale`` < 1 shortens every stage at the
    same rates (for fast fitting)."""
    from workloads.workload import build_workload

    if isinstance(workload, str) and workload not in WORKLOADS:
        raise ValueError(f"workload {workload!r}: choose one of {', '.join(WORKLOADS)}")
    if share not in ("system", "prompt"):
        raise ValueError(f"share={share!r}: must be system or prompt")
    d = WORKLOADS[workload] if isinstance(workload, str) else workload
    name = workload if isinstance(workload, str) else "custom"
    rng = np.random.default_rng(seed)
    arrivals, t0 = [], 0.0
    for rate, dur in d.stages:
        dur = dur * duration_scale
        n = int(round(rate * dur))
        gaps = rng.exponential(1.0, n)
        arrivals.append(t0 + (np.cumsum(gaps) - gaps) / gaps.sum() * dur)
        t0 += dur
    arrival = np.concatenate(arrivals)
    n = arrival.size
    prompt = int(round((d.system_len + d.question_len) * PROMPT_SCALE))
    sys_blocks = int(math.floor(d.system_len * PROMPT_SCALE / block_tokens))
    all_blocks = prompt // block_tokens
    k = np.arange(n) % (d.groups * d.users)
    group, user = k // d.users, k % d.users
    blocks = []
    for g, u in zip(group.tolist(), user.tolist(), strict=True):
        b = [g * 10_000 + j for j in range(sys_blocks)]
        if share == "prompt":
            b += [(1 + g * 1000 + u) * 10_000_000 + j for j in range(sys_blocks, all_blocks)]
        blocks.append(b)
    out = np.full(n, d.max_output, np.int64)
    return build_workload(f"trainval-{name}", arrival, np.full(n, prompt, np.int64), out, max_output=out,
                          prefix_blocks=blocks, prefix_block_tokens=block_tokens, sort=False,
                          meta={"source": "vllm_v0151_trainval_runs (SOURCES.md table)", "share": share})


def policy_for(run: TrainvalRun):
    """The run's vLLM settings as a servetune ``Policy`` (vLLM V1 defaults: chunked prefill, no free-block watermark,
    prefix caching, block 16). A run with ``--kv-offloading-size`` gets a CPU KV tier of that size
    with paging threshold 1: vLLM's offloading connector keeps the GPU prefix cache's own LRU
    eviction and serves evicted blocks from the CPU copy. A run with ``dp`` > 1 gets ``dp``
    replicas with least-loaded routing (vLLM's API server sends each request to the engine with
    the fewest waiting and running requests). For an MoE model vLLM also shards the experts over
    all dp × tp GPUs and steps the replicas together: the cluster shares the expert layers
    (``cluster.expert_sharing_ranks``) and each rank waits out the others' prefill steps in mean
    field (``Simulation._lockstep_wait``), not step by step."""
    from tuner.policy import Policy

    off = {"cpu_offload_gb": run.cpu_offload_gb, "offload_threshold": 1.0} if run.cpu_offload_gb else {}
    dp = {"replicas": run.dp, "routing": "least_loaded"} if run.dp > 1 else {}
    return Policy(batching="chunked", max_num_seqs=run.max_num_seqs, max_num_batched_tokens=run.max_num_batched_tokens,
                  tp=run.tp, block_size=16, gpu_memory_utilization=run.gpu_memory_utilization, prefix_caching=True,
                  kv_watermark=0.0, **off, **dp)


def deployment_for(run: TrainvalRun):
    from backends.base import Deployment

    return Deployment(model=run.model, gpu=run.gpu, n_gpus=run.tp * run.dp, engine="vllm-v1",
                      max_model_len=run.max_model_len, weight_dtype=run.weight_dtype)


def _served_ms(records) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(arrival s, TTFT ms, E2E ms) of the finished requests (neither rejected nor failed)."""
    r = records[~(records.rejected | records.failed) & records.finish_s.notna()]
    arr = r.arrival_s.to_numpy()
    return arr, (r.first_token_s.to_numpy() - arr) * 1e3, (r.finish_s.to_numpy() - arr) * 1e3


def stage_metrics(records, wdef: WorkloadDef, duration_scale: float = 1.0) -> tuple[tuple[float, float], ...]:
    """(mean TTFT, mean E2E) in ms of the finished requests that arrived in each load stage."""
    arr, ttft, e2e = _served_ms(records)
    out, t0 = [], 0.0
    for _, dur in wdef.stages:
        t1 = t0 + dur * duration_scale
        m = (arr >= t0) & (arr < t1)
        out.append((float(ttft[m].mean()) if m.any() else math.nan, float(e2e[m].mean()) if m.any() else math.nan))
        t0 = t1
    return tuple(out)


def tail_metrics(records) -> tuple[float, float, float, float]:
    """TTFT p90, TTFT p99, E2E p90, E2E p99 in ms of finished requests (``TAIL_COLUMNS``)."""
    _, ttft_ms, e2e_ms = _served_ms(records)
    if not ttft_ms.size:
        return (math.nan,) * 4  # type: ignore[return-value]
    return (float(np.percentile(ttft_ms, 90)), float(np.percentile(ttft_ms, 99)),
            float(np.percentile(e2e_ms, 90)), float(np.percentile(e2e_ms, 99)))


def run_metrics(records, max_output: int) -> tuple[float, float, float]:
    """(mean TTFT, mean E2E, TPOT) in ms of finished requests (TPOT as in the module doc)."""
    _, ttft_ms, e2e_ms = _served_ms(records)
    ttft, e2e = float(ttft_ms.mean()), float(e2e_ms.mean())
    return ttft, e2e, (e2e - ttft) / (max_output - 1)


__all__ = ["TAIL_COLUMNS", "TRAINVAL_CSV", "WORKLOADS", "TrainvalRun", "WorkloadDef", "deployment_for", "load_runs", "policy_for",
           "regenerate", "run_metrics", "stage_metrics", "tail_metrics"]
