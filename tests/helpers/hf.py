"""Small Hugging Face Llama checkpoints made by transformers itself, for conversion and loading tests."""

from __future__ import annotations

from pathlib import Path

import torch


def make_hf(
    path: Path,
    *,
    layers=4,
    heads=16,
    kv=2,
    hidden=64,
    inter=96,
    vocab=128,
    dtype=torch.bfloat16,
    tie=False,
    seed=0,
    shard="40KB",
):
    """A small Llama-3-shaped model saved by transformers (several safetensors shards + index)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        tie_word_embeddings=tie,
        max_position_embeddings=64,
        rope_theta=500000.0,
    )
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    model.save_pretrained(path, max_shard_size=shard)
    return model
