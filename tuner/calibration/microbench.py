"""``servetune calibrate``: torch micro-benchmarks of a model's operators on the local device.

Measures, per layer of ``model`` split over ``tp`` (shapes from the model catalog):

* linear GEMMs ``qkv_proj``, ``o_proj``, ``mlp_up`` (gate+up), ``mlp_down`` by token count;
* ``attn_prefill``: ``torch.nn.functional.scaled_dot_product_attention`` (causal, GQA via
  ``enable_gqa``) by chunk and context;
* ``attn_decode``: one query token per sequence by batch and context;
* ``all_reduce`` by message size when several CUDA GPUs are visible (otherwise skipped, noted).

Rows follow ``tuner.calibration.profile`` (times per layer, ms, median of ``repeats``). Torch is
an optional extra, imported lazily. On CPU the shapes are capped (``quick``: a ~1 min run for an
8B layer); a tiny model (a local config.json with hidden 64..512) runs in seconds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from backends.sim.catalog import ModelSpec


def import_torch():
    """torch, or an ImportError naming the extra to install."""
    try:
        import torch
    except ImportError:
        raise ImportError("calibrate needs torch: install the torch extra (pip install 'servetune[torch]' "
                          "or pip install torch)") from None
    return torch


@dataclass(frozen=True, slots=True)
class Plan:
    """Shapes to time (tokens, chunks, contexts, batches) and repetitions."""

    tokens: tuple[int, ...]
    prefill: tuple[tuple[int, int], ...]
    """(chunk, context) pairs."""
    decode: tuple[tuple[int, int], ...]
    """(batch, context) pairs."""
    repeats: int
    warmup: int = 2


def plan_for(model: ModelSpec, device: str, quick: bool) -> Plan:
    """Shape grid: full on CUDA, capped on CPU (by the layer's size), smaller with ``quick``."""
    big = model.hidden >= 2048
    if device == "cuda":
        toks = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
        pre = tuple((c, x) for c in (128, 512, 1024, 2048) for x in (0, 1024, 4096))
        dec = tuple((b, x) for b in (1, 8, 32, 64, 128, 256) for x in (512, 2048, 8192))
        return Plan(toks[::2] if quick else toks, pre[::2] if quick else pre, dec[::2] if quick else dec,
                    10 if quick else 30)
    if big:
        toks = (1, 16, 64, 256) if quick else (1, 8, 32, 128, 256, 512)
        pre = ((64, 0), (128, 0), (128, 512), (256, 0)) if quick else ((64, 0), (128, 0), (128, 512), (256, 0),
                                                                       (256, 1024), (512, 0))
        dec = ((1, 512), (8, 512), (8, 2048), (32, 1024)) if quick else ((1, 512), (8, 512), (8, 2048), (32, 1024),
                                                                         (32, 2048), (64, 1024))
        return Plan(toks, pre, dec, 3 if quick else 5, 1)
    toks = (1, 8, 32, 64, 128, 256, 512)
    pre = ((32, 0), (64, 0), (128, 0), (128, 256), (256, 0), (256, 512))
    dec = ((1, 256), (4, 256), (8, 512), (16, 256), (16, 1024), (32, 512))
    return Plan(toks, pre, dec, 5 if quick else 15)


def _timer(torch, dev: str) -> Callable[[Callable[[], object], int, int], tuple[float, int]]:
    def run(fn: Callable[[], object], repeats: int, warmup: int) -> tuple[float, int]:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            if dev == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if dev == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3, repeats
    return run


CPU_DEVICE = "cpu-host"
"""The ``device`` of rows timed on the CPU: an alias of the catalog's ``cpu`` entry (also the name
in tuner/calibration/data/cpu-host.yaml), so ``--gpu cpu`` selects such a profile."""


def device_label(raw: str) -> str:
    """The ``device`` a profile row gets for a device called ``raw`` (torch's CUDA device name,
    e.g. 'NVIDIA H100 80GB HBM3', or a name given with ``--device-name``): the catalog's GPU name
    when the catalog knows it by name or alias (h100-sxm), else ``raw`` as given (a GPU the
    simulator then finds only by that name, e.g. a GPU YAML's)."""
    from backends.sim.catalog import get_gpu

    raw = raw.strip()
    if raw.lower() in ("cpu", CPU_DEVICE):
        return CPU_DEVICE
    try:
        return get_gpu(raw).name
    except (ValueError, OSError):
        return raw


def calibrate(model: ModelSpec, *, tp: int = 1, device: str = "auto", quick: bool = False,
              log: Callable[[str], None] = print, device_name: str | None = None) -> tuple[list[dict], list[str]]:
    """Time the operators; returns (profile rows, notes). Rows are tagged with ``device_label`` of
    ``device_name`` when given, else of the device that ran them (torch's CUDA name, or
    ``cpu-host``); a CUDA name the catalog does not know is kept, with a note."""
    torch = import_torch()
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if dev not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: must be auto, cpu or cuda")
    if dev == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda: no CUDA device visible to torch")
    if tp < 1 or model.heads % tp or model.kv_heads % tp and model.kv_heads >= tp:
        raise ValueError(f"tp={tp}: must divide the model's heads ({model.heads}) and KV heads ({model.kv_heads})")
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    dname = "bf16" if dev == "cuda" else "fp32"
    raw = device_name or (torch.cuda.get_device_name(0) if dev == "cuda" else CPU_DEVICE)
    device_name = device_label(raw)
    plan = plan_for(model, dev, quick)
    timeit = _timer(torch, dev)
    notes: list[str] = []
    if device_name != CPU_DEVICE and device_name not in _catalog_names():
        notes.append(f"device {raw!r} is not in the GPU catalog: rows are tagged {device_name!r}, which only "
                     "a GPU of that name selects (--device-name NAME tags them with a catalog GPU)")
    rows: list[dict] = []
    m = model
    hd = m.head_dim
    q_heads, kv_heads = m.heads // tp, max(1, m.kv_heads // tp)
    h, q, kv = m.hidden, q_heads * hd, kv_heads * hd
    ffn = (m.ffn or m.moe_ffn) // tp
    up = (m.mlp_mats - 1) * ffn
    shapes = {"qkv_proj": (h, q + 2 * kv), "o_proj": (q, h), "mlp_up": (h, up), "mlp_down": (ffn, h)}
    base = {"source": "calibrate", "device": device_name, "model": m.name, "tp": tp, "dtype": dname}
    torch.manual_seed(0)
    with torch.inference_mode():
        for op, (k, n) in shapes.items():
            w = torch.randn(k, n, device=dev, dtype=dtype) * 0.02
            for t in plan.tokens:
                x = torch.randn(t, k, device=dev, dtype=dtype)
                ms, rep = timeit(lambda x=x, w=w: x @ w, plan.repeats, plan.warmup)
                rows.append({**base, "op": op, "tokens": t, "time_ms": ms, "repeats": rep})
            log(f"{op}: {len(plan.tokens)} token counts")
        sdpa = torch.nn.functional.scaled_dot_product_attention
        gqa = q_heads != kv_heads
        for chunk, ctx in plan.prefill:
            qt = torch.randn(1, q_heads, chunk, hd, device=dev, dtype=dtype)
            kt = torch.randn(1, kv_heads, ctx + chunk, hd, device=dev, dtype=dtype)
            vt = torch.randn_like(kt)
            mask = torch.ones(chunk, ctx + chunk, device=dev, dtype=torch.bool).tril(diagonal=ctx)

            def pre(qt=qt, kt=kt, vt=vt, mask=mask):
                return sdpa(qt, kt, vt, attn_mask=mask, enable_gqa=gqa)

            ms, rep = timeit(pre, plan.repeats, plan.warmup)
            rows.append({**base, "op": "attn_prefill", "tokens": chunk, "batch": 1, "chunk": chunk, "context": ctx,
                         "time_ms": ms, "repeats": rep})
        log(f"attn_prefill: {len(plan.prefill)} (chunk, context) shapes")
        for batch, ctx in plan.decode:
            qt = torch.randn(batch, q_heads, 1, hd, device=dev, dtype=dtype)
            kt = torch.randn(batch, kv_heads, ctx, hd, device=dev, dtype=dtype)
            vt = torch.randn_like(kt)

            def dec(qt=qt, kt=kt, vt=vt):
                return sdpa(qt, kt, vt, enable_gqa=gqa)

            ms, rep = timeit(dec, plan.repeats, plan.warmup)
            rows.append({**base, "op": "attn_decode", "tokens": batch, "batch": batch, "context": ctx,
                         "time_ms": ms, "repeats": rep})
        log(f"attn_decode: {len(plan.decode)} (batch, context) shapes")
    n_gpu = torch.cuda.device_count() if dev == "cuda" else 0
    if n_gpu >= 2:
        notes.append(f"all_reduce: {n_gpu} GPUs visible; timing needs torch.distributed workers "
                     "(not run by this command yet)")
    else:
        notes.append("all_reduce skipped: fewer than 2 GPUs visible")
    return rows, notes


def _catalog_names() -> set[str]:
    from backends.sim.catalog import list_gpus

    return {g.name for g in list_gpus()}


__all__ = ["CPU_DEVICE", "Plan", "calibrate", "device_label", "import_torch", "plan_for"]
