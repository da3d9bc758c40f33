"""NxD's parallel layers in the Llama 3 model: the plan (model/nxd_plan.py) says which NxD class with which
arguments goes where; this module builds them and puts them at the model's seams (model/llama3.py).

- `tok_embeddings` -> ParallelEmbedding (vocab-parallel), `output` -> ColumnParallelLinear (gather_output off:
  vocab-parallel logits for NxD's `parallel_cross_entropy`);
- `attention.qkv` (the seam) -> GQAQKVColumnParallelLinear (kv_size_multiplier, fuse_qkv), or ColumnParallelLinear
  at wq/wk/wv without qkv_linear; `attention.wo` -> RowParallelLinear;
- `feed_forward.gate_up` (the seam) -> the stride-2 ColumnParallelLinear, `feed_forward.w2` -> RowParallelLinear;
- norms stay the model's RMSNorm (replicated; under sequence parallelism each rank normalises its slice of the
  sequence, see NxDLlama3).

Parameter names are ours (model/names.py maps them to NxD's for checkpoints). Needs neuronx-distributed with its
model-parallel state initialised; imported only by the nxd backend.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model import names
from model.config import ModelConfig
from model.llama3 import IGNORE, Attention, Llama3, RMSNorm, TransformerBlock, rope_inv_freq
from model.nxd_plan import Llama3Arch, NxDPlan
from model.nxd_plan import plan as make_plan


def arch_of(cfg: ModelConfig) -> Llama3Arch:
    return Llama3Arch(
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        intermediate_size=cfg.intermediate_size,
        vocab_size=cfg.vocab_size,
        num_hidden_layers=cfg.num_hidden_layers,
        rms_norm_eps=cfg.rms_norm_eps,
    )


class VocabParallelLoss(nn.Module):
    """Mean next-token cross entropy over the predicted tokens from vocab-parallel logits (NxD's
    `parallel_cross_entropy`), as model.llama3.loss_fn computes it unsharded. A module so that NxDPPModel's tracer
    keeps it whole (a leaf): its collectives cannot be traced."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from neuronx_distributed.parallel_layers.loss_functions import parallel_cross_entropy

        per_token = parallel_cross_entropy(logits, labels)
        valid = (labels != IGNORE).to(per_token.dtype)
        return (per_token * valid).sum() / valid.sum()


class Rotary(nn.Module):
    """(cos, sin) of RoPE for h's sequence, from its own (non-persistent) inverse-frequency buffer: a leaf for
    NxDPPModel's tracer, whose stage cuts cannot carry a root buffer to later stages (they get cos/sin as inputs).

    Under sequence parallelism h is this rank's [S/tp, B, D] slice; attention sees the whole sequence (its
    projections gather it), so the rotation covers S = tp x h's first dimension."""

    def __init__(self, cfg: ModelConfig, sequence_parallel_size: int = 0):
        super().__init__()
        self.inv_freq: torch.Tensor
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        self.sequence_parallel_size = sequence_parallel_size  # 0: batch-first h, no sequence parallelism

    def forward(self, h_BSD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sp = self.sequence_parallel_size
        seq = h_BSD.shape[0] * sp if sp else h_BSD.shape[1]
        pos = torch.arange(seq, device=h_BSD.device, dtype=torch.float32)
        freqs_SE2 = pos[:, None] * self.inv_freq.to(device=h_BSD.device, dtype=torch.float32)[None, :]
        emb_SE = torch.cat((freqs_SE2, freqs_SE2), dim=-1)
        return emb_SE.cos(), emb_SE.sin()


class NxDLlama3(Llama3):
    """Llama 3 whose forward returns the loss (what NxD's trainer and NxDPPModel call).

    Under sequence parallelism (NxD's Megatron-style SP, as its Llama example) the hidden states between layers
    are sequence-first [S/tp, B, D]: the embedding reduce-scatters into that layout, every column-parallel layer
    all-gathers the sequence, every row-parallel layer reduce-scatters it, and norms work on the slice (their
    weight gradients all-reduced over TP by NxD's optimizer, from the `sequence_parallel_enabled` mark). The
    lm_head gives sequence-first logits [S, B, V/tp]; the labels are transposed to match them (the mean over
    tokens does not depend on their order), where NxD's example copies the logits, the largest activation, back
    to batch-first (whose gradient, a transposed view, NxD's linear backward cannot `view` on eager CPU tensors)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.loss = VocabParallelLoss()
        self.rotary = Rotary(cfg)
        self.sequence_first = False

    def rope_for(self, h_BSD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rotary(h_BSD)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        logits = super().forward(input_ids)
        return self.loss(logits, labels.transpose(0, 1).contiguous() if self.sequence_first else labels)


def shifted_labels(input_ids: torch.Tensor) -> torch.Tensor:
    """input_ids[t + 1] at position t, IGNORE at the last one (model.llama3.loss_fn's labels)."""
    return F.pad(input_ids[:, 1:], (0, 1), value=IGNORE)


def _ours(nxd_module: str) -> str:
    """Our module path of an NxD module of the plan (via the names table's parameter rows)."""
    for row in names.PARAMS:
        ours, nxd = row[names.OURS], row[names.NXD]
        if ours is None or nxd is None:
            continue
        pattern = names.module_of(nxd)
        m = names._LAYER.search(nxd_module)
        key = nxd_module if m is None else nxd_module[: m.start()] + ".{}." + nxd_module[m.end() :]
        if key == pattern:
            out = names.module_of(ours)
            return out if m is None else out.format(m.group(1))
    raise KeyError(nxd_module)


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, leaf = path.rsplit(".", 1) if "." in path else ("", path)
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, module)


def mark_weight_qkv(module: nn.Module) -> None:
    """Give every fused `weight_qkv` NxD's tensor-parallel attributes back.

    GQAQKVColumnParallelLinear(fuse_qkv=True) sets them on its split weights, then re-creates `weight_qkv` by
    concatenation without them (in __init__ and again in initialize_weight_biases, the meta-init hook), so NxD's
    gradient-norm code counts the fused shards as replicated: it averages instead of summing their squares over TP
    (tiny model: TP 2 grad norm 1.0741 vs TP 1 1.0858). Call after every (re)initialisation."""
    from neuronx_distributed.parallel_layers.parallel_state import get_tensor_model_parallel_size
    from neuronx_distributed.parallel_layers.utils import set_tensor_model_parallel_attributes

    for sub in module.modules():
        w = getattr(sub, "weight_qkv", None)
        if isinstance(w, nn.Parameter) and not getattr(w, "tensor_model_parallel", False):
            for attr in ("tensor_model_parallel", "partition_dim", "partition_stride", "num_partitions"):
                if hasattr(w, attr):
                    delattr(w, attr)
            set_tensor_model_parallel_attributes(w, True, 0, 1, num_partitions=get_tensor_model_parallel_size())


def _layer(mp: Any, dtype: torch.dtype, device: torch.device | None) -> nn.Module:
    from neuronx_distributed.modules.qkv_linear import GQAQKVColumnParallelLinear
    from neuronx_distributed.parallel_layers import layers

    cls = {
        "ParallelEmbedding": layers.ParallelEmbedding,
        "ColumnParallelLinear": layers.ColumnParallelLinear,
        "RowParallelLinear": layers.RowParallelLinear,
        "GQAQKVColumnParallelLinear": GQAQKVColumnParallelLinear,
    }[mp.layer]
    return cls(**mp.kwargs, dtype=dtype, device=device)


def build(
    cfg: ModelConfig, nxd_plan: NxDPlan, dtype: torch.dtype = torch.float32, device: torch.device | None = None
) -> NxDLlama3:
    """The model with NxD's layers from `nxd_plan` (built for pp 1: NxDPPModel cuts the whole model itself).

    The base model is built on the meta device (no full-size weights in host memory, which 70B could not afford
    per process); the NxD layers allocate this rank's shards only (on `device`; "meta" for NxD's meta-device
    init), norms start at 1 and the RoPE buffer is computed. NxD's own initialisation (normal, per shard) fills
    the NxD weights; the backend then overwrites them with its seeded full draw (small models) or pretrained
    shards."""
    with torch.device("meta"):
        model = NxDLlama3(cfg)
    for mp in nxd_plan.modules:
        if mp.layer == "RMSNorm":
            continue
        _set(model, _ours(mp.name), _layer(mp, dtype, device))
    for block in model.layers.values():
        assert isinstance(block, TransformerBlock)
        if block.attention.qkv is not None:
            del block.attention.wq, block.attention.wk, block.attention.wv
        if block.feed_forward.gate_up is not None:
            del block.feed_forward.w1, block.feed_forward.w3
    real = device if device is not None else torch.device("cpu")
    sp = nxd_plan.sequence_parallel
    for mod in model.modules():
        if isinstance(mod, RMSNorm):
            mod.weight = nn.Parameter(torch.ones(mod.weight.shape, dtype=dtype, device=real))
            # NxD's optimizer all-reduces the gradients of parameters so marked over TP (each rank saw a slice).
            mod.weight.sequence_parallel_enabled = sp  # type: ignore[attr-defined]
        if isinstance(mod, Attention):
            mod.sequence_first = sp
    model.sequence_first = sp
    model.register_buffer("rope_inv_freq", rope_inv_freq(cfg).to(real), persistent=False)
    model.rotary = Rotary(cfg, nxd_plan.tp if sp else 0).to(real)
    if cfg.tie_word_embeddings:
        raise ValueError(
            "model.tie_word_embeddings=true is not supported by the nxd backend (NxD's example unties them: its "
            "vocab-parallel embedding and lm_head are separate layers). Use trainer.backend=torch."
        )
    mark_weight_qkv(model)
    return model


def plan_for(cfg: ModelConfig, tp: int, kv_size_multiplier: int, qkv_linear: bool, fuse_qkv: bool, sp: bool):
    return make_plan(arch_of(cfg), tp, 1, kv_size_multiplier, fuse_qkv, qkv_linear, sp)


def to_nxd_names(state: dict[str, Any]) -> dict[str, Any]:
    """Our keys -> NxD's (what `nxd.save_checkpoint` writes and the converter's shards hold)."""
    return {names.translate(k, names.OURS, names.NXD): v for k, v in state.items()}


def from_nxd_names(state: dict[str, Any]) -> dict[str, Any]:
    return {names.translate(k, names.NXD, names.OURS): v for k, v in state.items()}
