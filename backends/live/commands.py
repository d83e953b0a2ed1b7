"""``servetune engine ...``: set up the live vLLM engine, print/check engine flags, write the tiny model."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import typer

engine_app = typer.Typer(help="Live engines (vLLM, SGLang): install, flags for a policy, the tiny test model.",
                         no_args_is_help=True)


@engine_app.command("setup-vllm")
def setup_vllm_cmd(
    venv: Path | None = typer.Option(None, "--venv", help="Where to create it (default: .venv-vllm in the servetune checkout)."),
) -> None:
    """Create the vLLM (CPU build) virtual environment: scripts/setup_vllm_cpu.sh (~3 min, ~2.5 GB)."""
    from backends.live.vllm_python import REPO

    script = REPO / "scripts" / "setup_vllm_cpu.sh"
    if not script.is_file():
        raise OSError(f"{script}: not found (run from a servetune source checkout)")
    cmd = ["bash", str(script)] + ([str(venv)] if venv else [])
    rc = subprocess.run(cmd, check=False).returncode
    if rc:
        raise typer.Exit(rc)


@engine_app.command("flags")
def flags_cmd(
    policy_file: Path = typer.Argument(..., metavar="POLICY.yaml", help="A policy YAML (servetune export writes one)."),
    engine: str = typer.Option("vllm", "--engine", "-e", help="vllm or sglang."),
    model: str = typer.Option("meta-llama/Llama-3.1-8B-Instruct", "--model", help="Model id or local folder."),
    gpu: str = typer.Option("h100-sxm", "--gpu", help="GPU name, or 'cpu' for vLLM's CPU build."),
    n_gpus: int = typer.Option(1, "--n-gpus", min=1, help="GPUs of the deployment."),
    max_model_len: int = typer.Option(0, "--max-model-len", min=0, help="Context limit (0 = the model's)."),
    port: int | None = typer.Option(None, "--port", help="Server port."),
    kv_bytes: int | None = typer.Option(None, "--kv-cache-bytes", help="KV memory, bytes (CPU default 512 MiB)."),
    check: bool = typer.Option(False, "--check", help="Parse the flags with the installed vLLM's own parser."),
) -> None:
    """Print the engine command line for a policy (a disaggregated one: the prefill and the decode
    servers' commands), the knobs the engine cannot express, and what a real deployment needs
    beyond the flags."""
    from backends.base import Deployment
    from backends.live.flags import engine_args
    from backends.live.vllm_python import EngineError, check_vllm_args
    from tuner.policy import Policy

    policy = Policy.from_yaml(policy_file)
    deployment = Deployment(model, gpu, n_gpus=n_gpus, max_model_len=max_model_len)
    m = engine_args(engine, policy, deployment, port=port, kv_cache_bytes=kv_bytes)
    if not m.roles:
        typer.echo(shlex.join(m.command(engine)))
    for r in m.roles:  # disaggregated: one command per pool
        typer.echo(f"# {r.name}: start {r.count} server(s) of tp={r.tp} with")
        typer.echo(shlex.join(m.command(engine, role=r.name)))
    for knob, value, why in m.unsupported:
        typer.echo(f"# not expressible: {knob}={value!r}: {why}")
    for note in m.notes:
        typer.echo(f"# note: {note}")
    if check:
        if engine != "vllm":
            raise ValueError("--check needs --engine vllm (SGLang is not installed here)")
        try:
            for args in [r.args for r in m.roles] or [m.args]:
                check_vllm_args(list(args))
        except EngineError as e:
            raise ValueError(str(e)) from None
        typer.echo("# checked: the installed vLLM's parser accepts these flags")


@engine_app.command("tiny-model")
def tiny_model_cmd(
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Default $SERVETUNE_CACHE_DIR or ~/.cache/servetune."),
) -> None:
    """Write (once) the tiny local Llama used for live CPU trials and print its folder."""
    from backends.live.tiny_model import ensure_tiny_model
    from backends.live.vllm_python import EngineError

    try:
        typer.echo(ensure_tiny_model(cache_dir))
    except EngineError as e:
        raise ValueError(str(e)) from None


def register(app: typer.Typer) -> None:
    app.add_typer(engine_app, name="engine")
