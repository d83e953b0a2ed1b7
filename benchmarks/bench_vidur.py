"""servetune's simulator against Microsoft's Vidur on the same requests (servetune issue 8).

Both simulate ONE Llama-2-7B replica on one H100 (TP1) serving the same requests (the first N
of the Azure LLM 2023 conversation trace, rescaled to ``--rate`` req/s, context capped at 4096
tokens) under a vLLM-style scheduler (prefill-first, 4096-token budget) and a Sarathi-style one
(chunked prefill, ``--chunk`` token budget), with the same batch cap, block size, KV-cache
blocks (servetune's budget is passed to Vidur as ``num_blocks``), FCFS and recompute
preemption. Prints wall times, speed ratios and TTFT / TPOT p50/p90/p99 of both.

    scripts/setup_vidur.sh                      # once (else the bench runs it): Vidur in .venv-vidur
    python benchmarks/bench_vidur.py            # 2000 requests at 4 req/s
    python benchmarks/bench_vidur.py --requests 5000 --rate 6 --explain   # + per-iteration check

Vidur runs as a subprocess of its own venv (``benchmarks/vidur_runner.py`` = ``vidur.main``
plus phase timings). It has no network here, so its Hugging Face profile datasets are laid
out as an OFFLINE local dataset cache (``HF_HUB_OFFLINE=1``): the compute profile is Vidur's
measured per-operator MLP profile (bundled in backends/sim/data/profiles/vidur); its ATTENTION
profile is not available, so one is synthesised on Vidur's own profiling grid from a
FlashAttention roofline (see ``attention_profile``) - attention is therefore not an
independent check. The first run trains Vidur's random-forest predictors (cached in the work
dir, reported separately); the timed runs load them. Definitions as servetune's scorecard:
TTFT = first token - arrival; TPOT = (finish - first token) / (output tokens - 1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends.base import Deployment  # noqa: E402
from backends.sim import SimBackend  # noqa: E402
from backends.sim.catalog import default_activation_reserve, get_gpu, get_model, kv_budget  # noqa: E402
from backends.sim.costmodel import Efficiency  # noqa: E402
from tuner.policy import Policy  # noqa: E402
from workloads import transforms  # noqa: E402
from workloads.registry import load_workload  # noqa: E402
from workloads.workload import Workload  # noqa: E402

PROFILES = ROOT / "backends/sim/data/profiles/vidur"
"""Vidur's measured operator profiles as bundled with servetune (MIT, see the DATA.md beside them)."""
VIDUR_MODEL = "meta-llama/Llama-2-7b-hf"
MODEL, GPU, VIDUR_DEVICE, VIDUR_NODE = "llama-2-7b", "h100", "h100", "h100_dgx"
MAX_LEN = 4096
VLLM_TOKENS = 4096
"""vLLM-style prefill token budget: Vidur's ``max_tokens_in_batch`` default."""
TRACE_DATE = "2023-11-16"
HF_REV = "0" * 40
ATTN_LAUNCH_S = 5e-6
"""Floor of one attention kernel (launch + tail), s: an assumption of the synthetic profile."""
RF_GRIDS = {
    "tiny": {"num_estimators": [16], "max_depth": [16], "min_samples_split": [2], "k_fold_cv_splits": 2},
    "small": {"num_estimators": [250], "max_depth": [16, 32], "min_samples_split": [2, 5], "k_fold_cv_splits": 5},
    "vidur": {"num_estimators": [250, 500, 750], "max_depth": [8, 16, 32], "min_samples_split": [2, 5, 10],
              "k_fold_cv_splits": 10},
}


# ------------------------------------------------------------------ workload
def build_workload(n: int, rate: float, max_len: int = MAX_LEN) -> Workload:
    """First ``n`` Azure-conv requests at ``rate`` req/s, prompt + output <= ``max_len``, and at
    least one prompt and one output token (Vidur clips to that too)."""
    w = transforms.cap_context(transforms.scale_to_rate(transforms.first_n(load_workload("azure-conv"), n), rate),
                               max_len)
    out = np.maximum(w.output_len, 1)
    return w.replace(output_len=out, max_output=np.maximum(w.max_output, out))


def write_vidur_trace(w: Workload, path: Path) -> Path:
    """Vidur's trace-replay CSV (Date, Time s, PromptTokenCount, CompletionTokenCount), one row
    per request in workload order: Vidur's request id i is row i."""
    pd.DataFrame({"Date": TRACE_DATE, "Time": w.arrival_s, "PromptTokenCount": w.prompt_len,
                  "CompletionTokenCount": w.output_len}).to_csv(path, index=False)
    return path


# ------------------------------------------------------------------ Vidur's profile datasets
def _vidur_seq_lengths(max_seq_len: int) -> list[int]:
    space = list(range(0, 1025, 32)) + list(range(1024, 4 * 1024 + 1, 64))
    return sorted({s for s in space if s < max_seq_len})


def _vidur_chunk_sizes(max_seq_len: int, max_chunk: int) -> list[int]:
    space = list(range(32, 129, 32)) + list(range(256, 1025, 128)) + list(range(1024, 8 * 1024 + 1, 512))
    return sorted({c for c in space if c <= max_seq_len and c <= max_chunk})


def attention_profile(tp: int = 1, block_size: int = 16, max_seq_len: int = MAX_LEN,
                      max_batch: int = 128) -> pd.DataFrame:
    """A synthetic Vidur attention profile (ms per layer) on the grid of Vidur's attention
    profiler (``vidur.profiling.utils.get_attention_input_combinations``; decode batch sizes
    thinned to 1, 2, 4, 8, then every 8).

    Each kernel takes max(FLOPs / (peak x attn eff), HBM bytes / (bw x mem eff)) + ATTN_LAUNCH_S
    with servetune's default efficiencies, on servetune's GPU catalog: prefill chunk c over
    context k does 4·H·d·c·(k + (c+1)/2) FLOPs and reads K,V of k + c tokens; a decode batch of
    b sequences of context k reads b·k tokens of K,V. KV-cache save writes the chunk's K,V."""
    m, g, eff = get_model(MODEL), get_gpu(GPU), Efficiency()
    hq, hkv, d = m.heads // tp, max(1, m.kv_heads // tp), m.head_dim
    peak, bw = g.peak_flops("bf16") * eff.attn, g.hbm_bytes_s * eff.mem
    kv_tok = 2 * hkv * d * 2.0  # K and V bytes per token per layer
    rows = []

    def add(chunk: int, kv: int, batch: int) -> None:
        if chunk:  # prefill chunk of one request
            fl = 4.0 * hq * d * chunk * (kv + (chunk + 1) / 2.0)
            by = (kv + chunk) * kv_tok + 2 * chunk * hq * d * 2.0
            n_new = chunk
        else:
            fl = 4.0 * hq * d * kv * batch
            by = batch * (kv * kv_tok + 2 * hq * d * 2.0)
            n_new = batch
        t = max(fl / peak, by / bw) + ATTN_LAUNCH_S
        save = n_new * kv_tok * 2 / bw + ATTN_LAUNCH_S
        rows.append((chunk, kv, batch, chunk > 0, t * 1e3 if chunk else 0.0, 0.0 if chunk else t * 1e3, save * 1e3))

    for c in _vidur_chunk_sizes(max_seq_len, max_seq_len):
        for k in range(0, max_seq_len - c + 1, c):
            add(c, k, 1)
    for c in _vidur_seq_lengths(max_seq_len):
        if c:
            add(c, 0, 1)
    batches = [b for b in [1, 2, 4] + list(range(8, max_batch + 1, 8)) if b <= max_batch]
    for k in _vidur_seq_lengths(max_seq_len):
        if k:
            for b in batches:
                add(0, k, b)
    df = pd.DataFrame(rows, columns=["prefill_chunk_size", "kv_cache_size", "batch_size", "is_prefill",
                                     "time_stats.attn_prefill.median", "time_stats.attn_decode.median",
                                     "time_stats.attn_kv_cache_save.median"]).drop_duplicates(
        subset=["prefill_chunk_size", "kv_cache_size", "batch_size"])
    df["n_embd"], df["n_q_head"], df["n_kv_head"] = m.hidden, m.heads, m.kv_heads
    df["block_size"], df["num_tensor_parallel_workers"] = block_size, tp
    return df


def _hf_dataset(cache_dir: Path, repo: str, files: dict[str, pd.DataFrame], config: dict) -> None:
    """Lay ``files`` out as a Hugging Face dataset snapshot that ``snapshot_download`` finds
    offline (cache_dir/datasets--org--name/{refs/main, snapshots/<rev>/})."""
    base = cache_dir / ("datasets--" + repo.replace("/", "--"))
    snap = base / "snapshots" / HF_REV
    snap.mkdir(parents=True, exist_ok=True)
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text(HF_REV)
    for name, df in files.items():
        df.to_csv(snap / name, index=False, compression={"method": "xz", "preset": 0})
    (snap / "config.json").write_text(json.dumps(config))


def write_profile_datasets(work: Path, tp: int = 1, block_size: int = 16, max_batch: int = 128) -> tuple[str, str]:
    """Vidur's compute and network profile datasets under ``work/vidur_cache``; returns their
    repo ids (pass them as ``model_profiling_dataset`` / ``network_profiling_dataset``)."""
    cache = work / "vidur_cache"
    compute, network = "servetune-offline/vidur-compute-h100-llama-2-7b", "servetune-offline/vidur-network-h100-dgx"
    mlp = pd.read_csv(PROFILES / "compute_h100_meta-llama_Llama-2-7b-hf_mlp.csv.gz")
    _hf_dataset(cache / "profiling_data/compute", compute,
                {"mlp.csv.xz": mlp, "attention.csv.xz": attention_profile(tp, block_size, MAX_LEN, max_batch)},
                {"model": VIDUR_MODEL, "device_sku": VIDUR_DEVICE})
    allreduce = pd.read_csv(PROFILES / "network_h100_dgx_all_reduce.csv.gz")
    send_recv = pd.DataFrame(columns=["collective", "devices_per_node", "size", "time_stats.send_recv.median"])
    _hf_dataset(cache / "profiling_data/network", network,
                {"all_reduce.csv.xz": allreduce, "send_recv.csv.xz": send_recv}, {"sku": VIDUR_NODE})
    return compute, network


# ------------------------------------------------------------------ one configuration
@dataclass(frozen=True, slots=True)
class Setup:
    """One scheduler configuration, as both simulators spell it."""

    scheduler: str  # "vllm" | "sarathi"
    batch_cap: int = 128
    chunk: int = 512
    block_size: int = 16
    gpu_memory_utilization: float = 0.9

    def policy(self) -> Policy:
        vllm = self.scheduler == "vllm"
        return Policy(batching="continuous" if vllm else "chunked", max_num_seqs=self.batch_cap,
                      max_num_batched_tokens=VLLM_TOKENS if vllm else self.chunk, block_size=self.block_size,
                      gpu_memory_utilization=self.gpu_memory_utilization, kv_watermark=0.01, prefix_caching=False,
                      preemption="token", preemption_mode="recompute", queue="fcfs")

    def kv_blocks(self) -> int:
        """servetune's KV-cache blocks for this policy (Vidur gets the same number)."""
        p = self.policy()
        m = get_model(MODEL)
        return kv_budget(m, get_gpu(GPU), p.tp, p.gpu_memory_utilization, "bf16", "bf16", p.block_size,
                         activation_reserve=default_activation_reserve(m, p.tp, p.max_num_batched_tokens))

    def vidur_args(self, trace: Path, work: Path, repos: tuple[str, str], rf: str = "small",
                   native: bool = False) -> list[str]:
        """Vidur CLI flags for this configuration: ``repos`` from ``write_profile_datasets``,
        ``rf`` a key of RF_GRIDS, ``native`` Vidur's C++ execution-time predictor."""
        s, rfp = self.scheduler, "random_forrest_execution_time_predictor_config"
        args = {
            "seed": 0, "log_level": "warning",
            "replica_config_model_name": VIDUR_MODEL, "replica_config_device": VIDUR_DEVICE,
            "replica_config_network_device": VIDUR_NODE, "replica_config_tensor_parallel_size": 1,
            "replica_config_num_pipeline_stages": 1, "cluster_config_num_replicas": 1,
            "global_scheduler_config_type": "round_robin", "replica_scheduler_config_type": s,
            f"{s}_scheduler_config_batch_size_cap": self.batch_cap,
            "cache_config_block_size": self.block_size, "cache_config_num_blocks": self.kv_blocks(),
            "cache_config_watermark_blocks_fraction": 0.01,
            "request_generator_config_type": "trace_replay",
            "trace_request_generator_config_trace_file": trace, "trace_request_generator_config_date": TRACE_DATE,
            "trace_request_generator_config_max_tokens": MAX_LEN,
            "trace_request_generator_config_prefill_scale_factor": 1,
            "trace_request_generator_config_decode_scale_factor": 1,
            "trace_request_generator_config_time_scale_factor": 1,
            "execution_time_predictor_config_type": "random_forrest",
            f"{rfp}_model_profiling_dataset": repos[0], f"{rfp}_network_profiling_dataset": repos[1],
            f"{rfp}_cache_dir": work / "vidur_cache", f"{rfp}_prediction_max_tokens_per_request": MAX_LEN,
            f"{rfp}_prediction_max_prefill_chunk_size": MAX_LEN, f"{rfp}_prediction_max_batch_size": self.batch_cap,
            f"{rfp}_k_fold_cv_splits": RF_GRIDS[rf]["k_fold_cv_splits"],
            "metrics_config_output_dir": work / "vidur_out",
        }
        if s == "vllm":
            args["vllm_scheduler_config_max_tokens_in_batch"] = VLLM_TOKENS
        else:
            args["sarathi_scheduler_config_chunk_size"] = self.chunk
        flat = [f"--{k}={v}" for k, v in args.items()]
        for k in ("num_estimators", "max_depth", "min_samples_split"):
            flat += [f"--{rfp}_{k}", *map(str, RF_GRIDS[rf][k])]
        flat += ["--no-metrics_config_store_plots", "--no-metrics_config_enable_chrome_trace",
                 "--no-metrics_config_store_batch_metrics", "--no-metrics_config_store_utilization_metrics"]
        if native:
            flat.append(f"--{rfp}_use_native_execution_time_predictor")
        return flat


# ------------------------------------------------------------------ runs
@dataclass(frozen=True, slots=True)
class Outcome:
    """One simulator's run: wall and CPU time, per-request times (s, workload order)."""

    wall_s: float
    cpu_s: float
    ttft_s: np.ndarray
    tpot_s: np.ndarray
    finished: int
    detail: dict


def run_servetune(setup: Setup, w: Workload, repeat: int = 3) -> Outcome:
    """servetune's simulator in-process, ``repeat`` times (same seed, same result); wall and
    CPU time of ``run`` only (imports excluded): the median over the runs, the first run in
    ``detail["first_wall_s"]`` (it also parses the model/GPU catalogs)."""
    dep = Deployment(model=MODEL, gpu=GPU, n_gpus=1, engine="vllm-v1", max_model_len=MAX_LEN)
    backend = SimBackend(client_lag=False)  # engine-side times, as Vidur reports (no vLLM V1 client lag)
    walls, cpus = [], []
    for _ in range(max(1, repeat)):
        t0, c0 = time.perf_counter(), time.process_time()
        res = backend.run(setup.policy(), w, dep, seed=0)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    r = res.records
    first, fin, out = r["first_token_s"].to_numpy(), r["finish_s"].to_numpy(), r["output_len"].to_numpy()
    return Outcome(float(np.median(walls)), float(np.median(cpus)), first - r["arrival_s"].to_numpy(),
                   _tpot(first, fin, out), int(np.isfinite(fin).sum()),
                   {"preemptions": int(r["preemptions"].sum()), "notes": list(res.notes), "first_wall_s": walls[0],
                    "runs": len(walls)})


def _tpot(first: np.ndarray, fin: np.ndarray, out: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(out >= 2, (fin - first) / (out - 1), np.nan)


def run_vidur(python: str, args: list[str], w: Workload, timeout_s: float, keep_output: bool = False) -> Outcome:
    """Vidur's CLI through ``vidur_runner.py`` in its own venv; wall = subprocess wall time.
    Vidur's output folder is removed once read unless ``keep_output``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", PYTHONHASHSEED="0")
    ru0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run([python, str(ROOT / "benchmarks/vidur_runner.py"), *args], capture_output=True, text=True,
                          env=env, timeout=timeout_s)
    wall, ru1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("VIDUR_TIMINGS ")]
    if proc.returncode or not lines:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"vidur failed (rc={proc.returncode}):\n{tail}")
    timings = json.loads(lines[-1].split(" ", 1)[1])
    out_dir = Path(timings["output_dir"])
    path = next((p for p in (out_dir / "request_metrics.csv", out_dir / "plots/request_metrics.csv") if p.exists()),
                out_dir / "request_metrics.csv")
    m = pd.read_csv(path).sort_values("Request Id")
    ids = m["Request Id"].to_numpy()
    if len(ids) != w.n or not np.array_equal(ids, np.arange(w.n)) or \
            not np.array_equal(m["request_num_prefill_tokens"].to_numpy(), w.prompt_len):
        raise RuntimeError("vidur request_metrics.csv does not line up with the workload (ids / prompt lengths)")
    ttft = m["prefill_e2e_time"].to_numpy(float)
    e2e = m["request_e2e_time"].to_numpy(float)
    out = m["request_num_decode_tokens"].to_numpy()
    arr = w.arrival_s
    tpot = _tpot(arr + ttft, arr + e2e, out)
    detail = dict(timings, restarts=int(m["request_num_restarts"].sum()))
    if not keep_output:
        shutil.rmtree(out_dir, ignore_errors=True)
    return Outcome(wall, cpu, ttft, tpot, int(np.isfinite(e2e).sum()), detail)


# ------------------------------------------------------------------ per-iteration check
ITER_CASES = (  # (label, [(chunk, context before it)], decode seqs, mean decode context)
    ("prefill 512", [(512, 0)], 0, 0), ("prefill 1024", [(1024, 0)], 0, 0), ("prefill 2048", [(2048, 0)], 0, 0),
    ("prefill 4096", [(4096, 0)], 0, 0), ("chunk 512 @ ctx 1536", [(512, 1536)], 0, 0),
    ("decode 1 @ 1024", [], 1, 1024), ("decode 8 @ 300", [], 8, 300), ("decode 8 @ 1200", [], 8, 1200),
    ("decode 16 @ 1024", [], 16, 1024), ("decode 64 @ 1024", [], 64, 1024),
    ("decode 128 @ 1300", [], 128, 1300), ("sarathi 32 dec @ 1024 + 480 chunk", [(480, 0)], 32, 1024),
)


def _ceil(x: float, q: int) -> int:
    return int(-(-int(x) // q) * q)


def iteration_table(work: Path) -> list[tuple[str, float, float, float]]:
    """(case, Vidur ms, servetune ms, servetune kernels-only ms) for ITER_CASES: Vidur's time
    from its cached random-forest prediction tables, composed as its ``ExecutionTime`` does
    (per layer x layers, KV-save excluded, no LM head / CPU overhead); servetune's from its
    cost model with the vllm-v1 preset, and with every fixed/CPU overhead set to zero."""
    import dataclasses

    from backends.sim.costmodel import CostModel
    from backends.sim.engines import get_engine

    pred_files = sorted((work / "vidur_cache/predictions").glob("*/attn_decode.csv.xz"), key=lambda f: f.stat().st_mtime)
    if not pred_files:
        raise FileNotFoundError(f"no Vidur prediction tables under {work}/vidur_cache: run the benchmark first")
    tab = {}
    for f in pred_files[-1].parent.glob("*.csv.xz"):  # the tables Vidur built last
        df = pd.read_csv(f)
        y = df.pop("prediction").to_numpy()
        tab[f.name.split(".")[0]] = {tuple(int(v) for v in row): float(p)
                                     for row, p in zip(df.to_numpy(), y, strict=True)}
    m, g = get_model(MODEL), get_gpu(GPU)
    cm = CostModel(m, g, engine=get_engine("vllm-v1"))
    bare_engine = dataclasses.replace(get_engine("vllm-v1"), iteration_overhead_s=0.0, per_seq_overhead_s=0.0,
                                      eager_launch_overhead_s=0.0)
    bare = CostModel(m, g, engine=bare_engine, efficiency=Efficiency(layer_overhead_s=0.0, op_latency_s=0.0))
    general = ("attn_pre_proj", "attn_post_proj", "attn_rope", "input_layernorm", "mlp_up_proj", "mlp_down_proj",
               "mlp_act", "post_attention_layernorm", "add")
    out = []
    for label, chunks, nd, ctx in ITER_CASES:
        q = sum(c for c, _ in chunks) + nd
        per_layer = sum(tab[op][(_ceil(q, 8),)] for op in general)
        per_layer += sum(tab["attn_prefill"][(_ceil(k + c, 256), _ceil(c, 32))] for c, k in chunks)
        if nd:
            per_layer += tab["attn_decode"][(nd, _ceil(ctx + 1, 256))]
        pf = sum(c for c, _ in chunks)
        pairs = sum(c * (k + (c + 1) / 2.0) for c, k in chunks)
        args = (pf, pairs, nd, nd, float(nd * ctx))
        t = cm.iteration(*args, prefill_seqs=max(1, len(chunks))).time_s
        tb = bare.iteration(*args, prefill_seqs=max(1, len(chunks))).time_s
        out.append((label, per_layer * m.layers, t * 1e3, tb * 1e3))
    return out


def print_iteration_table(work: Path) -> None:
    print("\nper-iteration time, ms (Vidur: its RF predictions; servetune: cost model, vllm-v1 preset / kernels only)")
    print(f"  {'batch':36s} {'vidur':>8s} {'servetune':>10s} {'rel':>7s} {'kernels':>8s} {'rel':>7s}")
    for label, v, s, b in iteration_table(work):
        print(f"  {label:36s} {v:8.2f} {s:10.2f} {rel(s, v):+7.1%} {b:8.2f} {rel(b, v):+7.1%}")


# ------------------------------------------------------------------ table
QS = (50, 90, 99)


def percentiles(x: np.ndarray) -> np.ndarray:
    x = x[np.isfinite(x)]
    return np.percentile(x, QS) if x.size else np.full(len(QS), np.nan)


def rel(a: float, b: float) -> float:
    """Relative difference of servetune ``a`` from Vidur ``b``."""
    return (a - b) / b if b else float("nan")


def report_rows(setup: Setup, n: int, st: Outcome, vd: Outcome) -> list[dict]:
    rows = [{"scheduler": setup.scheduler, "requests": n, "metric": "wall s", "servetune": st.wall_s,
             "vidur": vd.wall_s, "diff": vd.wall_s / st.wall_s},
            {"scheduler": setup.scheduler, "requests": n, "metric": "cpu s", "servetune": st.cpu_s,
             "vidur": vd.cpu_s, "diff": vd.cpu_s / st.cpu_s}]
    for name, a, b in (("TTFT", st.ttft_s, vd.ttft_s), ("TPOT", st.tpot_s, vd.tpot_s)):
        for q, x, y in zip(QS, percentiles(a) * 1e3, percentiles(b) * 1e3, strict=True):
            rows.append({"scheduler": setup.scheduler, "requests": n, "metric": f"{name} p{q} ms", "servetune": x,
                         "vidur": y, "diff": rel(x, y)})
    return rows


def print_summary(setup: Setup, n: int, st: Outcome, vd: Outcome) -> None:
    d = vd.detail
    loop = d["loop_s"] + d["output_s"]
    print(f"\n== {setup.scheduler}: {n} requests, batch cap {setup.batch_cap}"
          + (f", chunk {setup.chunk}" if setup.scheduler == "sarathi" else f", {VLLM_TOKENS}-token prefill budget")
          + f", {setup.kv_blocks()} KV blocks of {setup.block_size}")
    print(f"  servetune run()            {st.wall_s:9.3f} s wall, {st.cpu_s:8.3f} s CPU (median of "
          f"{st.detail['runs']}; first {st.detail['first_wall_s']:.3f} s)   finished {st.finished}/{n}, "
          f"preemptions {st.detail['preemptions']}")
    print(f"  vidur subprocess           {vd.wall_s:9.3f} s wall, {vd.cpu_s:8.3f} s CPU   "
          f"finished {vd.finished}/{n}, restarts {d['restarts']}")
    print(f"    import {d['import_s']:.2f} s, init (predictor load, trace) {d['init_s']:.2f} s, "
          f"event loop {d['loop_s']:.2f} s ({d['loop_cpu_s']:.2f} s CPU), metrics out {d['output_s']:.2f} s")
    print(f"  speed ratio: vidur wall / servetune wall = {vd.wall_s / st.wall_s:6.1f}x;  CPU "
          f"{vd.cpu_s / st.cpu_s:6.1f}x;  vidur event loop + metrics out only / servetune: wall "
          f"{loop / st.wall_s:6.1f}x, CPU {(d['loop_cpu_s'] + d['output_cpu_s']) / st.cpu_s:6.1f}x")
    print(f"  {'':12s} {'servetune':>10s} {'vidur':>10s} {'rel diff':>9s}")
    for r in report_rows(setup, n, st, vd)[2:]:
        flag = "  >10%" if abs(r["diff"]) > 0.10 else ""
        print(f"  {r['metric']:12s} {r['servetune']:10.1f} {r['vidur']:10.1f} {r['diff']:+9.1%}{flag}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="first N requests of azure-conv")
    ap.add_argument("--rate", type=float, default=4.0, help="mean arrival rate, req/s")
    ap.add_argument("--schedulers", default="vllm,sarathi", help="comma list of vllm, sarathi")
    ap.add_argument("--chunk", type=int, default=512, help="Sarathi chunk size = token budget, tokens")
    ap.add_argument("--batch-cap", type=int, default=128, help="max running sequences (max_num_seqs)")
    ap.add_argument("--rf-grid", choices=sorted(RF_GRIDS), default="small",
                    help="random-forest hyper-parameter grid Vidur searches when it trains (one-off, cached)")
    ap.add_argument("--vidur-python", default=os.environ.get("VIDUR_PYTHON", str(ROOT / ".venv-vidur/bin/python")),
                    help="python of the Vidur venv (installed by scripts/setup_vidur.sh when missing)")
    ap.add_argument("--keep-vidur-output", action="store_true", help="keep Vidur's output folders under --work")
    ap.add_argument("--work", type=Path, default=ROOT / ".servetune/bench_vidur", help="scratch dir (cache, outputs)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="per Vidur run, s")
    ap.add_argument("--vidur-native", action="store_true",
                    help="Vidur's C++ execution-time predictor (use_native_execution_time_predictor; off by default)")
    ap.add_argument("--explain", action="store_true", help="also compare per-iteration times of typical batches")
    ap.add_argument("--repeat", type=int, default=3, help="servetune runs (median reported; Vidur runs once)")
    ap.add_argument("--csv", type=Path, help="also write the table rows here")
    a = ap.parse_args(argv)
    if not Path(a.vidur_python).exists():
        venv = Path(a.vidur_python).parent.parent
        print(f"Vidur python {a.vidur_python} not found: installing it with scripts/setup_vidur.sh {venv}")
        if subprocess.run(["bash", str(ROOT / "scripts/setup_vidur.sh"), str(venv)]).returncode or \
                not Path(a.vidur_python).exists():
            print("error: Vidur setup failed (scripts/setup_vidur.sh)", file=sys.stderr)
            return 2
    a.work.mkdir(parents=True, exist_ok=True)
    w = build_workload(a.requests, a.rate)
    trace = write_vidur_trace(w, a.work / "trace.csv")
    print(f"workload: azure-conv first {w.n} requests at {w.rate:.2f} req/s over {w.span_s:.0f} s; "
          f"prompt mean {w.prompt_len.mean():.0f}, output mean {w.output_len.mean():.0f} tokens")
    rows, failed = [], 0
    for s in [x.strip() for x in a.schedulers.split(",") if x.strip()]:
        if s not in ("vllm", "sarathi"):
            print(f"error: --schedulers: unknown {s!r} (vllm, sarathi)", file=sys.stderr)
            return 2
        setup = Setup(s, batch_cap=a.batch_cap, chunk=a.chunk)
        repos = write_profile_datasets(a.work, 1, setup.block_size, setup.batch_cap)
        args = setup.vidur_args(trace, a.work, repos, a.rf_grid, native=a.vidur_native)
        st = run_servetune(setup, w, a.repeat)
        pred_dir = a.work / "vidur_cache" / "predictions"
        before = set(pred_dir.iterdir()) if pred_dir.exists() else set()
        t0 = time.perf_counter()
        try:
            vd = run_vidur(a.vidur_python, args, w, a.timeout, a.keep_vidur_output)
            if set(pred_dir.iterdir()) - before:  # Vidur trained its predictors in this run: time a cached run
                print(f"(vidur: one-off predictor training + first run {time.perf_counter() - t0:.1f} s, now cached)")
                vd = run_vidur(a.vidur_python, args, w, a.timeout, a.keep_vidur_output)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            last = str(e).strip().splitlines()
            print(f"\n== {s}: vidur FAILED after {time.perf_counter() - t0:.1f} s: {' | '.join(last[-3:])}\n"
                  f"   (servetune: {st.finished}/{w.n} finished, {st.detail['preemptions']} preemptions, "
                  f"{st.wall_s:.3f} s)")
            failed += 1
            continue
        print_summary(setup, w.n, st, vd)
        rows += report_rows(setup, w.n, st, vd)
    if a.explain:
        print_iteration_table(a.work)
    if a.csv:
        pd.DataFrame(rows).to_csv(a.csv, index=False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
