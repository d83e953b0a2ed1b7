"""LoRA adapters on one instance (vLLM multi-LoRA / S-LoRA / Punica), ``Policy.max_loras``.

Mechanism (as vLLM V1 does it):
  slots     The running set may use at most ``max_loras`` distinct adapters. A waiting request
            whose adapter is not among them while all slots are taken is skipped (it keeps its
            place; requests behind it may start) until a slot frees.
  memory    GPU memory holds ``max_loras`` adapter slots sized for the workload's LoRA rank,
            allocated before the KV cache: they come out of the KV budget (``reserved_blocks``).
  loading   An adapter not resident in a slot is copied host → GPU (each GPU its shard, over
            its own PCIe link) before the iteration that first uses it; slots are reused least
            recently used first. Every adapter is assumed in the host-side cache (vLLM's
            ``--max-cpu-loras`` large enough): no disk loads.
  compute   Punica's SGMV/BGMV kernels add, per LoRA token, 2 FLOPs per adapter parameter
            (shrink x·A then expand ·B) and read each active adapter's weights once per
            iteration; two kernel launches (shrink, expand) per adapted operator group per layer.
Targets: every linear layer of the blocks (q, k, v, o, gate, up, down: vLLM's default when the
adapters name them all). Column-parallel layers shard B (A replicated), row-parallel ones shard
A (B replicated), so a GPU holds ``rank × (in_shard + out_shard)`` per matrix.
Units: bytes, seconds, FLOPs (per GPU of the instance).
"""

from __future__ import annotations

from collections import OrderedDict

from backends.sim.catalog import ModelSpec
from backends.sim.costmodel import CostModel

LORA_DTYPE_BYTES = 2.0  # adapters are bf16/fp16 (vLLM: the model's dtype)


def adapter_params_per_gpu(model: ModelSpec, rank: int, tp: int = 1) -> float:
    """Parameters of one rank-``rank`` adapter on one GPU of a ``tp`` instance (all layers)."""
    h, q, kv = model.hidden, model.heads * model.head_dim, model.kv_heads * model.head_dim
    per_layer = (h + q / tp) + 2 * (h + kv / tp) + (q / tp + h)  # q, k, v (column), o (row)
    if model.ffn:
        per_layer += (model.mlp_mats - 1) * (h + model.ffn / tp) + (model.ffn / tp + h)  # gate/up, down
    return model.layers * rank * per_layer


def adapter_bytes_per_gpu(model: ModelSpec, rank: int, tp: int = 1) -> float:
    """Bytes of one adapter slot on one GPU."""
    return adapter_params_per_gpu(model, rank, tp) * LORA_DTYPE_BYTES


class LoraCost:
    """The extra cost of LoRA in one iteration: ``cost(tokens, adapters)`` → (s, FLOPs, bytes)."""

    __slots__ = ("flops_tok", "bytes_adapter", "_inv_pc", "_inv_bw", "_launch")

    def __init__(self, cm: CostModel, rank: int) -> None:
        m = cm.model
        self.bytes_adapter = adapter_bytes_per_gpu(m, rank, cm.tp)
        self.flops_tok = 2.0 * adapter_params_per_gpu(m, rank, cm.tp)
        self._inv_pc = 1.0 / (cm.gpu.peak_flops("bf16") * cm.eff.gemm)
        self._inv_bw = 1.0 / (cm.gpu.hbm_sim_bytes_s * cm.eff.mem)
        groups = 4 if m.ffn else 2  # qkv, o, gate_up, down
        self._launch = 2 * m.layers * groups * cm.eff.op_latency_s

    def cost(self, tokens: int, adapters: int) -> tuple[float, float, float]:
        """``tokens`` LoRA tokens over ``adapters`` distinct adapters in one iteration."""
        if tokens <= 0:
            return 0.0, 0.0, 0.0
        fl, by = self.flops_tok * tokens, self.bytes_adapter * adapters
        tc, tm = fl * self._inv_pc, by * self._inv_bw
        return (tc if tc > tm else tm) + self._launch, fl, by


class AdapterSlots:
    """The adapters the running set uses (≤ ``max_loras``) and those resident in the GPU slots
    (LRU, ``max_loras`` of them). ``acquire``/``release`` per running request; ``acquire``
    returns the load time of an adapter that was not resident."""

    __slots__ = ("max_loras", "load_s", "running", "resident", "n_lora", "loads", "load_total_s", "version")

    def __init__(self, max_loras: int, load_s: float) -> None:
        self.max_loras = max_loras
        self.load_s = load_s                # s to copy one adapter host → GPU
        self.running: dict[int, int] = {}   # adapter -> running requests using it
        self.resident: OrderedDict[int, None] = OrderedDict()  # least recently used first
        self.n_lora = 0                     # running requests with an adapter
        self.loads = 0
        self.load_total_s = 0.0
        self.version = 0                    # bumps when the set of running adapters changes (``can_run`` may differ)

    def can_run(self, adapter: int) -> bool:
        """Whether a request of ``adapter`` (-1 = base model) may join the running set now."""
        return adapter < 0 or adapter in self.running or len(self.running) < self.max_loras

    def acquire(self, adapter: int) -> float:
        """A request of ``adapter`` joins the running set (``can_run`` must hold); returns the
        seconds spent loading the adapter (0 when resident)."""
        if adapter < 0:
            return 0.0
        self.n_lora += 1
        k = self.running.get(adapter)
        if k:
            self.running[adapter] = k + 1
            return 0.0
        if len(self.running) >= self.max_loras:
            raise AssertionError(f"adapter {adapter}: all {self.max_loras} LoRA slots are in use")
        self.running[adapter] = 1
        self.version += 1
        res = self.resident
        if adapter in res:
            res.move_to_end(adapter)
            return 0.0
        if len(res) >= self.max_loras:  # evict the least recently used idle slot
            del res[next(a for a in res if a not in self.running)]
        res[adapter] = None
        self.loads += 1
        self.load_total_s += self.load_s
        return self.load_s

    def release(self, adapter: int) -> None:
        """A request of ``adapter`` left the running set (finished or preempted)."""
        if adapter < 0:
            return
        self.n_lora -= 1
        k = self.running[adapter] - 1
        if k:
            self.running[adapter] = k
        else:
            del self.running[adapter]
            self.version += 1

    def check(self, running_adapters: list[int]) -> None:
        """Recount against the adapters of the running requests; raises AssertionError."""
        counts: dict[int, int] = {}
        for a in running_adapters:
            if a >= 0:
                counts[a] = counts.get(a, 0) + 1
        if counts != self.running or sum(counts.values()) != self.n_lora:
            raise AssertionError(f"LoRA slots count {self.running} ({self.n_lora}), running set has {counts}")
        if len(self.running) > self.max_loras or not set(self.running) <= set(self.resident):
            raise AssertionError(f"LoRA: {len(self.running)} active adapters > {self.max_loras} slots or not resident")
