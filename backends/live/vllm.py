"""VLLMBackend: run a trial on a real vLLM server (``backends.base.Backend`` contract).

Each ``run`` maps the Policy to vLLM flags (``backends.live.flags.vllm_args``), gets a server
with those flags, replays the workload through the streaming completions API and returns
per-request records plus /metrics telemetry; the scorecard is ``tuner.scorecard.score``, the
same function as for the simulator. Knobs vLLM cannot express are reset in the effective
policy and listed in ``RunResult.notes``.

Servers: a server is kept while consecutive runs need the same flags (a tuner runs each trial
at several workload fractions, and enqueued defaults repeat), and replaced when the flags
change. ``close()`` or the end of a ``with VLLMBackend() as b:`` block stops it; if neither
happens, the kernel stops it when servetune's launching thread exits (PR_SET_PDEATHSIG).
``keep_server=False``: every run starts and stops its own server.

On CPU (``Deployment(gpu="cpu")``) ``deployment.model`` is a local model folder or
``tiny-llama`` (written on first use, see ``backends.live.tiny_model``).

A live backend serves ONE server (with data-parallel replicas inside it on a GPU machine): a
policy with a cluster knob it does not deploy (``NOT_DEPLOYED``: disaggregated pools, autoscaling,
spot capacity, migration; replicas on CPU) is refused with a one-line ValueError before anything
starts, so no trial is scored as a deployment that did not run.
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from backends.base import Deployment, RunResult, Telemetry
from backends.live.flags import FlagMapping, is_cpu, vllm_args
from backends.live.metrics import counter_delta, kv_capacity_tokens, timeline_frame
from backends.live.replay import ReplayConfig, replay, warm_up
from backends.live.server import MODULE, ServerPool
from backends.live.tiny_model import NAME as TINY_NAME
from backends.live.tiny_model import ensure_tiny_model, prompt_token_range
from backends.live.vllm_python import EngineError, find_vllm_python
from tuner.policy import Policy
from workloads.workload import Workload

__all__ = ["NOT_DEPLOYED", "EngineError", "VLLMBackend", "check_deployable"]

NOT_DEPLOYED: dict[str, str] = {
    "disaggregated": "it starts no prefill/decode servers and no P/D proxy",
    "autoscale": "it starts no servers during a run",
    "spot_fraction": "it runs no spot capacity and no interruptions",
    "migration": "it moves no requests between servers",
}
"""Cluster knobs the live backends do not deploy (knob -> what is missing)."""
_DEFAULT = Policy()


def check_deployable(policy: Policy, deployment: Deployment, engine: str) -> None:
    """Raise a one-line ValueError when ``policy`` asks for a cluster the live ``engine`` backend
    does not deploy (``NOT_DEPLOYED``; on CPU also replicas > 1: one CPU server)."""
    for knob, why in NOT_DEPLOYED.items():
        v = getattr(policy, knob)
        if v != getattr(_DEFAULT, knob):
            raise ValueError(f"policy knob {knob}={v!r}: the live {engine} backend serves one server and {why}; "
                             "tune this knob with --backend sim (servetune export writes its launch commands)")
    if is_cpu(deployment) and policy.replicas > 1:
        raise ValueError(f"policy knob replicas={policy.replicas}: the live {engine} backend serves one CPU server "
                         "(no data-parallel replicas on CPU); tune replicas with --backend sim")


class VLLMBackend:
    """A live vLLM engine. ``kv_cache_bytes``: KV memory on CPU, bytes (default 512 MiB);
    ``time_scale``: multiplies arrival times; ``extra_args``: more vLLM flags for every server
    (e.g. ``("--num-gpu-blocks-override", "16")``); ``log_dir``: where server logs go."""

    name = "vllm"
    module = MODULE
    measure_args: tuple[str, ...] = ("--enable-prompt-tokens-details",)
    """Flags a live trial adds to the policy's own (measurement only; not exported)."""

    def __init__(self, *, python: str | None = None, cache_dir: str | Path | None = None,
                 kv_cache_bytes: int | None = None, time_scale: float = 1.0, max_concurrency: int = 256,
                 request_timeout_s: float = 120.0, startup_timeout_s: float = 300.0,
                 metrics_interval_s: float = 0.5, extra_args: Sequence[str] = (),
                 log_dir: str | Path | None = None, keep_server: bool = True, warm_up: bool = True) -> None:
        self.python = python
        self.cache_dir = cache_dir
        self.kv_cache_bytes = kv_cache_bytes
        self.time_scale = time_scale
        self.max_concurrency = max_concurrency
        self.request_timeout_s = request_timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.metrics_interval_s = metrics_interval_s
        self.extra_args = tuple(extra_args)
        self.log_dir = log_dir
        self.keep_server = keep_server
        self.warm_up = warm_up
        """Serve a few warm-up requests on a freshly started server before measuring (``replay.warm_up``)."""
        self._pool: ServerPool | None = None
        self.last_startup_s: float = float("nan")
        """Start-up time of the server the last run used (NaN when it reused one)."""
        self.last_warmup_s: float = float("nan")
        """Wall time of the last warm-up, s."""

    # --------------------------------------------------------------- context
    def __enter__(self) -> VLLMBackend:
        if self._pool is None:
            self._pool = self._new_pool()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def servers(self) -> list:
        """Servers kept by this backend now."""
        return self._pool.running() if self._pool is not None else []

    def close(self) -> None:
        """Stop every server this backend keeps."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _new_pool(self) -> ServerPool:
        return ServerPool(max_servers=1, python=self.find_python(), log_dir=self.log_dir,
                          startup_timeout_s=self.startup_timeout_s, module=self.module)

    def find_python(self) -> str:
        """The engine's interpreter (EngineError naming the setup step when missing)."""
        return self.python or find_vllm_python()

    def check_deployment(self, deployment: Deployment) -> None:
        """Raise a one-line EngineError (a ValueError) when the engine is not installed, so a
        study fails before it stores any trial. Only probes for the engine's interpreter
        (``find_python``): starts no server and writes no model."""
        self.find_python()

    # ---------------------------------------------------------------- mapping
    def model_path(self, deployment: Deployment) -> str:
        """The folder (or hub id on GPU) that ``--model`` gets."""
        if deployment.model == TINY_NAME:
            return str(ensure_tiny_model(self.cache_dir, python=self.find_python()))
        p = Path(deployment.model).expanduser()
        if p.is_dir():
            return str(p.resolve())
        if is_cpu(deployment):
            raise EngineError(f"deployment model {deployment.model!r}: no such model folder (on CPU give a "
                              f"local model folder or {TINY_NAME!r}; there is no model hub here)")
        return deployment.model  # a hub id: vLLM downloads it on a GPU machine

    def check_policy(self, policy: Policy, deployment: Deployment) -> None:
        """ValueError (one line) for a cluster knob this backend does not deploy (``check_deployable``)."""
        check_deployable(policy, deployment, self.name)

    def flags(self, policy: Policy, deployment: Deployment, model_path: str | None = None) -> FlagMapping:
        return vllm_args(policy, deployment, model_path=model_path or deployment.model,
                         kv_cache_bytes=self.kv_cache_bytes)

    # -------------------------------------------------------------------- run
    def check_workload(self, workload: Workload) -> None:
        """ValueError for a workload this engine's replay cannot send (none for vLLM: multi-turn
        sessions need ``return_token_ids``, vLLM >= 0.10.2)."""

    def run(self, policy: Policy, workload: Workload, deployment: Deployment, *, seed: int = 0) -> RunResult:
        """Serve ``workload`` under ``policy`` on a real vLLM server. EngineError when the server
        cannot start or dies mid-trial (with the reason and the log's last lines); ValueError,
        before anything starts, for a cluster knob it does not deploy (``check_deployable``)."""
        self.check_policy(policy, deployment)
        self.check_workload(workload)
        model = self.model_path(deployment)
        mapping = self.flags(policy, deployment, model)
        args = [*mapping.args, *self.measure_args, *self.extra_args]
        if self._pool is None and self.keep_server:
            self._pool = self._new_pool()
        own_pool = self._pool is None
        pool = self._new_pool() if own_pool else self._pool
        assert pool is not None
        try:
            starts = pool.starts
            server = pool.get(args, cpu=is_cpu(deployment))
            fresh = pool.starts > starts
            self.last_warmup_s = float("nan")
            self.last_startup_s = server.startup_s if fresh else float("nan")
            try:
                metrics_text = _get(server.url + "/metrics")
            except OSError as e:
                pool.discard(server)
                raise EngineError(f"vLLM server at {server.url} does not answer /metrics: {e}") from None
            cfg = ReplayConfig(model=model, token_range=prompt_token_range(model) if Path(model).is_dir()
                               else (1000, 30000), time_scale=self.time_scale,
                               max_concurrency=self.max_concurrency, request_timeout_s=self.request_timeout_s,
                               use_priority=mapping.effective.queue == "priority",
                               metrics_interval_s=self.metrics_interval_s)
            try:
                if fresh and self.warm_up:
                    self.last_warmup_s, errors = warm_up(server.url, cfg, max_model_len=deployment.max_model_len or 2048,
                                                         check_alive=server.check_alive)
                    if errors:
                        raise EngineError(f"vLLM server at {server.url} failed its warm-up requests: {errors[0]}")
                out = replay(server.url, workload, cfg, seed=seed, check_alive=server.check_alive)
            except EngineError:
                pool.discard(server)
                raise
        finally:
            if own_pool:
                pool.close()

        snaps = out.snapshots
        counters = counter_delta(snaps[0] if snaps else None, snaps[-1] if snaps else None)
        est_flops = counters.pop("est_flops_per_gpu", 0.0)
        est_read = counters.pop("est_read_bytes_per_gpu", 0.0)
        tl = timeline_frame(snaps)
        tp = mapping.effective.tp
        tel = Telemetry(
            makespan_s=max(out.wall_s, 1e-9),
            busy_s=_busy_s(tl, out.wall_s),
            n_gpus=deployment.n_gpus if not is_cpu(deployment) else 1,
            instances=1,
            flops=est_flops * tp,
            hbm_bytes=est_read * tp,
            kv_capacity_tokens=kv_capacity_tokens(metrics_text),
            timeline=tl,
            counters=counters,
            itl=out.itl,
            **_gpu_prices(deployment),
        )
        notes = [f"{k}={v!r} not honoured by {self.name}: {why}" for k, v, why in mapping.unsupported]
        notes += list(mapping.notes)
        n_failed = int(out.records["failed"].sum())
        if n_failed:
            notes.append(f"{n_failed} of {workload.n} requests failed; e.g. {'; '.join(out.errors[:2])}")
        meta = {"engine": self.name, "server_args": " ".join(args), "model_path": model,
                "startup_s": "" if math.isnan(self.last_startup_s) else f"{self.last_startup_s:.1f}",
                "warmup_s": "" if math.isnan(self.last_warmup_s) else f"{self.last_warmup_s:.2f}"}
        return RunResult(records=out.records, telemetry=tel, policy=mapping.effective, backend=self.name,
                         notes=tuple(notes), meta=meta)


def _get(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def _busy_s(tl, wall_s: float) -> float:
    """Time with at least one running request, from the /metrics samples (s)."""
    if tl is None or len(tl) < 2 or "running" not in tl:
        return 0.0
    t = tl["t_s"].to_numpy(float)
    run = tl["running"].to_numpy(float)
    dt = np.diff(t)
    return float(min(wall_s, (dt * (run[:-1] > 0)).sum()))


def _gpu_prices(deployment: Deployment) -> dict[str, float]:
    if is_cpu(deployment):
        return {}
    try:
        from backends.sim.catalog import get_gpu

        g = get_gpu(deployment.gpu)
    except (ValueError, OSError, KeyError):
        return {}
    return {"gpu_hour_usd": g.price_hour, "spot_gpu_hour_usd": g.spot_price_hour,
            "peak_flops_per_gpu": g.peak_flops(deployment.weight_dtype), "peak_hbm_bytes_s_per_gpu": g.hbm_bytes_s}
