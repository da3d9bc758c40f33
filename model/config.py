"""The model's configuration: the architecture (Hugging Face config.json names), where its weights start, and
how it is split over processes. Standard library only: the launcher, the converter and the plan import it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Init(str, Enum):
    scratch = "scratch"
    pretrained = "pretrained"


class DataParallelMode(str, Enum):
    ddp = "ddp"
    fsdp = "fsdp"


@dataclass(kw_only=True)
class RopeScaling:
    """Llama 3.1 `rope_scaling` (rope_type llama3)."""

    # Context extension factor; 0 = no scaling (Llama 3.0).
    factor: float = 0.0
    # Wavelengths longer than original_max_position_embeddings / low_freq_factor are divided by factor.
    low_freq_factor: float = 1.0
    # Wavelengths shorter than original_max_position_embeddings / high_freq_factor are kept.
    high_freq_factor: float = 4.0
    # Tokens: the context the base model was trained with.
    original_max_position_embeddings: int = 8192


@dataclass(kw_only=True)
class ModelConfig:
    """Architecture numbers use the Hugging Face config.json names, so files can be checked against it.

    The defaults are the tiny model; every YAML must set every architecture field (a test enforces it),
    otherwise a missing field would silently inherit the tiny value.
    """

    # The option name (conf/model/<name>.yaml); names the default run folder.
    name: str = "tiny"
    # Tokens in the embedding table (and the output head).
    vocab_size: int = 2048
    # Width of the residual stream.
    hidden_size: int = 192
    # Width of the SwiGLU MLP.
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    # Query heads; head_dim = hidden_size / num_attention_heads.
    num_attention_heads: int = 6
    # Key/value heads (grouped-query attention); divides num_attention_heads.
    num_key_value_heads: int = 2
    # Tokens: the longest sequence the rotary table is built for.
    max_position_embeddings: int = 1024
    # RoPE base.
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    rms_norm_eps: float = 1e-5
    # Output head shares the embedding's weight.
    tie_word_embeddings: bool = False
    # Standard deviation of the random initialisation.
    initializer_range: float = 0.02
    bos_token_id: int = 0
    eos_token_id: int = 1
    # Where training starts: random init, or the weights at pretrained_path.
    init: Init = Init.scratch
    # model.init=pretrained: a hub id (org/name) or a local HF folder (config.json + safetensors).
    pretrained_path: str = ""


@dataclass(kw_only=True)
class ParallelConfig:
    # The option name (conf/parallel/<name>.yaml); names the default run folder.
    name: str = "none"
    tensor_parallel_degree: int = 1
    pipeline_parallel_degree: int = 1
    # -1 = derived as world_size / (tp * pp). Set it only for CPU runs, where it sets the process count.
    data_parallel_degree: int = -1
    # NxD GQAQKVColumnParallelLinear: K/V heads are replicated this many times so kv_heads * multiplier == tp.
    kv_size_multiplier: int = 1
    # NxD layout: one GQAQKVColumnParallelLinear for q, k, v (the converter and the NxD launch both read it).
    qkv_linear: bool = False
    # NxD layout: q, k, v in one `weight_qkv` tensor (with qkv_linear).
    fuse_qkv: bool = True
    # NxD ZeRO-1: fp32 master weights and optimizer state sharded over data-parallel ranks.
    zero1: bool = False
    # NxD sequence parallelism in norms and dropout (wired by the NxD backend).
    sequence_parallel: bool = False
    # torch backend: DDP, or FSDP2 fully_shard over the data-parallel mesh axis.
    data_parallel_mode: DataParallelMode = DataParallelMode.ddp
    # none | selective | full.
    activation_checkpointing: str = "none"
