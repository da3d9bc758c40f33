"""Test oracle: NxD's per-rank shapes derived independently of the converter (checkpoint/nxd_layout.py), from
the rules in ../shared/reference/nxd-llama-example.md. Lives with the tests: no product code calls it."""

from __future__ import annotations

from core.arithmetic import head_dim, heads_per_rank, stage_layer_ranges
from model.config import ModelConfig


def nxd_layer_shapes(m: ModelConfig, tp: int, kv_size_multiplier: int, fuse_qkv: bool) -> dict[str, tuple]:
    """Per-rank shapes of one decoder layer in NxD's layout (GQAQKVColumnParallelLinear, stride-2 gate_up)."""
    d, h, i = head_dim(m), m.hidden_size, m.intermediate_size
    q, kv = heads_per_rank(m, tp, kv_size_multiplier)
    attn: dict[str, tuple] = (
        {"self_attn.qkv_proj.weight_qkv": ((q + 2 * kv) * d, h)}
        if fuse_qkv
        else {
            "self_attn.qkv_proj.weight_q": (q * d, h),
            "self_attn.qkv_proj.weight_k": (kv * d, h),
            "self_attn.qkv_proj.weight_v": (kv * d, h),
        }
    )
    return {
        **attn,
        "self_attn.o_proj.weight": (h, q * d),
        "mlp.gate_up_proj.weight": (2 * i // tp, h),
        "mlp.down_proj.weight": (h, i // tp),
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
    }


def nxd_rank_shapes(
    m: ModelConfig, tp: int, pp: int, kv_size_multiplier: int, fuse_qkv: bool, pp_rank: int
) -> dict[str, tuple]:
    """Every key and shape in NxD's `dp_rank_00_tp_rank_XX_pp_rank_YY.pt` for one pipeline rank (same for all tp)."""
    h, v = m.hidden_size, m.vocab_size
    shapes: dict[str, tuple] = {}
    if pp_rank == 0:
        shapes["model.embed_tokens.weight"] = (v // tp, h)
    layer = nxd_layer_shapes(m, tp, kv_size_multiplier, fuse_qkv)
    for li in stage_layer_ranges(m.num_hidden_layers, pp)[pp_rank]:
        for k, s in layer.items():
            shapes[f"model.layers.{li}.{k}"] = s
    if pp_rank == pp - 1:
        shapes["model.norm.weight"] = (h,)
        shapes["lm_head.weight"] = (v // tp, h)
    return shapes
