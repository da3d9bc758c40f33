"""The model's rules, torch-free: what its architecture needs, and what the torch backend's parallelisation needs.

`model.llama3.build` and `model.parallelize_torch` raise them at run time and the launcher reports them at plan
time (launcher/validate.py), so the sentence a user reads is the same wherever a rule fires. Each problem is a
`(key, value, rule, fix)` tuple, the shape of `core.problems.Problem` (model/ imports only its own modules);
`name` maps a field to the caller's key (default: the config key, `model.hidden_size`), so the converter, which
reads config.json, can report the same rule in its own words.
"""

from __future__ import annotations

from collections.abc import Callable

from model.config import ModelConfig

Problem = tuple[str, object, str, str]
ACTIVATION_CHECKPOINTING = ("none", "selective", "full")
TP = "parallel.tensor_parallel_degree"


def model_key(field: str) -> str:
    return f"model.{field}"


def divisors(n: int, limit: int = 64) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def architecture_problems(
    hidden_size: int, num_attention_heads: int, num_key_value_heads: int, name: Callable[[str], str] = model_key
) -> list[Problem]:
    """Whole heads: hidden = heads x head_dim, and every key/value head serves the same number of query heads."""
    heads, kv = num_attention_heads, num_key_value_heads
    out: list[Problem] = []
    if heads >= 1 and hidden_size % heads:
        out.append(
            (
                name("hidden_size"),
                hidden_size,
                f"must be divisible by {name('num_attention_heads')} ({heads}) to give the head dim.",
                f"use a multiple of {heads}, e.g. {heads * 64}.",
            )
        )
    if heads >= 1 and (kv <= 0 or heads % kv):
        out.append(
            (
                name("num_key_value_heads"),
                kv,
                f"must divide {name('num_attention_heads')} ({heads}) (grouped-query attention).",
                f"pick one of {divisors(heads)}.",
            )
        )
    return out


def torch_tp_problems(cfg: ModelConfig, tp: int) -> list[Problem]:
    """Tensor parallelism on the torch backend: whole heads and equal slices per rank, K/V never replicated."""
    if tp <= 1:
        return []
    sizes = {
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "intermediate_size": cfg.intermediate_size,
        "vocab_size": cfg.vocab_size,
    }
    out: list[Problem] = []
    bad = [f"model.{f} ({v})" for f, v in sizes.items() if v % tp]
    if bad:
        fits = [d for d in divisors(cfg.num_key_value_heads) if all(v % d == 0 for v in sizes.values())]
        out.append(
            (
                TP,
                tp,
                f"must divide {', '.join(bad)} on the torch backend, which shards whole heads and equal slices "
                "and shards K/V heads without replication.",
                f"pick one of {fits}, or run on trn1 (NxD replicates K/V).",
            )
        )
    if cfg.tie_word_embeddings:
        out.append(
            (
                "model.tie_word_embeddings",
                True,
                "cannot be tensor-parallel on the torch backend: the embedding (vocabulary rows) and the output "
                "head (vocabulary columns) would need the same shard.",
                f"use {TP}=1 for tied models (the Llama 3.2 1B/3B sizes).",
            )
        )
    return out


def torch_pipeline_problems(pp: int) -> list[Problem]:
    if pp <= 1:
        return []
    return [
        (
            "parallel.pipeline_parallel_degree",
            pp,
            "pipeline parallelism is not available on the torch backend yet (only on NxD, trn1).",
            "set parallel.pipeline_parallel_degree=1, or cluster.accelerator=trn1.",
        )
    ]


def activation_checkpointing_problems(mode: str) -> list[Problem]:
    if mode in ACTIVATION_CHECKPOINTING:
        return []
    return [
        (
            "parallel.activation_checkpointing",
            mode,
            f"must be one of {', '.join(ACTIVATION_CHECKPOINTING)}.",
            "set parallel.activation_checkpointing=selective.",
        )
    ]


def sequence_parallel_problems(seq_len: int, tp: int) -> list[Problem]:
    """NxD's sequence parallelism splits each sequence into tp equal slices between layers."""
    if tp <= 1 or seq_len % tp == 0:
        return []
    fits = seq_len - seq_len % tp
    return [
        (
            "data.seq_len",
            seq_len,
            f"must be divisible by {TP} ({tp}) under parallel.sequence_parallel=true: each of the {tp} tensor-"
            "parallel ranks holds an equal slice of the sequence between layers.",
            f"set data.seq_len={fits} (or another multiple of {tp}), or parallel.sequence_parallel=false.",
        )
    ]


def raise_if(problems: list[Problem]) -> None:
    """The run-time form: one ValueError whose text is `core.problems.describe` of each problem."""
    if problems:
        raise ValueError(" ".join(f"{key}={value}: {rule} Fix: {fix}" for key, value, rule, fix in problems))
