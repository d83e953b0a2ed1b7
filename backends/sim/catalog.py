"""Model and GPU catalogs, and the KV-cache memory budget of an instance.

Models come from ``data/models.yaml`` (published Hugging Face config.json shapes), from a user's
model YAML, or from a local Hugging Face ``config.json``; GPUs from ``data/gpus.yaml`` or a user's
GPU YAML. Parameter counts are DERIVED from the shapes. Units: sizes in elements, memory in
bytes, bandwidth in bytes/s, compute in FLOP/s, prices in USD per GPU-hour.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

import yaml

DATA_DIR = Path(__file__).parent / "data"
DTYPE_BYTES: dict[str, float] = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0}
GIB = float(1 << 30)
HBM_BANDWIDTHS = ("simulator", "datasheet", "achievable")
"""Which HBM bandwidth a roofline's memory term divides by (``GPUSpec.hbm_bandwidth``)."""
REF_HBM_GPU = "h100-sxm"
"""The GPU of the real vLLM runs the simulator's memory efficiencies were fitted on: its published
achievable fraction of peak is the reference of ``GPUSpec.hbm_sim_bytes_s``."""


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of ``dtype`` (bf16, fp16, fp8)."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype!r}: must be one of {sorted(DTYPE_BYTES)}") from None


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A decoder-only transformer's shapes (as in its config.json)."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    """Dense MLP intermediate size (0 for an all-MoE model)."""
    vocab: int
    head_dim: int = 0
    """0 = hidden / heads."""
    gated_mlp: bool = True
    """SwiGLU-style MLP (gate, up, down: 3 matrices); False = 2 matrices (GELU, BLOOM)."""
    qkv_bias: bool = False
    tie_embeddings: bool = False
    max_position: int = 4096
    position: str = "rope"
    """rope or alibi."""
    n_experts: int = 0
    """Routed experts per MoE layer (0 = dense)."""
    experts_per_token: int = 0
    moe_ffn: int = 0
    """Intermediate size of one routed expert."""
    n_shared_experts: int = 0
    shared_ffn: int = 0
    published_params_b: float = 0.0
    """The size the authors publish, billions (0 = unknown); only used to check the catalog."""
    quantize_attention: bool = True
    """Whether 8-bit checkpoints of this model quantize the attention projections (QKV, O).
    False where the published FP8 checkpoints keep them 16-bit and quantize the MLP/experts only
    (Llama 4: Meta's FP8 release and llm-compressor's FP8-dynamic recipe ignore ``self_attn``)."""

    def __post_init__(self) -> None:
        for k in ("layers", "hidden", "heads", "kv_heads", "vocab"):
            if getattr(self, k) < 1:
                raise ValueError(f"model {self.name}: {k}={getattr(self, k)} must be >= 1")
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.hidden // self.heads)
        if self.heads % self.kv_heads:
            raise ValueError(f"model {self.name}: heads={self.heads} not a multiple of kv_heads={self.kv_heads}")
        if self.n_experts and not (0 < self.experts_per_token <= self.n_experts and self.moe_ffn > 0):
            raise ValueError(f"model {self.name}: MoE needs 0 < experts_per_token <= n_experts and moe_ffn > 0")
        if not self.n_experts and self.ffn < 1:
            raise ValueError(f"model {self.name}: dense model needs ffn >= 1")

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def mlp_mats(self) -> int:
        """Weight matrices per MLP (3 for gated, 2 otherwise)."""
        return 3 if self.gated_mlp else 2

    @property
    def attn_params_per_layer(self) -> int:
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        bias = (q + 2 * kv) if self.qkv_bias else 0
        return self.hidden * (q + 2 * kv) + q * self.hidden + bias

    @property
    def dense_mlp_params_per_layer(self) -> int:
        """Dense MLP + shared experts, per layer (always active)."""
        return self.mlp_mats * self.hidden * self.ffn + 3 * self.hidden * self.shared_ffn * self.n_shared_experts

    @property
    def expert_params(self) -> int:
        """One routed expert's parameters."""
        return 3 * self.hidden * self.moe_ffn

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tie_embeddings else 2)

    @property
    def params(self) -> int:
        """Total parameters (all experts), derived from the shapes."""
        per_layer = (self.attn_params_per_layer + self.dense_mlp_params_per_layer
                     + self.n_experts * (self.expert_params + self.hidden) + 4 * self.hidden)
        return self.layers * per_layer + self.embedding_params + self.hidden

    @property
    def active_params(self) -> int:
        """Parameters used per token (routed experts: experts_per_token of them)."""
        return self.params - self.layers * (self.n_experts - self.experts_per_token) * self.expert_params

    def kv_bytes_per_token(self, kv_dtype: str = "bf16") -> float:
        """KV-cache bytes per token over all layers, whole model (not per GPU)."""
        return 2.0 * self.layers * self.kv_heads * self.head_dim * dtype_bytes(kv_dtype)


@dataclass(frozen=True, slots=True)
class GPUSpec:
    """One GPU. ``flops`` maps dtype to peak dense FLOP/s (None = no native support)."""

    name: str
    memory_bytes: float
    hbm_bytes_s: float
    flops_bf16: float
    flops_fp16: float
    flops_fp8: float | None
    nvlink_bytes_s: float
    """NVLink per direction per GPU, bytes/s (0 = none: TP over PCIe)."""
    pcie_bytes_s: float
    price_hour: float = 0.0
    spot_price_hour: float = 0.0
    hbm_achievable_bytes_s: float = 0.0
    """HBM bandwidth a published streaming READ benchmark reached on this GPU (BabelStream
    ``Dot``), bytes/s; 0 = none recorded. The simulator's memory terms use it relative to the
    H100's (``hbm_sim_bytes_s``)."""
    sm_count: int = 0
    """Streaming multiprocessors (the published figure); 0 = not recorded. GEMM tile-wave
    quantisation in the learned residual (``tuner.calibration.residual``) needs it."""

    def __post_init__(self) -> None:
        for k in ("memory_bytes", "hbm_bytes_s", "flops_bf16", "flops_fp16", "pcie_bytes_s"):
            if not getattr(self, k) > 0:
                raise ValueError(f"gpu {self.name}: {k} must be > 0")
        if self.sm_count < 0:
            raise ValueError(f"gpu {self.name}: sm_count must be >= 0")
        if not 0.0 <= self.hbm_achievable_bytes_s <= self.hbm_bytes_s:
            raise ValueError(f"gpu {self.name}: hbm_achievable_bytes_s must be in [0, hbm_bytes_s]")

    @property
    def hbm_sim_bytes_s(self) -> float:
        """The HBM bandwidth the simulator's memory terms divide by, bytes/s (its efficiencies
        ``mem`` / ``kv_mem`` multiply it): the datasheet peak scaled by how this GPU's published
        achievable fraction of peak compares with the H100's (``reference_hbm_fraction``), on which
        the efficiencies were fitted: an A100-80GB reads at 0.86 of its peak where an H100 reads at
        0.95, so the same efficiency gives it 0.90x the bandwidth. A GPU with no published figure
        is taken to reach the H100's fraction (its datasheet peak)."""
        if self.hbm_achievable_bytes_s:
            return self.hbm_achievable_bytes_s / reference_hbm_fraction()
        return self.hbm_bytes_s

    def hbm_bandwidth(self, kind: str = "simulator") -> float:
        """HBM bandwidth, bytes/s: ``simulator`` (``hbm_sim_bytes_s``), ``datasheet`` (peak) or
        ``achievable`` (the measured ``hbm_achievable_bytes_s``; the datasheet figure where none
        is recorded)."""
        if kind == "simulator":
            return self.hbm_sim_bytes_s
        if kind == "datasheet":
            return self.hbm_bytes_s
        if kind == "achievable":
            return self.hbm_achievable_bytes_s or self.hbm_bytes_s
        raise ValueError(f"hbm bandwidth {kind!r}: choose one of {', '.join(HBM_BANDWIDTHS)}")

    def peak_flops(self, dtype: str) -> float:
        """Peak dense FLOP/s of GEMMs whose weights are ``dtype`` (fp8 without FP8 tensor cores
        runs weight-only at the 16-bit rate)."""
        dtype_bytes(dtype)
        if dtype == "fp8":
            return self.flops_fp8 or self.flops_bf16
        return self.flops_fp16 if dtype == "fp16" else self.flops_bf16

    @property
    def interconnect_bytes_s(self) -> float:
        """Link used by tensor-parallel all-reduce, per direction, bytes/s."""
        return self.nvlink_bytes_s or self.pcie_bytes_s


# ---------------------------------------------------------------- loading
_MODEL_KEYS = {f.name for f in fields(ModelSpec)}


def _model_from_entry(name: str, e: dict[str, Any]) -> ModelSpec:
    unknown = set(e) - _MODEL_KEYS - {"aliases"}
    if unknown:
        raise ValueError(f"model {name}: unknown keys {sorted(unknown)}")
    return ModelSpec(name=name, **{k: v for k, v in e.items() if k != "aliases"})


def _gpu_from_entry(name: str, e: dict[str, Any]) -> GPUSpec:
    try:
        fl = e["flops"]
        return GPUSpec(
            name=name, memory_bytes=float(e["memory_mib"]) * (1 << 20), hbm_bytes_s=float(e["hbm_bytes_s"]),
            flops_bf16=float(fl["bf16"]), flops_fp16=float(fl.get("fp16") or fl["bf16"]),
            flops_fp8=float(fl["fp8"]) if fl.get("fp8") else None,
            nvlink_bytes_s=float(e.get("nvlink_bytes_s", 0.0)), pcie_bytes_s=float(e["pcie_bytes_s"]),
            price_hour=float(e.get("price_hour", 0.0)), spot_price_hour=float(e.get("spot_price_hour", 0.0)),
            hbm_achievable_bytes_s=float(e.get("hbm_achievable_bytes_s", 0.0)),
            sm_count=int(e.get("sm_count", 0)))
    except KeyError as k:
        raise ValueError(f"gpu {name}: missing key {k}") from None


@cache
def _catalog(kind: str) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    raw = yaml.safe_load((DATA_DIR / f"{kind}.yaml").read_text())[kind]
    aliases: dict[str, str] = {}
    for name, e in raw.items():
        for a in [name, *e.get("aliases", [])]:
            aliases[a.lower()] = name
    return raw, aliases


def _norm(name: str) -> str:
    return name.strip().lower()


def _lookup(kind: str, name: str) -> tuple[str, dict[str, Any]]:
    raw, aliases = _catalog(kind)
    key = _norm(name)
    if key not in aliases and "/" in key:  # "org/Name" not listed: try the bare name
        key = key.rsplit("/", 1)[1]
    if key not in aliases:
        close = difflib.get_close_matches(key, list(aliases), n=4, cutoff=0.5)
        hint = f"; close matches: {', '.join(close)}" if close else f"; known: {', '.join(raw)}"
        raise ValueError(f"unknown {kind[:-1]} {name!r}{hint} (or give a path to a YAML/config.json)")
    canon = aliases[key]
    return canon, raw[canon]


def list_models() -> list[ModelSpec]:
    return [_model_from_entry(n, e) for n, e in _catalog("models")[0].items()]


def list_gpus() -> list[GPUSpec]:
    return [_gpu_from_entry(n, e) for n, e in _catalog("gpus")[0].items()]


def _yaml_entry(path: Path, kind: str) -> tuple[str, dict[str, Any]]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping")
    if kind in data:  # a catalog-shaped file with one entry
        (name, entry), *_ = data[kind].items()
        return name, entry
    return str(data.pop("name", path.stem)), data


def context_len(model: ModelSpec, max_model_len: int = 0) -> int:
    """The context a deployment serves, tokens: ``max_model_len`` (0 = the model's own
    ``max_position``). ValueError when it exceeds the model's context: vLLM refuses to start
    ("User-specified max_model_len is greater than the derived max_model_len")."""
    if max_model_len > model.max_position:
        raise ValueError(f"max_model_len={max_model_len} exceeds {model.name}'s context of {model.max_position} "
                         "tokens (the engine refuses it)")
    return max_model_len or model.max_position


def get_model(name_or_path: str | Path) -> ModelSpec:
    """A model by catalog name/alias, or from a path to a YAML entry or a HF ``config.json``."""
    p = Path(name_or_path)
    if p.suffix in (".json", ".yaml", ".yml") or p.is_dir():
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise FileNotFoundError(f"model file {p} not found")
        if p.suffix == ".json":
            return model_from_hf_config(p)
        return _model_from_entry(*_yaml_entry(p, "models"))
    return _model_from_entry(*_lookup("models", str(name_or_path)))


@cache
def reference_hbm_fraction() -> float:
    """Achievable / datasheet HBM bandwidth of ``REF_HBM_GPU`` (catalog figures, BabelStream read)."""
    g = get_gpu(REF_HBM_GPU)
    return g.hbm_achievable_bytes_s / g.hbm_bytes_s


def get_gpu(name_or_path: str | Path) -> GPUSpec:
    """A GPU by catalog name/alias, or from a path to a GPU YAML (same keys as data/gpus.yaml)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise FileNotFoundError(f"gpu file {p} not found")
        return _gpu_from_entry(*_yaml_entry(p, "gpus"))
    return _gpu_from_entry(*_lookup("gpus", str(name_or_path)))


def model_from_hf_config(path: str | Path) -> ModelSpec:
    """A ModelSpec from a Hugging Face ``config.json`` (Llama/Mistral/Qwen2/Mixtral keys)."""
    path = Path(path)
    cfg = json.loads(path.read_text())
    cfg = cfg.get("text_config", cfg)  # multimodal wrappers (Llama 4)

    def need(*keys: str) -> Any:
        for k in keys:
            if k in cfg:
                return cfg[k]
        raise ValueError(f"{path}: missing key {keys[0]!r} in config.json")

    heads = int(need("num_attention_heads", "n_head"))
    hidden = int(need("hidden_size", "n_embd"))
    mtype = str(cfg.get("model_type", ""))
    if "kv_lora_rank" in cfg:
        raise ValueError(f"{path}: multi-head latent attention (DeepSeek, kv_lora_rank) is not supported")
    if int(cfg.get("interleave_moe_layer_step", 1) or 1) > 1 or int(cfg.get("first_k_dense_replace", 0) or 0) > 0:
        raise ValueError(f"{path}: models mixing dense and MoE layers are not supported (interleave_moe_layer_step / "
                         "first_k_dense_replace)")
    n_exp = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
    moe_ffn = shared_ffn = n_shared = 0
    if n_exp:
        moe_ffn = int(cfg.get("moe_intermediate_size") or need("intermediate_size"))
        if mtype.startswith("llama4"):
            n_shared, shared_ffn = 1, int(need("intermediate_size"))
        elif cfg.get("shared_expert_intermediate_size"):
            n_shared, shared_ffn = 1, int(cfg["shared_expert_intermediate_size"])
    return ModelSpec(
        name=str(cfg.get("_name_or_path") or path.parent.name or path.stem),
        layers=int(need("num_hidden_layers", "n_layer")), hidden=hidden, heads=heads,
        kv_heads=int(cfg.get("num_key_value_heads") or heads), head_dim=int(cfg.get("head_dim") or 0),
        ffn=0 if n_exp else int(need("intermediate_size")), vocab=int(need("vocab_size")),
        qkv_bias=bool(cfg.get("attention_bias", mtype == "qwen2")),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position=int(cfg.get("max_position_embeddings", 4096)),
        n_experts=n_exp, experts_per_token=int(need("num_experts_per_tok")) if n_exp else 0,
        moe_ffn=moe_ffn, n_shared_experts=n_shared, shared_ffn=shared_ffn,
        quantize_attention=not mtype.startswith("llama4"))


# ---------------------------------------------------------------- memory
def default_activation_reserve(model: ModelSpec, tp: int = 1, max_batched_tokens: int = 2048) -> float:
    """Bytes per GPU held back for activations, CUDA graphs and NCCL buffers (vLLM profiles the
    peak of a max_batched_tokens forward pass): 0.75 GiB + activations of one layer + logits."""
    act = max_batched_tokens * (4 * model.hidden + 2 * max(model.ffn, model.moe_ffn) * model.mlp_mats / tp) * 2.0
    logits = min(max_batched_tokens, 256) * model.vocab * 4.0 / tp
    return 0.75 * GIB + act + logits


def kv_budget(model: ModelSpec, gpu: GPUSpec, tp: int = 1, gpu_memory_utilization: float = 0.9,
              weight_dtype: str = "bf16", kv_dtype: str = "bf16", block_size: int = 16,
              activation_reserve: float | None = None, expert_shards: int = 1) -> int:
    """KV blocks per instance: (memory × util − weights/tp − activation reserve) / block bytes per GPU.

    ``activation_reserve`` in bytes per GPU (None = ``default_activation_reserve``);
    ``expert_shards``: data-parallel ranks sharing an MoE model's experts (``weight_bytes_per_gpu``). Raises
    ValueError("infeasible: ...") when the weights and reserve leave no room for one block.
    """
    from backends.sim.costmodel import weight_bytes_per_gpu  # one source for weight bytes

    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise ValueError(f"gpu_memory_utilization={gpu_memory_utilization}: must be in (0, 1]")
    if tp < 1 or block_size < 1:
        raise ValueError(f"tp={tp}, block_size={block_size}: must be >= 1")
    reserve = default_activation_reserve(model, tp) if activation_reserve is None else float(activation_reserve)
    usable = gpu.memory_bytes * gpu_memory_utilization
    w = weight_bytes_per_gpu(model, tp, weight_dtype, expert_shards)
    block = block_size * kv_bytes_per_token_per_gpu(model, tp, kv_dtype)
    free = usable - w - reserve
    blocks = math.floor(free / block) if free > 0 else 0
    if blocks < 1:
        raise ValueError(
            f"infeasible: {model.name} needs {w / GIB:.1f} GiB of weights per GPU at tp={tp} ({weight_dtype}) "
            f"+ {reserve / GIB:.1f} GiB activations, but {gpu.name} offers {usable / GIB:.1f} GiB usable "
            f"({gpu.memory_bytes / GIB:.1f} GiB × {gpu_memory_utilization}); use more GPUs (tp) or fp8")
    return blocks


def kv_bytes_per_token_per_gpu(model: ModelSpec, tp: int, kv_dtype: str = "bf16") -> float:
    """KV bytes per token on one GPU: KV heads are split over tp (replicated when tp > kv_heads)."""
    heads_per_gpu = max(model.kv_heads / tp, 1.0)
    return 2.0 * model.layers * heads_per_gpu * model.head_dim * dtype_bytes(kv_dtype)
