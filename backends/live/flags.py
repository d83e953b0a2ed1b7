"""Map a servetune Policy to an engine's own launch flags (vLLM, SGLang).

``vllm_args`` / ``sglang_args`` return a :class:`FlagMapping`: the argv that follows
``python -m vllm.entrypoints.openai.api_server`` (or ``python -m sglang.launch_server``),
the knobs the engine cannot express (each with the value asked for and why), and the
*effective* Policy (those knobs reset to their defaults), which is the policy a live trial
really ran. Nothing is silently dropped: every knob that differs from its default is either
mapped to a flag or listed in ``unsupported``. A disaggregated policy maps to one command per
pool (``FlagMapping.roles``: prefill and decode servers, each pool with its own TP degree and no
data parallelism), so the servers' GPUs add up to the pools' instances x their TP.

Flag names are those of vLLM 0.32 (``vllm/engine/arg_utils.py``; checked against the
installed parser by ``backends.live.vllm_python.check_vllm_args``) and SGLang 0.5.23
(``sglang/srt/arg_groups/fields/*.py``; checked in tests against the wheel's field definitions).
A deployment whose ``gpu`` is ``"cpu"`` targets vLLM's CPU build: KV memory is given in
bytes (``--kv-cache-memory-bytes``) and blocks are multiples of 32 tokens.

A policy the engine would REJECT AT STARTUP is refused like an inexpressible knob (so it is not
runnable as simulated): vLLM's ``SchedulerConfig`` requires max_num_batched_tokens >= max_model_len
without chunked prefill, and >= max_num_seqs always (``_vllm_token_budget``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from backends.base import Deployment
from tuner.policy import Policy

DEFAULT_CPU_KV_BYTES = 512 * 2**20
"""KV-cache memory of a CPU server when the caller gives none, bytes (512 MiB)."""

_DEFAULT = Policy()
_MAX_POLICY_BUDGET = 1_048_576
"""The largest max_num_batched_tokens a Policy holds (tuner.policy validation)."""
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ranks vLLM's ``--max-lora-rank`` accepts."""

# Knobs that describe the simulator's world, not an engine flag; reported when changed.
_SIM_ONLY = {
    "spec_acceptance": "a simulator assumption: the live engine measures acceptance itself",
}
_OUTSIDE_ENGINE = {
    "max_queue_depth": "admission control is not an engine flag (put a gateway in front of the server)",
    "min_kv_headroom": "admission control is not an engine flag (put a gateway in front of the server)",
    "ttft_admission": "admission control is not an engine flag (put a gateway in front of the server)",
    "admission_action": "admission control is not an engine flag (put a gateway in front of the server)",
    "defer_s": "admission control is not an engine flag (put a gateway in front of the server)",
    "replicas": "replica count is a deployment choice: start that many servers behind a router",
    "routing": "routing happens in a router in front of the servers, not in the engine",
    "migration": "live migration between replicas (Llumnix) is not in the engine",
    "autoscale": "autoscaling is done by the orchestrator, not the engine",
    "spot_fraction": "spot capacity is an orchestration choice, not an engine flag",
    "vtc_input_weight": "VTC fairness is not implemented by the engine",
    "vtc_output_weight": "VTC fairness is not implemented by the engine",
    "tenant_weights": "per-tenant fairness weights are not implemented by the engine",
    "tenant_cap_tokens_s": "per-tenant rate caps are not implemented by the engine",
}


@dataclass(frozen=True, slots=True)
class Role:
    """The servers of one pool of a disaggregated deployment: ``count`` servers, each started
    with ``args`` (the whole argv after the module: the shared flags, its TP, its role flags)."""

    name: str
    """Pool name: prefill or decode."""
    count: int
    tp: int
    args: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FlagMapping:
    """The engine flags for one policy.

    ``args``: argv after the module (``--flag value`` pairs, no shell quoting needed);
    ``unsupported``: ``(knob, value asked for, reason)`` for each knob the engine cannot honour;
    ``effective``: the Policy with those knobs reset (what the engine really runs);
    ``notes``: what a real deployment needs beyond these flags (one line each);
    ``roles``: for a disaggregated policy, the prefill and decode servers (each with its own TP
    degree and role flags); ``args`` are then only the flags they share, not a server's command.
    """

    args: list[str]
    unsupported: tuple[tuple[str, Any, str], ...]
    effective: Policy
    notes: tuple[str, ...] = ()
    roles: tuple[Role, ...] = ()

    def command(self, engine: str = "vllm", python: str = "python", role: str | None = None) -> list[str]:
        """The whole argv: ``python -m <engine entry point> <args>``; with ``roles``, the command of
        one server of pool ``role`` (ValueError without one: the pools' servers differ)."""
        module = {"vllm": "vllm.entrypoints.openai.api_server", "sglang": "sglang.launch_server"}[engine]
        if not self.roles and role is None:
            return [python, "-m", module, *self.args]
        match = [r for r in self.roles if r.name == role]
        if not match:
            raise ValueError(f"role {role!r}: this mapping's servers are "
                             + (", ".join(r.name for r in self.roles) if self.roles else "all alike (give no role)"))
        return [python, "-m", module, *match[0].args]


def lora_setup(workload: Any) -> dict[str, int]:
    """The LoRA keywords of ``vllm_args`` / ``sglang_args`` for a workload: its adapter count and
    rank when it names adapters, else none (``engine_args(..., **lora_setup(w))``)."""
    from workloads.adapters import adapter_rank, uses_adapters

    return {"lora_adapters": len(workload.adapters), "lora_rank": adapter_rank(workload)} if uses_adapters(workload) else {}


def _lora(b: _Builder, p: Policy, adapters: int, rank: int, *, slots: str, rank_flag_value: int, cache: str,
          paths: str) -> None:
    """LoRA serving flags when the workload names ``adapters`` adapters of ``rank``: ``max_loras``
    slots per batch, every adapter kept in host memory (as the simulator assumes)."""
    b.handled("max_loras")
    b.flag("--enable-lora")
    b.flag(slots, p.max_loras)
    b.flag("--max-lora-rank", rank_flag_value)
    b.flag(cache, max(p.max_loras, adapters))
    b.notes.append(f"LoRA: name the workload's {adapters} adapter(s) of rank {rank} with {paths} (requests ask "
                   "for them by name as their model)")


def is_cpu(deployment: Deployment) -> bool:
    """True when the deployment targets a CPU build of the engine (``gpu: cpu``)."""
    return deployment.gpu.strip().lower() == "cpu"


class _Builder:
    """Collects args, unsupported knobs and the effective-policy resets of one mapping."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.args: list[str] = []
        self.unsupported: list[tuple[str, Any, str]] = []
        self.resets: dict[str, Any] = {}
        self.notes: list[str] = []
        self.seen: set[str] = set()
        self.pools: list[tuple[str, int, int, list[str]]] = []
        """Disaggregated servers: (role, count, tp, the role's own flags after the shared ones)."""

    def flag(self, name: str, value: Any = None) -> None:
        self.args.append(name)
        if value is not None:
            self.args.append(_text(value))

    def model_and_dtypes(self, deployment: Deployment, *, model_flag: str, model: str, host: str | None,
                         port: int | None, context_flag: str, fp8_kv: str) -> None:
        """The launch header both engines share: model, address, context, weight/KV dtypes."""
        self.flag(model_flag, model)
        if host:
            self.flag("--host", host)
        if port is not None:
            self.flag("--port", port)
        if deployment.max_model_len > 0:
            self.flag(context_flag, deployment.max_model_len)
        self.flag("--dtype", _dtype(deployment.weight_dtype))
        if deployment.weight_dtype == "fp8":
            self.flag("--quantization", "fp8")
        if deployment.kv_dtype == "fp8":
            self.flag("--kv-cache-dtype", fp8_kv)

    def handled(self, *knobs: str) -> None:
        self.seen.update(knobs)

    def refuse(self, knob: str, reason: str, reset_to: Any = None) -> None:
        """Report ``knob`` as unsupported and reset it (to its default unless given)."""
        self.seen.add(knob)
        value = getattr(self.policy, knob)
        self.unsupported.append((knob, value, reason))
        self.resets[knob] = getattr(_DEFAULT, knob) if reset_to is None else reset_to

    def refuse_if_changed(self, knob: str, reason: str) -> None:
        self.seen.add(knob)
        if getattr(self.policy, knob) != getattr(_DEFAULT, knob):
            self.refuse(knob, reason)

    def finish(self, engine: str) -> FlagMapping:
        for knob, reason in {**_SIM_ONLY, **_OUTSIDE_ENGINE}.items():
            if knob not in self.seen:
                self.refuse_if_changed(knob, reason)
        left = {f.name for f in fields(Policy)} - self.seen - {"schema_version"}
        for knob in sorted(left):  # a knob added to Policy but not to this mapping: never drop it
            self.refuse_if_changed(knob, f"servetune does not map this knob to {engine} yet")
        effective = self.policy.replace(**self.resets) if self.resets else self.policy
        roles = tuple(Role(name, count, tp, (*self.args, *own)) for name, count, tp, own in self.pools)
        return FlagMapping(list(self.args), tuple(self.unsupported), effective, tuple(self.notes), roles)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def _dtype(d: str) -> str:
    return {"bf16": "bfloat16", "fp16": "float16", "fp8": "auto"}[d]


# --------------------------------------------------------------------------------- vLLM
def vllm_args(
    policy: Policy,
    deployment: Deployment,
    *,
    model_path: str | None = None,
    port: int | None = None,
    host: str | None = None,
    kv_cache_bytes: int | None = None,
    lora_adapters: int = 0,
    lora_rank: int = 16,
) -> FlagMapping:
    """vLLM (V1, 0.32) flags for ``policy`` on ``deployment``.

    ``model_path``: what ``--model`` gets (default ``deployment.model``); ``kv_cache_bytes``:
    KV memory on CPU, bytes (default :data:`DEFAULT_CPU_KV_BYTES`; on GPU it replaces
    ``--gpu-memory-utilization`` when given). ``lora_adapters`` (> 0: the workload names that
    many LoRA adapters, of rank ``lora_rank``; see ``lora_setup``): LoRA is enabled with
    ``max_loras`` slots; without adapters a changed ``max_loras`` is reported unsupported.
    """
    b = _Builder(policy)
    p = policy
    cpu = is_cpu(deployment)
    b.model_and_dtypes(deployment, model_flag="--model", model=model_path or deployment.model, host=host, port=port,
                       context_flag="--max-model-len", fp8_kv="fp8")

    # batch planner
    b.handled("batching", "max_num_seqs", "max_num_batched_tokens", "long_prefill_token_threshold", "tp")
    if p.batching in ("static", "decode_maximal"):
        b.refuse("batching", f"vLLM has no {p.batching} batching (only chunked prefill on or off)")
    chunked = b.resets.get("batching", p.batching) == "chunked"
    b.flag("--enable-chunked-prefill" if chunked else "--no-enable-chunked-prefill")
    b.flag("--max-num-seqs", p.max_num_seqs)
    mbt = _vllm_token_budget(b, p, deployment, chunked)
    b.flag("--max-num-batched-tokens", mbt)
    if p.long_prefill_token_threshold > 0:
        b.flag("--long-prefill-token-threshold", p.long_prefill_token_threshold)
    pd = p.disaggregated and not cpu  # prefill/decode servers: TP per pool, no data parallelism (_pd_pools)
    if not pd:
        b.flag("--tensor-parallel-size", p.tp)
    if not cpu and not pd:
        _replicas(b, p, deployment, "--data-parallel-size")

    # memory manager
    b.handled("block_size", "gpu_memory_utilization", "prefix_caching", "cpu_offload_gb")
    if cpu and p.block_size % 32:
        b.refuse("block_size", "vLLM's CPU attention needs a multiple of 32 tokens; raised to 32", reset_to=32)
    b.flag("--block-size", b.resets.get("block_size", p.block_size))
    if cpu:
        b.flag("--kv-cache-memory-bytes", int(kv_cache_bytes or DEFAULT_CPU_KV_BYTES))
        b.refuse_if_changed("gpu_memory_utilization", "on CPU the KV cache is sized in bytes "
                            "(--kv-cache-memory-bytes), not as a memory fraction")
    elif kv_cache_bytes:
        b.flag("--kv-cache-memory-bytes", int(kv_cache_bytes))
        b.refuse_if_changed("gpu_memory_utilization", "kv_cache_bytes was given: it overrides the fraction")
    else:
        b.flag("--gpu-memory-utilization", p.gpu_memory_utilization)
    b.flag("--enable-prefix-caching" if p.prefix_caching else "--no-enable-prefix-caching")
    b.refuse_if_changed("kv_watermark", "vLLM V1 has no free-block watermark flag")
    if p.preemption == "request":
        b.refuse("preemption", "vLLM V1 always allocates KV as tokens grow and preempts at step boundaries")
    if p.preemption_mode == "swap":
        b.refuse("preemption_mode", "vLLM V1 preempts by recompute only (no swap space)")
    if p.cpu_offload_gb > 0:
        b.flag("--kv-offloading-size", p.cpu_offload_gb)
        b.flag("--kv-offloading-backend", "native")
    b.refuse_if_changed("ssd_offload_gb", "an SSD KV tier needs LMCache (--kv-offloading-backend lmcache "
                        "plus an LMCache config file), not expressible as flags")
    b.refuse_if_changed("offload_threshold", "vLLM's offloading connector has no paging threshold")

    # queue
    b.handled("queue")
    if p.queue in ("fcfs", "priority"):
        b.flag("--scheduling-policy", p.queue)
    else:
        b.refuse("queue", f"vLLM schedules fcfs or priority only (no {p.queue})")
        b.flag("--scheduling-policy", "fcfs")

    # speculation
    _vllm_speculation(b, p)

    # disaggregation
    b.handled("disaggregated", "prefill_instances", "decode_instances", "disagg_min_prompt", "disagg_min_queue",
              "prefill_tp", "decode_tp")  # the last six are inert without disaggregation
    if p.disaggregated and cpu:
        b.refuse("disaggregated", "prefill/decode disaggregation needs GPU KV transfer (NIXL); not on CPU")
    elif p.disaggregated:
        b.flag("--kv-transfer-config", {"kv_connector": "NixlConnector", "kv_role": "kv_both"})
        _pd_pools(b, p, deployment, tp_flag="--tensor-parallel-size", role_flag=None, setup=(
            "each on its own GPUs with its own port and NIXL side-channel port, and a P/D proxy in front "
            "(vLLM's disagg proxy example or llm-d); the proxy sends each prompt to a prefill server with "
            "max_tokens=1, then to a decode server with the returned kv_transfer_params"))
        for knob in ("disagg_min_prompt", "disagg_min_queue"):
            b.refuse_if_changed(knob, "conditional disaggregation is a proxy decision, not an engine flag")

    if lora_adapters:
        _lora(b, p, lora_adapters, lora_rank, slots="--max-loras",
              rank_flag_value=next((r for r in VLLM_LORA_RANKS if r >= lora_rank), VLLM_LORA_RANKS[-1]),
              cache="--max-cpu-loras", paths="--lora-modules NAME=PATH ...")
    else:
        b.refuse_if_changed("max_loras", "the workload names no LoRA adapters (LoRA flags follow the workload: "
                            "lora_adapters / lora_setup)")
    if cpu:
        b.flag("--enforce-eager")
    return b.finish("vLLM")


def context_length(deployment: Deployment) -> tuple[int, str]:
    """The max model length the engine starts with, and what it is: ``deployment.max_model_len``
    when set, else the catalog model's context (``max_position``, what vLLM derives from the
    model's config); ``(0, "")`` when unknown (a model the catalog does not know)."""
    if deployment.max_model_len > 0:
        return deployment.max_model_len, "max_model_len"
    from backends.sim.catalog import get_model

    try:
        return get_model(deployment.model).max_position, f"{deployment.model}'s context length"
    except (ValueError, OSError):
        return 0, ""


def _vllm_token_budget(b: _Builder, p: Policy, d: Deployment, chunked: bool) -> int:
    """``--max-num-batched-tokens`` under vLLM's startup rules (``SchedulerConfig.verify_max_model_len``
    in vllm/config/scheduler.py raises ValueError otherwise): without chunked prefill the budget
    must be >= max_model_len, and always >= max_num_seqs. A policy that breaks a rule is refused
    (its budget raised to the least value vLLM accepts, named in the reason), so it is not
    runnable as simulated."""
    mbt = p.max_num_batched_tokens
    need, rules = mbt, []
    ctx, what = context_length(d)
    if not chunked and ctx > mbt:
        need = ctx
        rules.append(f"vLLM rejects max_num_batched_tokens < max_model_len ({ctx}, {what}) when chunked prefill "
                     "is off")
    elif not chunked and not ctx:
        b.notes.append(f"chunked prefill off: vLLM rejects a token budget ({mbt}) below the max model length, "
                       f"which servetune cannot check for model {d.model!r} (set deployment.max_model_len)")
    if p.max_num_seqs > mbt:
        rules.append(f"vLLM rejects max_num_batched_tokens < max_num_seqs ({p.max_num_seqs})")
        need = max(need, p.max_num_seqs)
    if need > mbt:
        b.refuse("max_num_batched_tokens", f"{'; '.join(rules)}; raised to {need}",
                 reset_to=min(need, _MAX_POLICY_BUDGET))  # a 10M context exceeds the Policy's range
    return need


def _replicas(b: _Builder, p: Policy, d: Deployment, flag: str) -> None:
    """Data-parallel replicas inside one engine: ``replicas`` (0 = all that fit at this TP)."""
    fit = max(1, d.n_gpus // p.tp)
    if p.replicas > fit:
        b.refuse("replicas", f"only {fit} replica(s) of tp={p.tp} fit on {d.n_gpus} GPU(s)", reset_to=fit)
    dp = min(p.replicas, fit) if p.replicas > 0 else fit
    if dp > 1:
        b.flag(flag, dp)
    b.handled("replicas")


def _pd_pools(b: _Builder, p: Policy, d: Deployment, *, tp_flag: str, role_flag: str | None, setup: str) -> None:
    """The prefill and decode servers of a disaggregated policy (``FlagMapping.roles``): each
    pool's servers get its own TP degree (``prefill_tp`` / ``decode_tp``, 0 = tp) and, with
    ``role_flag``, their role; no data parallelism: the instance counts ARE the servers, so the
    GPUs add up to prefill_instances x prefill_tp + decode_instances x decode_tp. ``replicas`` is
    inert here, as in the simulator (the pools replace the replicas). ``setup``: what else the
    deployment needs (proxy, transfer backend), ending the note."""
    b.handled("replicas")
    ptp, dtp = p.pool_tps
    for role, count, tp in (("prefill", p.prefill_instances, ptp), ("decode", p.decode_instances, dtp)):
        b.pools.append((role, count, tp, [tp_flag, str(tp), *([role_flag, role] if role_flag else [])]))
    need = p.prefill_instances * ptp + p.decode_instances * dtp
    over = "" if need <= d.n_gpus else f", MORE than the deployment's {d.n_gpus}"
    b.notes.append(f"disaggregation: start {p.prefill_instances} prefill server(s) of tp={ptp} and "
                   f"{p.decode_instances} decode server(s) of tp={dtp} ({need} GPUs in all{over}) with their "
                   f"role's command, {setup}")


def _vllm_speculation(b: _Builder, p: Policy) -> None:
    b.handled("speculation", "spec_k", "spec_dynamic", "spec_draft_model")
    if p.speculation == "off":
        return
    if p.speculation == "ngram":
        cfg: dict[str, Any] = {"method": "ngram", "num_speculative_tokens": p.spec_k,
                               "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    else:
        cfg = {"model": p.spec_draft_model, "num_speculative_tokens": p.spec_k}
        b.notes.append(f"draft model {p.spec_draft_model!r}: pass its Hugging Face id or local path")
    b.flag("--speculative-config", cfg)
    if p.spec_dynamic:
        b.refuse("spec_dynamic", "vLLM uses a fixed num_speculative_tokens")


# ------------------------------------------------------------------------------- SGLang
def sglang_args(
    policy: Policy,
    deployment: Deployment,
    *,
    model_path: str | None = None,
    port: int | None = None,
    host: str | None = None,
    kv_cache_bytes: int | None = None,
    lora_adapters: int = 0,
    lora_rank: int = 16,
) -> FlagMapping:
    """SGLang (``sglang.launch_server``) flags for ``policy`` on ``deployment``; ``lora_adapters``
    / ``lora_rank`` as in ``vllm_args``."""
    b = _Builder(policy)
    p = policy
    b.model_and_dtypes(deployment, model_flag="--model-path", model=model_path or deployment.model, host=host,
                       port=port, context_flag="--context-length", fp8_kv="fp8_e4m3")

    b.handled("batching", "max_num_seqs", "max_num_batched_tokens", "long_prefill_token_threshold", "tp")
    if p.batching in ("static", "decode_maximal"):
        b.refuse("batching", f"SGLang has no {p.batching} batching (chunked prefill on or off)")
    chunked = b.resets.get("batching", p.batching) == "chunked"
    b.flag("--max-running-requests", p.max_num_seqs)
    b.flag("--chunked-prefill-size", p.max_num_batched_tokens if chunked else -1)
    b.flag("--max-prefill-tokens", p.max_num_batched_tokens)
    # No startup rule ties these to the context or to --max-running-requests in SGLang (server_args.py
    # checks neither; a prefill budget below the context still admits one long prompt): nothing refused.
    b.refuse_if_changed("long_prefill_token_threshold", "SGLang caps every prefill chunk by "
                        "--chunked-prefill-size; there is no separate per-request cap")
    if not p.disaggregated:  # prefill/decode servers: TP per pool, no data parallelism (_pd_pools)
        b.flag("--tp-size", p.tp)
        _replicas(b, p, deployment, "--dp-size")

    b.handled("block_size", "gpu_memory_utilization", "prefix_caching", "cpu_offload_gb")
    b.flag("--page-size", p.block_size)
    if kv_cache_bytes:
        b.refuse_if_changed("gpu_memory_utilization", "kv_cache_bytes was given; SGLang sizes the pool "
                            "by --max-total-tokens instead")
        b.notes.append("SGLang sizes the KV pool in tokens: set --max-total-tokens from kv_cache_bytes")
    else:
        b.flag("--mem-fraction-static", p.gpu_memory_utilization)
        b.notes.append("--mem-fraction-static is the fraction for weights + KV pool (SGLang keeps the "
                       "rest for activations), close to but not the same as vLLM's memory utilisation")
    if not p.prefix_caching:
        b.flag("--disable-radix-cache")
    b.refuse_if_changed("kv_watermark", "SGLang has no free-block watermark (--schedule-conservativeness "
                        "is a different knob)")
    if p.preemption == "request":
        b.refuse("preemption", "SGLang retracts running requests under memory pressure; no reservation mode")
    if p.preemption_mode == "swap":
        b.refuse("preemption_mode", "SGLang retracts by recompute (no swap of preempted KV)")
    if p.cpu_offload_gb > 0:
        b.flag("--enable-hierarchical-cache")
        b.flag("--hicache-size", max(1, round(p.cpu_offload_gb)))  # whole GB in SGLang
    b.refuse_if_changed("ssd_offload_gb", "an SSD tier needs --hicache-storage-backend with its own "
                        "config; not mapped")
    b.refuse_if_changed("offload_threshold", "HiCache has write policies, not a paging threshold")

    b.handled("queue")
    if p.queue == "fcfs":
        b.flag("--schedule-policy", "fcfs")
    elif p.queue == "priority":
        # SGLang serves HIGHER values first unless told otherwise; servetune means lowest first.
        b.flag("--schedule-policy", "fcfs")
        b.flag("--enable-priority-scheduling")
        b.flag("--schedule-low-priority-values-first")
    elif p.queue == "sjf" and p.prefix_caching:
        # Orders by uncached prompt tokens (shortest remaining prefill): sjf on what is left to do.
        b.flag("--schedule-policy", "shortest-prefill-first")
        b.notes.append("sjf -> --schedule-policy shortest-prefill-first (experimental in SGLang; orders "
                       "by uncached prompt tokens, so cache hits count as shorter)")
    else:
        why = {
            "sjf": "SGLang's shortest-prefill-first needs the radix (prefix) cache, which is off",
            "sjf_output": "SGLang's lof is longest-output-first, the opposite; no shortest-output order",
        }.get(p.queue, f"SGLang has no {p.queue} order (choices: lpm, random, fcfs, dfs-weight, lof, "
                       "priority, routing-key, hrrn, shortest-prefill-first)")
        b.refuse("queue", why)
        b.flag("--schedule-policy", "fcfs")

    b.handled("speculation", "spec_k", "spec_dynamic", "spec_draft_model")
    if p.speculation == "ngram":
        b.flag("--speculative-algorithm", "NGRAM")
        b.flag("--speculative-num-draft-tokens", p.spec_k)
    elif p.speculation == "draft":
        b.flag("--speculative-algorithm", "STANDALONE")
        b.flag("--speculative-draft-model-path", p.spec_draft_model)
        b.flag("--speculative-num-steps", p.spec_k)
        b.flag("--speculative-eagle-topk", 1)
        b.flag("--speculative-num-draft-tokens", p.spec_k + 1)
        b.notes.append(f"draft model {p.spec_draft_model!r}: pass its Hugging Face id or local path")
    if p.speculation != "off" and p.spec_dynamic:
        b.refuse("spec_dynamic", "SGLang uses fixed speculative steps")

    b.handled("disaggregated", "prefill_instances", "decode_instances", "disagg_min_prompt", "disagg_min_queue",
              "prefill_tp", "decode_tp")  # the last six are inert without disaggregation
    if p.disaggregated:
        _pd_pools(b, p, deployment, tp_flag="--tp-size", role_flag="--disaggregation-mode", setup=(
            "each on its own GPUs and port, with --disaggregation-transfer-backend mooncake|nixl, and the "
            "router in front (python -m sglang_router.launch_router --pd-disaggregation --prefill URL "
            "--decode URL)"))
        for knob in ("disagg_min_prompt", "disagg_min_queue"):
            b.refuse_if_changed(knob, "conditional disaggregation is a router decision, not an engine flag")

    if lora_adapters:
        _lora(b, p, lora_adapters, lora_rank, slots="--max-loras-per-batch", rank_flag_value=lora_rank,
              cache="--max-loaded-loras", paths="--lora-paths NAME=PATH ...")
    elif p.max_loras != _DEFAULT.max_loras:
        b.flag("--max-loras-per-batch", p.max_loras)
    b.handled("max_loras")
    return b.finish("SGLang")


MAPPERS: dict[str, Callable[..., FlagMapping]] = {"vllm": vllm_args, "sglang": sglang_args}


def engine_args(engine: str, policy: Policy, deployment: Deployment, **kw: Any) -> FlagMapping:
    """``vllm_args`` or ``sglang_args`` by engine name (ValueError for another name)."""
    try:
        mapper = MAPPERS[engine]
    except KeyError:
        raise ValueError(f"engine {engine!r}: must be one of {', '.join(MAPPERS)}") from None
    return mapper(policy, deployment, **kw)
