"""``servetune models`` and ``servetune gpus``: list the catalogs, or show one entry (and, for a
model on a GPU, its memory budget)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("models")(models)
    app.command("gpus")(gpus)


def models(
    name: str = typer.Argument(None, help="A catalog name/alias, or a path to a config.json / model YAML."),
    gpu: str = typer.Option(None, "--gpu", help="Also show the memory budget on this GPU (name or YAML)."),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel degree for --gpu."),
    weight_dtype: str = typer.Option("bf16", "--weight-dtype", help="bf16, fp16 or fp8."),
    kv_dtype: str = typer.Option("bf16", "--kv-dtype", help="bf16, fp16 or fp8."),
    util: float = typer.Option(0.9, "--gpu-memory-utilization", help="Fraction of GPU memory used."),
    block_size: int = typer.Option(16, "--block-size", help="KV block size, tokens."),
) -> None:
    """List the model catalog, or show one model (shapes, derived parameters, KV bytes/token)."""
    from backends.sim.catalog import GIB, get_gpu, get_model, kv_budget, list_models
    from backends.sim.costmodel import weight_bytes_per_gpu

    if name is None:
        typer.echo(f"{'model':24s} {'params':>8s} {'active':>8s} {'layers':>6s} {'hidden':>6s} {'heads':>9s} "
                   f"{'ffn':>6s} {'vocab':>7s} {'KV KiB/tok':>10s} {'max ctx':>8s}")
        for m in list_models():
            ffn = m.ffn or m.moe_ffn
            exp = f" {m.n_experts}x{m.experts_per_token}" if m.is_moe else ""
            typer.echo(f"{m.name:24s} {m.params / 1e9:7.1f}B {m.active_params / 1e9:7.1f}B {m.layers:6d} {m.hidden:6d} "
                       f"{m.heads:4d}/{m.kv_heads:<4d} {ffn:6d} {m.vocab:7d} {m.kv_bytes_per_token() / 1024:10.0f} "
                       f"{m.max_position:8d}{exp}")
        return
    m = get_model(name)
    typer.echo(f"{m.name}: {m.params / 1e9:.2f}B parameters ({m.active_params / 1e9:.2f}B active), "
               f"published {m.published_params_b or '?'}B")
    typer.echo(f"  layers {m.layers}, hidden {m.hidden}, heads {m.heads}, kv_heads {m.kv_heads}, head_dim {m.head_dim}, "
               f"ffn {m.ffn}, vocab {m.vocab}, max_position {m.max_position}, position {m.position}")
    if m.is_moe:
        typer.echo(f"  MoE: {m.n_experts} experts, {m.experts_per_token} per token, expert ffn {m.moe_ffn}, "
                   f"shared experts {m.n_shared_experts} x {m.shared_ffn}")
    typer.echo(f"  KV cache: {m.kv_bytes_per_token(kv_dtype) / 1024:.0f} KiB/token ({kv_dtype})")
    if gpu:
        g = get_gpu(gpu)
        blocks = kv_budget(m, g, tp, util, weight_dtype, kv_dtype, block_size)
        typer.echo(f"  on {tp} x {g.name}: weights {weight_bytes_per_gpu(m, tp, weight_dtype) / GIB:.1f} GiB/GPU "
                   f"({weight_dtype}), {blocks} KV blocks of {block_size} = {blocks * block_size} tokens per instance")


def gpus(name: str = typer.Argument(None, help="A catalog name/alias, or a path to a GPU YAML.")) -> None:
    """List the GPU catalog (peak dense TFLOP/s, HBM, interconnect, $/GPU-hour), or show one GPU."""
    from backends.sim.catalog import GIB, get_gpu, list_gpus

    rows = [get_gpu(name)] if name else list_gpus()
    typer.echo(f"{'gpu':16s} {'mem GiB':>7s} {'HBM TB/s':>8s} {'bf16 TF':>7s} {'fp8 TF':>7s} {'NVLink GB/s':>11s} "
               f"{'PCIe GB/s':>9s} {'$/h':>6s} {'spot $/h':>8s}")
    for g in rows:
        fp8 = f"{g.flops_fp8 / 1e12:7.0f}" if g.flops_fp8 else f"{'-':>7s}"
        typer.echo(f"{g.name:16s} {g.memory_bytes / GIB:7.1f} {g.hbm_bytes_s / 1e12:8.2f} {g.flops_bf16 / 1e12:7.0f} "
                   f"{fp8} {g.nvlink_bytes_s / 1e9:11.0f} {g.pcie_bytes_s / 1e9:9.0f} {g.price_hour:6.2f} "
                   f"{g.spot_price_hour:8.2f}")
    if not name:
        typer.echo("NVLink/PCIe per direction; prices: typical 2025 cloud list prices (see backends/sim/data/gpus.yaml)")
