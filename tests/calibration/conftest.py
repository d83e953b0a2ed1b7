from __future__ import annotations

import json

import pytest


@pytest.fixture
def tiny_config(tmp_path):
    """A tiny Llama config.json (hidden 128, 2 layers, GQA 4/2 heads)."""
    d = tmp_path / "tiny-llama"
    d.mkdir()
    cfg = {"model_type": "llama", "_name_or_path": "tiny-llama", "hidden_size": 128, "intermediate_size": 256,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
           "max_position_embeddings": 2048}
    p = d / "config.json"
    p.write_text(json.dumps(cfg))
    return p
