"""Hugging Face <-> our Llama 3 parameter names: one declarative table, the inverse derived from it.

HF names are also NxD's names (its converter and training code use the LlamaForCausalLM keys), so the NxD
conversion builds on `FROM_HF` too. No Q/K permutation is needed: `model/llama3.py` applies RoPE in HF's
rotate-half layout, so HF q_proj/k_proj rows are used as they are. (Meta's original `consolidated.*.pth`
interleaves the rotary pairs and would need the permutation; we never read that format.)

Plain data and string functions, no torch import: the launcher and the converter can use it anywhere.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from model import names
from model.config import ModelConfig

# HF key -> our key; "{}" is the layer index; None: an HF key we drop (a config-derived buffer). Derived from
# the one names table (model/names.py), in HF's module order.
FROM_HF: dict[str, str | None] = names.table(names.HF, names.OURS)

TO_HF: dict[str, str] = {ours: hf for hf, ours in FROM_HF.items() if ours is not None}

_LAYER = re.compile(r"\.(\d+)\.")

V = TypeVar("V")


def _lookup(key: str, table: Mapping[str, str | None], side: str) -> str | None:
    m = _LAYER.search(key)
    pattern = key if m is None else key[: m.start()] + ".{}." + key[m.end() :]
    if pattern not in table:
        known = ", ".join(sorted(table))
        raise ValueError(
            f"Unknown {side} parameter name {key!r} (pattern {pattern!r}): it is not in the Llama 3 key "
            f"table of checkpoint/hf_adapter.py. Known patterns: {known}. The checkpoint is probably not a "
            "Llama 3 model (or has extra modules such as biases); convert it with matching code."
        )
    out = table[pattern]
    return out if out is None or m is None else out.format(m.group(1))


def from_hf_key(hf_key: str) -> str | None:
    """Our name for an HF key; None when the key is dropped (rotary inv_freq)."""
    return _lookup(hf_key, FROM_HF, "Hugging Face")


def to_hf_key(our_key: str) -> str:
    out = _lookup(our_key, TO_HF, "model")
    assert out is not None
    return out


def from_hf(state_dict: Mapping[str, V]) -> dict[str, V]:
    """HF state dict -> ours (values untouched; dropped keys left out)."""
    out: dict[str, V] = {}
    for k, v in state_dict.items():
        ours = from_hf_key(k)
        if ours is not None:
            out[ours] = v
    return out


def to_hf(state_dict: Mapping[str, V]) -> dict[str, V]:
    """Our state dict -> HF names (values untouched)."""
    return {to_hf_key(k): v for k, v in state_dict.items()}


def expected_hf_keys(num_layers: int, tie_word_embeddings: bool = False) -> list[str]:
    """Every HF weight name a Llama 3 checkpoint with this many layers holds (lm_head absent when tied,
    as `save_pretrained` writes it)."""
    keys: list[str] = []
    for hf, ours in FROM_HF.items():
        if ours is None or (tie_word_embeddings and hf == "lm_head.weight"):
            continue
        keys += [hf.format(i) for i in range(num_layers)] if "{}" in hf else [hf]
    return keys


# The table must be one-to-one on the weights it keeps, or the derived inverse would lose a key.
assert len(TO_HF) == sum(v is not None for v in FROM_HF.values())


# ModelConfig fields that are config.json fields of the same name and decide the weights or the numerics.
ARCH_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "rope_theta",
    "rms_norm_eps",
    "tie_word_embeddings",
)
ROPE_FIELDS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


# The transformers release whose config.json layout `to_hf_config` writes: the one constraints.txt pins (a test
# checks that transformers re-saves our config.json byte for byte).
HF_LAYOUT_VERSION = "5.23.0"


def rope_parameters(cfg: ModelConfig) -> dict[str, Any]:
    """config.json's `rope_parameters` (transformers 5.x; 4.x spelt it rope_theta + rope_scaling)."""
    rs = cfg.rope_scaling
    if rs.factor == 0:
        return {"rope_theta": cfg.rope_theta, "rope_type": "default"}
    return {"rope_theta": cfg.rope_theta, "rope_type": "llama3", **{f: getattr(rs, f) for f in ROPE_FIELDS}}


def to_hf_config(cfg: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    """config.json for `transformers.LlamaForCausalLM`, from our ModelConfig: the keys and values that
    `save_pretrained` of the same model writes in transformers HF_LAYOUT_VERSION (rope_parameters, dtype), plus
    transformers 4.x's `rope_theta` and `rope_scaling`, which 5.x reads without a word and drops on re-save: NxD's
    stack pins transformers 4.51, which ignores `rope_parameters` and would silently build RoPE with theta 10000.

    `dtype` is the dtype of the saved weights (torch's name without `torch.`)."""
    fields = {f: getattr(cfg, f) for f in ARCH_FIELDS if f != "rope_theta"}
    rope = rope_parameters(cfg)
    out = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **fields,
        "head_dim": cfg.hidden_size // cfg.num_attention_heads,
        "rope_parameters": rope,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": {k: v for k, v in rope.items() if k != "rope_theta"} if cfg.rope_scaling.factor else None,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": cfg.initializer_range,
        "pretraining_tp": 1,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": None,
        "dtype": dtype,
        "use_cache": True,
        "transformers_version": HF_LAYOUT_VERSION,
    }
    return dict(sorted(out.items()))


def _same(a: Any, b: Any) -> bool:
    numbers = (int, float)
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, numbers) and isinstance(b, numbers) and math.isclose(a, b, rel_tol=1e-9)
    return a == b


def config_mismatches(hf: Mapping[str, Any], cfg: ModelConfig) -> list[str]:
    """Every way an HF config.json disagrees with `cfg` (empty when the weights fit our model as configured).

    Reads both layouts: transformers 4.x (rope_theta + rope_scaling) and 5.x (rope_parameters)."""
    out: list[str] = []
    if hf.get("model_type", "llama") != "llama":
        out.append(f"model_type is {hf['model_type']!r}, expected 'llama'")
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = hf.get("rope_theta", rope.get("rope_theta"))
    expected = {f: getattr(cfg, f) for f in ARCH_FIELDS}
    actual = {**hf, "rope_theta": theta, "tie_word_embeddings": hf.get("tie_word_embeddings", False)}
    for f, want in expected.items():
        if not _same(actual.get(f), want):
            out.append(f"model.{f}={want!r} but config.json {f}={actual.get(f)!r}")
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim != cfg.hidden_size // cfg.num_attention_heads:
        out.append(f"config.json head_dim={head_dim} != hidden_size / num_attention_heads (unsupported)")
    for f, ok in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if hf.get(f, ok) != ok:
            out.append(f"config.json {f}={hf[f]!r}; only {ok!r} is supported")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        out.append(f"config.json rope type {rope_type!r} is unsupported (only default and llama3)")
    elif (rope_type == "llama3") != (cfg.rope_scaling.factor != 0):
        out.append(
            f"model.rope_scaling.factor={cfg.rope_scaling.factor} but config.json rope type is {rope_type!r} "
            "(factor 0 means no scaling; llama3 scaling needs factor > 0)"
        )
    elif rope_type == "llama3":
        for f in ROPE_FIELDS:
            want = getattr(cfg.rope_scaling, f)
            if not _same(rope.get(f), want):
                out.append(f"model.rope_scaling.{f}={want!r} but config.json rope {f}={rope.get(f)!r}")
    return out
