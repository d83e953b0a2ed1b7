"""A tiny Llama written locally (no model hub), for running a real vLLM on CPU.

hidden 64, 2 layers, 2 heads, 1 KV head, head_dim 32 (vLLM's CPU attention rejects 16),
intermediate 128, max_position 4096, bf16 safetensors, vocab 512 with a locally trained BPE
tokenizer (256 byte-fallback tokens, so any UTF-8 text tokenizes). Weights are random but
deterministic; the LM head equals the embedding, so greedy decoding tends to repeat the last
token — cheap to serve and predictable for n-gram speculation. It is a serving-systems
model, not a language model.

This file runs standalone (``python tiny_model.py OUT_DIR``) with numpy + tokenizers, which
the vLLM venv has; servetune calls it through that interpreter, see :func:`ensure_tiny_model`.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

NAME = "tiny-llama"
VERSION = 1
VOCAB = 512
SPECIALS = ["<unk>", "<s>", "</s>"]
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "vocab_size": VOCAB,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
}


def default_cache_dir() -> Path:
    """``$SERVETUNE_CACHE_DIR`` or ``~/.cache/servetune``."""
    return Path(os.environ.get("SERVETUNE_CACHE_DIR") or Path.home() / ".cache" / "servetune")


def model_dir(cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / f"{NAME}-v{VERSION}"


def ensure_tiny_model(cache_dir: str | Path | None = None, *, python: str | None = None) -> Path:
    """The tiny model's folder, written on first use (under a second) with ``python``
    (default: the vLLM interpreter, which has ``tokenizers``). Safe to call concurrently."""
    out = model_dir(cache_dir)
    if (out / "done").is_file():
        return out
    if python is None:
        from backends.live.vllm_python import find_vllm_python

        python = find_vllm_python()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    proc = subprocess.run([python, str(Path(__file__).resolve()), str(tmp)], capture_output=True, text=True,
                          timeout=300, check=False)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"writing the tiny model failed:\n{tail}")
    try:
        tmp.rename(out)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def prompt_token_range(model_path: str | Path) -> tuple[int, int]:
    """Token ids ``[lo, hi)`` safe to send as prompts (no special tokens) for a model folder."""
    cfg = json.loads((Path(model_path) / "config.json").read_text())
    vocab = int(cfg.get("vocab_size") or 0)
    tok = Path(model_path) / "tokenizer.json"
    if tok.is_file():
        vocab = min(vocab or 10**9, len(json.loads(tok.read_text())["model"]["vocab"]))
    if vocab <= 0:
        raise ValueError(f"{model_path}: config.json has no vocab_size")
    if vocab <= 4096:
        return len(SPECIALS), vocab
    return 1000, min(vocab, 30000)


# ---------------------------------------------------------------------------- writing
def _corpus() -> list[str]:
    rng = np.random.default_rng(1234)
    words = ["the", "request", "token", "batch", "cache", "prefill", "decode", "queue", "serve", "model",
             "block", "memory", "latency", "throughput", "policy", "engine", "schedule", "prefix", "GPU",
             "speculative", "draft", "accept", "tenant", "priority", "chunk", "budget", "time", "first"]
    return [" ".join(rng.choice(words, size=12)) + "." for _ in range(400)]


def _write_tokenizer(out: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse(), decoders.Metaspace(
        replacement="\u2581", prepend_scheme="first")])
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS + byte_tokens,
                                  show_progress=False, limit_alphabet=64)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": CONFIG["max_position_embeddings"],
        "add_bos_token": False, "add_eos_token": False}, indent=1))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=1))
    return tok.get_vocab_size()


def _bf16_bytes(a: np.ndarray) -> bytes:
    """float32 -> bfloat16 (round to nearest even) as little-endian bytes."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype("<u2").tobytes()


def _weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20240601)
    h, inter, n_layers = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["num_hidden_layers"]
    q = CONFIG["num_attention_heads"] * CONFIG["head_dim"]
    kv = CONFIG["num_key_value_heads"] * CONFIG["head_dim"]
    w: dict[str, np.ndarray] = {}
    emb = rng.normal(0, 1.0, (VOCAB, h)).astype(np.float32)
    w["model.embed_tokens.weight"] = emb
    for i in range(n_layers):
        pre = f"model.layers.{i}."
        for name, shape in (("self_attn.q_proj", (q, h)), ("self_attn.k_proj", (kv, h)),
                            ("self_attn.v_proj", (kv, h)), ("self_attn.o_proj", (h, q)),
                            ("mlp.gate_proj", (inter, h)), ("mlp.up_proj", (inter, h)),
                            ("mlp.down_proj", (h, inter))):
            w[pre + name + ".weight"] = rng.normal(0, 0.02, shape).astype(np.float32)
        w[pre + "input_layernorm.weight"] = np.ones(h, np.float32)
        w[pre + "post_attention_layernorm.weight"] = np.ones(h, np.float32)
    w["model.norm.weight"] = np.ones(h, np.float32)
    w["lm_head.weight"] = emb.copy()
    return w


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        data = _bf16_bytes(tensors[name])
        header[name] = {"dtype": "BF16", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)


def write_tiny_model(out: str | Path) -> Path:
    """Write config, tokenizer and weights into ``out`` (needs ``tokenizers``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_tok = _write_tokenizer(out)
    if n_tok > VOCAB:
        raise RuntimeError(f"tokenizer has {n_tok} tokens > vocab {VOCAB}")
    (out / "config.json").write_text(json.dumps(CONFIG, indent=1))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    _write_safetensors(out / "model.safetensors", _weights())
    (out / "done").write_text(f"{NAME} v{VERSION}\n")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tiny_model.py OUT_DIR")
    print(write_tiny_model(sys.argv[1]))
