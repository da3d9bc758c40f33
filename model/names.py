"""Parameter names of a Llama 3 on its three sides: ours (model/llama3.py), Hugging Face (`LlamaForCausalLM`) and
NxD (the names its Llama example, its checkpoint converter and `nxd.save_checkpoint` use). Standard library only.

One row per parameter; "{}" is the layer index; None: the side has no such parameter. NxD's fused parameters
(`qkv_proj.weight_qkv`, `gate_up_proj.weight`) have no single HF tensor: they are built from several (the layout
is checkpoint/nxd_layout.py's). Ours for them are the seams of model/llama3.py (`attention.qkv`,
`feed_forward.gate_up`) where the nxd backend puts NxD's layers (model/parallelize_nxd.py). Every other table
derives from this one: checkpoint/hf_adapter.py's HF <-> ours mapping, checkpoint/nxd_layout.py's NxD key names,
and the nxd backend's key translation for `nxd.save_checkpoint` / `load_checkpoint`.
"""

from __future__ import annotations

import re

L = "model.layers.{}."
# (ours, HF, NxD)
PARAMS: tuple[tuple[str | None, str | None, str | None], ...] = (
    ("tok_embeddings.weight", "model.embed_tokens.weight", "model.embed_tokens.weight"),
    ("layers.{}.attention.wq.weight", L + "self_attn.q_proj.weight", L + "self_attn.q_proj.weight"),
    ("layers.{}.attention.wk.weight", L + "self_attn.k_proj.weight", L + "self_attn.k_proj.weight"),
    ("layers.{}.attention.wv.weight", L + "self_attn.v_proj.weight", L + "self_attn.v_proj.weight"),
    # GQAQKVColumnParallelLinear at the attention's qkv seam: fused, or its three separate weights.
    ("layers.{}.attention.qkv.weight_qkv", None, L + "self_attn.qkv_proj.weight_qkv"),
    ("layers.{}.attention.qkv.weight_q", None, L + "self_attn.qkv_proj.weight_q"),
    ("layers.{}.attention.qkv.weight_k", None, L + "self_attn.qkv_proj.weight_k"),
    ("layers.{}.attention.qkv.weight_v", None, L + "self_attn.qkv_proj.weight_v"),
    ("layers.{}.attention.wo.weight", L + "self_attn.o_proj.weight", L + "self_attn.o_proj.weight"),
    (None, L + "self_attn.rotary_emb.inv_freq", None),
    ("layers.{}.feed_forward.w1.weight", L + "mlp.gate_proj.weight", None),
    ("layers.{}.feed_forward.w3.weight", L + "mlp.up_proj.weight", None),
    # The stride-2 ColumnParallelLinear at the MLP's gate_up seam: per rank [gate_r; up_r].
    ("layers.{}.feed_forward.gate_up.weight", None, L + "mlp.gate_up_proj.weight"),
    ("layers.{}.feed_forward.w2.weight", L + "mlp.down_proj.weight", L + "mlp.down_proj.weight"),
    ("layers.{}.attention_norm.weight", L + "input_layernorm.weight", L + "input_layernorm.weight"),
    ("layers.{}.ffn_norm.weight", L + "post_attention_layernorm.weight", L + "post_attention_layernorm.weight"),
    (None, "model.rotary_emb.inv_freq", None),
    ("norm.weight", "model.norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight", "lm_head.weight"),
)

OURS, HF, NXD = 0, 1, 2
_LAYER = re.compile(r"\.(\d+)\.")


def table(src: int, dst: int) -> dict[str, str | None]:
    """Pattern map from one side to another, over the rows the source side has (None: no counterpart)."""
    return {key: row[dst] for row in PARAMS if (key := row[src]) is not None}


def nxd_leaf(ours_pattern: str) -> str:
    """The NxD name of a layer parameter without its "model.layers.{}." prefix (what nxd_layout composes)."""
    name = table(OURS, NXD)[ours_pattern]
    assert name is not None and name.startswith(L), ours_pattern
    return name[len(L) :]


def module_of(param: str) -> str:
    return param.rsplit(".", 1)[0]


def translate(key: str, src: int, dst: int) -> str:
    """One concrete key from side `src` to side `dst`; ValueError names the key when the table lacks it."""
    m = _LAYER.search(key)
    pattern = key if m is None else key[: m.start()] + ".{}." + key[m.end() :]
    out = table(src, dst).get(pattern)
    if out is None:
        sides = ("ours", "Hugging Face", "NxD")
        raise ValueError(
            f"The {sides[src]} parameter name {key!r} has no {sides[dst]} counterpart in model/names.py "
            "(the one Llama 3 names table); the checkpoint or model is not this project's Llama 3 layout."
        )
    return out if m is None else out.format(m.group(1))
