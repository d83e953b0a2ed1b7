"""Engine presets: what a serving engine does each iteration besides the model's kernels.

An ``EnginePreset`` bundles the per-step CPU cost (scheduling, input preparation, sampling,
detokenisation) and the engine's default batching behaviour, so a simulated trial matches the
engine the user will run. Overheads are in seconds. ``vllm-v1`` is fitted to real vLLM v0.15.1
runs on H100 (see ``benchmarks/bench_fidelity.py``); the others are scaled from it by public
characterisations (vLLM V1 blog, Jan 2025: V0's CPU overhead was a large share of a decode step;
SGLang and TensorRT-LLM overlap scheduling with the GPU) and are ASSUMPTIONS until calibrated
(``profiles.fit_efficiency`` fits ``overhead_scale`` and the additive terms).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DecodeReserve:
    """SGLang's admission rule (``PrefillAdder``): a waiting request is admitted only if the free
    and evictable KV tokens cover its prefill plus its whole ``max_tokens`` after setting aside,
    for every running request, ``ratio`` × the tokens it may still generate (``max_tokens`` −
    generated). The ratio (``new_token_ratio``) starts at ``init``, falls by
    (``init`` − ``init`` × ``min_factor``) / ``decay_steps`` every decode step down to
    ``init`` × ``min_factor``, is re-estimated after a retraction as (Σ generated +
    ``retract_steps`` × running) / Σ ``max_tokens`` (at most 1), and starts over when the engine
    idles. Defaults: SGLang's (``SGLANG_INIT_NEW_TOKEN_RATIO`` 0.7,
    ``SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR`` 0.14, ``SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS`` 600,
    ``retract_decode_steps`` 20, ``CLIP_MAX_NEW_TOKENS`` 4,096: what a request may still generate
    counts at most ``clip`` tokens)."""

    init: float = 0.7
    min_factor: float = 0.14
    decay_steps: int = 600
    retract_steps: int = 20
    clip: int = 4096

    @property
    def floor(self) -> float:
        return self.init * self.min_factor

    @property
    def decay(self) -> float:
        """Fall of the ratio per decode step."""
        return (self.init - self.floor) / self.decay_steps


@dataclass(frozen=True, slots=True)
class EnginePreset:
    """One engine's per-iteration behaviour."""

    name: str
    iteration_overhead_s: float
    """Fixed CPU/launch cost per iteration (scheduling, sampling, output processing), s."""
    per_seq_overhead_s: float
    """Extra cost per sequence in the batch per iteration (input prep, detokenise, stream), s."""
    batching: str = "chunked"
    """Default batching: chunked (token budget mixing decodes + prefill chunks) or
    continuous (prefill-first, vLLM V0)."""
    chunked_prefill: bool = True
    prefix_caching: bool = True
    max_num_batched_tokens: int = 2048
    """Default token budget per iteration, tokens."""
    max_num_seqs: int = 256
    large_gpu_batch: tuple[int, int] | None = None
    """(max_num_batched_tokens, max_num_seqs) the engine's server defaults to on a GPU with at
    least ``LARGE_GPU_GIB`` of memory that is not an A100 (vLLM's ``EngineArgs.get_batch_defaults``
    for ``vllm serve``: 8192 / 1024 on H100, H200, B200); None: the two fields above on every GPU."""
    block_size: int = 16
    """KV block size, tokens."""
    cuda_graph_max_batch: int = 512
    """Decode batches up to this size replay CUDA graphs (no per-kernel launch cost)."""
    eager_launch_overhead_s: float = 0.0
    """Extra per-iteration launch cost when a batch runs without CUDA graphs (prefill/large), s."""
    kv_tier_async: bool = False
    """How prefix KV held in a lower tier (CPU/SSD offload) comes back. False: the load's
    transfer time is added to the next iteration (the whole batch waits) and an entry the GPU
    evicts is copied down the same way. True (vLLM V1's offloading connector): the load runs on
    its own stream beside the running batch; the request waits (``WAITING_FOR_REMOTE_KVS``)
    until the load has finished by the end of a step, is seen ready when that step's output is
    processed and, with async scheduling (the next step is already planned), computes in the step
    after that: at least two steps after the one that issued the load. Stores are write-through
    on their own stream, off the critical path."""
    victims_to_tier: bool = True
    """With a CPU KV tier, a preemption victim's KV pages out to it and comes back whole instead
    of being recomputed (the simulator's KV paging; vLLM V0's swap; TensorRT-LLM: ASSUMED). False:
    the engine has no swap and its victims recompute whatever tier it has (vLLM V1; SGLang, which
    retracts); ``preemption_mode: swap`` still pages them out."""
    victim_keeps_output: bool = True
    """A recompute victim's generated tokens stay in the prefix cache beside its prompt (vLLM hashes
    and keeps every full block a request computed). False: only what its last prefill computed
    stays (SGLang inserts a request's prompt into its radix tree after the prefill, and retraction
    frees the tokens decoded since, ``ScheduleBatch.release_req``)."""
    decode_reserve: DecodeReserve | None = None
    """Admission sets KV aside for the running requests' future tokens (SGLang, ``DecodeReserve``).
    None: a request is admitted when the blocks its prefill needs are free now (vLLM)."""
    kv_tier_write_through: bool = False
    """How the CPU KV tier is filled. True: every block is stored as it is computed and lookups
    refresh the blocks they find (vLLM V1's offloading connector; SGLang's HiCache under its
    default ``--hicache-write-policy write_through``, which backs a radix node up when it is
    inserted): the tier is an LRU over recent blocks, largely a copy of the GPU cache, and it has
    no paging threshold. False: it takes what the GPU evicts (LMCache-style, TensorRT-LLM's
    secondary offload), adding its size to the cache (``tiers.py``)."""
    schedule_ahead: bool = False
    """The engine plans step k+1 while step k runs (vLLM V1's async scheduling, on by default
    since v0.11 for the ``mp`` / ``uni`` executors; SGLang's overlap scheduler): step k+1's batch
    is fixed when step k starts, so a request that arrives while the engine is busy joins at the
    earliest the step after the next one, i.e. it waits for the step in flight and then for one
    more (a long prefill step delays it by its whole length). An idle engine schedules an arrival
    at once. False: the batch is planned at the step boundary from everything arrived by then.
    Off with speculative decoding as servetune runs it (n-gram, draft model): vLLM turns async
    scheduling off for those methods (it keeps it only for EAGLE/MTP-style and GPU n-gram
    drafts), and SGLang turns its overlap scheduler off for speculative decoding."""
    prefix_cache_at_schedule: bool = False
    """Prefix-cache blocks become hittable when the step that computes them is SCHEDULED (vLLM V1:
    ``KVCacheManager.allocate_slots`` hashes and caches the full blocks of the tokens it allocates
    for, so a request scheduled later in the same step, or in any later step, reuses them; within
    a step each layer writes every new token's KV before its attention reads the cache). False:
    when the chunk that computes them has run (vLLM V0 marks blocks computed after the step;
    SGLang inserts a chunk's prefix into its radix tree after it runs)."""
    client_lag_steps: float = 0.0
    """Steps between the engine sampling a token and the client receiving it (output processing,
    detokenisation and streaming; the step async scheduling adds is ``schedule_ahead``, in the
    loop), in units of the request's own time per output token; added to the records'
    first-token and finish times (``client_lag``). 0: not measured for this engine."""
    dp_shares_experts: bool = False
    """Data-parallel replicas of an MoE model share its expert layers (vLLM V1's
    ``--data-parallel-size``): the routed experts are split over DP × TP GPUs (one
    tensor-parallel group per expert layer, its weights 1/(DP·TP) per GPU), every rank's tokens
    are gathered into each expert layer and its outputs reduce-scattered back, and the ranks
    step in lockstep, padded to the largest rank's token count (idle ranks run dummy steps).
    False: replicas are independent engines (SGLang's ``--dp-size`` without DP attention)."""
    description: str = ""

    def batch_defaults(self, gpu: object = None) -> tuple[int, int]:
        """(max_num_batched_tokens, max_num_seqs) the engine runs with on ``gpu`` (a GPUSpec or
        catalog name; None: the GPU-independent fields) when the user sets neither."""
        if self.large_gpu_batch is not None and gpu is not None:
            from backends.sim.catalog import get_gpu

            g = get_gpu(gpu) if isinstance(gpu, str) else gpu
            if g.memory_bytes >= LARGE_GPU_GIB * 2**30 and "a100" not in g.name.lower():  # type: ignore[attr-defined]
                return self.large_gpu_batch
        return self.max_num_batched_tokens, self.max_num_seqs


LARGE_GPU_GIB = 70
"""GPU memory (GiB) from which vLLM's server defaults to the larger batch limits (``large_gpu_batch``)."""

ENGINES: dict[str, EnginePreset] = {
    p.name: p
    for p in (
        EnginePreset(
            "vllm-v1", iteration_overhead_s=0.6e-3, per_seq_overhead_s=30e-6, batching="chunked",
            chunked_prefill=True, prefix_caching=True, max_num_batched_tokens=2048, max_num_seqs=256,
            eager_launch_overhead_s=0.5e-3, client_lag_steps=0.65, kv_tier_async=True, kv_tier_write_through=True, victims_to_tier=False,
            schedule_ahead=True, large_gpu_batch=(8192, 1024),
            prefix_cache_at_schedule=True, dp_shares_experts=True,
            description="vLLM >= 0.8 (V1): chunked prefill + prefix caching on, token budget per step"),
        EnginePreset(
            "vllm-v0", iteration_overhead_s=3.0e-3, per_seq_overhead_s=60e-6, batching="continuous",
            chunked_prefill=False, prefix_caching=False, max_num_batched_tokens=8192, max_num_seqs=256,
            eager_launch_overhead_s=1.5e-3,
            description="vLLM <= 0.6 (V0): prefill-first continuous batching, no chunking by default"),
        EnginePreset(
            "sglang", iteration_overhead_s=0.5e-3, per_seq_overhead_s=20e-6, batching="chunked",
            chunked_prefill=True, prefix_caching=True, max_num_batched_tokens=8192, max_num_seqs=1024,
            block_size=1, eager_launch_overhead_s=0.5e-3, schedule_ahead=True, kv_tier_write_through=True,
            victims_to_tier=False, victim_keeps_output=False, decode_reserve=DecodeReserve(),
            description="SGLang: RadixAttention prefix cache, chunked prefill, overlapped scheduler, look-ahead admission"),
        EnginePreset(
            "tensorrt-llm", iteration_overhead_s=0.3e-3, per_seq_overhead_s=10e-6, batching="chunked",
            chunked_prefill=True, prefix_caching=True, max_num_batched_tokens=8192, max_num_seqs=256,
            block_size=32, eager_launch_overhead_s=0.3e-3,
            description="TensorRT-LLM (C++ runtime, in-flight batching, KV reuse)"),
    )
}


def get_engine(name: str) -> EnginePreset:
    """An engine preset by name (vllm-v1, vllm-v0, sglang, tensorrt-llm; vllm = vllm-v1)."""
    key = name.strip().lower().replace("_", "-")
    key = {"vllm": "vllm-v1", "trtllm": "tensorrt-llm", "trt-llm": "tensorrt-llm"}.get(key, key)
    if key not in ENGINES:
        close = difflib.get_close_matches(key, list(ENGINES), n=3, cutoff=0.4)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}{hint}")
    return ENGINES[key]
