"""The NxD parallelisation plan (model/nxd_plan.py, no torch or NxD needed) against the reference's per-rank shape
table (../shared/reference/nxd-llama-example.md, "Per-rank parameter shapes, TP32 / kvm 4 (fused qkv)") and the
per-core parameter counts of issue 12."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from model.nxd_plan import LLAMA3_8B, LLAMA3_70B, Llama3Arch, plan

L0 = "model.layers.0"


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        (
            LLAMA3_70B,
            {
                "qkv_proj.weight_qkv": (512, 8192),
                "o_proj.weight": (8192, 256),
                "gate_up_proj.weight": (1792, 8192),
                "down_proj.weight": (8192, 896),
                "embed": (4008, 8192),
            },
        ),
        (
            LLAMA3_8B,
            {
                "qkv_proj.weight_qkv": (384, 4096),
                "o_proj.weight": (4096, 128),
                "gate_up_proj.weight": (896, 4096),
                "down_proj.weight": (4096, 448),
                "embed": (4008, 4096),
            },
        ),
    ],
    ids=["70B", "8B"],
)
def test_rank_shapes_tp32_kvm4_fused(arch, expected):
    shapes = plan(arch, tp=32, pp=8 if arch is LLAMA3_70B else 1, kv_size_multiplier=4).rank_shapes()
    assert shapes[f"{L0}.self_attn.qkv_proj.weight_qkv"] == expected["qkv_proj.weight_qkv"]
    assert shapes[f"{L0}.self_attn.o_proj.weight"] == expected["o_proj.weight"]
    assert shapes[f"{L0}.mlp.gate_up_proj.weight"] == expected["gate_up_proj.weight"]
    assert shapes[f"{L0}.mlp.down_proj.weight"] == expected["down_proj.weight"]
    assert shapes["model.embed_tokens.weight"] == expected["embed"]
    assert shapes["lm_head.weight"] == expected["embed"]
    assert shapes["model.norm.weight"] == (arch.hidden_size,)
    n = arch.num_hidden_layers
    assert len(shapes) == 3 + 6 * n  # embed, norm, lm_head; per layer 2 norms, qkv, o, gate_up, down


def test_layer_classes_and_arguments_70b():
    p = plan(LLAMA3_70B, tp=32, pp=8, kv_size_multiplier=4, sequence_parallel=True)
    qkv = p.module(f"{L0}.self_attn.qkv_proj")
    assert qkv.layer == "GQAQKVColumnParallelLinear"
    assert qkv.class_path == "neuronx_distributed.modules.qkv_linear.GQAQKVColumnParallelLinear"
    assert qkv.kwargs == {
        "input_size": 8192,
        "output_sizes": [8192, 1024],
        "bias": False,
        "gather_output": False,
        "sequence_parallel_enabled": True,
        "kv_size_multiplier": 4,
        "fuse_qkv": True,
    }
    (w,) = qkv.params
    assert (w.full_shape, w.partition_dim, w.kv_replicated) == ((16384, 8192), 0, 4)
    gate_up = p.module(f"{L0}.mlp.gate_up_proj")
    assert gate_up.layer == "ColumnParallelLinear"
    assert gate_up.kwargs == {
        "input_size": 8192,
        "output_size": 57344,
        "bias": False,
        "gather_output": False,
        "stride": 2,
        "sequence_parallel_enabled": True,
    }
    down = p.module(f"{L0}.mlp.down_proj")
    assert (down.layer, down.kwargs["input_is_parallel"], down.params[0].partition_dim) == (
        "RowParallelLinear",
        True,
        1,
    )
    o = p.module(f"{L0}.self_attn.o_proj")
    assert (o.layer, o.kwargs["input_size"], o.kwargs["output_size"]) == ("RowParallelLinear", 8192, 8192)
    emb = p.module("model.embed_tokens")
    assert (emb.layer, emb.kwargs["num_embeddings"], emb.pp_stage) == ("ParallelEmbedding", 128256, 0)
    head = p.module("lm_head")
    assert (head.layer, head.kwargs["gather_output"], head.pp_stage) == ("ColumnParallelLinear", False, 7)
    assert p.module("model.layers.0.input_layernorm").params[0].partition_dim is None


def test_pp_stages_follow_nxd_create_partitions():
    p = plan(LLAMA3_70B, tp=32, pp=8, kv_size_multiplier=4)
    assert [s[0] for s in p.stage_layers()] == [0, 10, 20, 30, 40, 50, 60, 70]
    assert p.module("model.layers.9.mlp.down_proj").pp_stage == 0
    assert p.module("model.layers.10.mlp.down_proj").pp_stage == 1
    # Uneven: the remainder goes to the last stages (NxD pipeline/partition.py create_partitions).
    tiny = Llama3Arch(64, 4, 2, 128, 256, 5)
    assert [len(s) for s in plan(tiny, tp=2, pp=2, kv_size_multiplier=1).stage_layers()] == [2, 3]


def test_params_per_core_match_issue_figures():
    p70 = plan(LLAMA3_70B, tp=32, pp=8, kv_size_multiplier=4)
    assert p70.max_params_per_rank() == 316_121_088  # the last stage: 10 layers + final norm + lm_head
    assert p70.params_per_rank(0) == 316_112_896  # 10 layers + embedding
    assert plan(LLAMA3_8B, tp=32, kv_size_multiplier=4).max_params_per_rank() == 276_369_408


def test_variants_unfused_mha_and_separate():
    unfused = plan(LLAMA3_8B, tp=32, kv_size_multiplier=4, fuse_qkv=False).rank_shapes()
    assert unfused[f"{L0}.self_attn.qkv_proj.weight_q"] == (128, 4096)
    assert unfused[f"{L0}.self_attn.qkv_proj.weight_k"] == (128, 4096)
    mha = Llama3Arch(64, 4, 4, 128, 256, 2)
    fused_mha = plan(mha, tp=2, qkv_linear=False, kv_size_multiplier=1).module(f"{L0}.self_attn.qkv_proj")
    assert (fused_mha.layer, fused_mha.kwargs["stride"], fused_mha.params[0].rank_shape) == (
        "ColumnParallelLinear",
        3,
        (96, 64),
    )
    sep = plan(LLAMA3_8B, tp=8, qkv_linear=False, fuse_qkv=False).rank_shapes()
    assert sep[f"{L0}.self_attn.k_proj.weight"] == (128, 4096)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tp": 32, "kv_size_multiplier": 1}, "KV heads per rank"),
        ({"tp": 32, "kv_size_multiplier": 3}, "divisible by kv_size_multiplier"),
        ({"tp": 32, "qkv_linear": False, "fuse_qkv": False}, "without qkv_linear"),
        ({"tp": 64, "kv_size_multiplier": 8}, "num_attention_heads"),
    ],
)
def test_impossible_layouts_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan(LLAMA3_8B, **kwargs)


def test_module_imports_only_stdlib():
    tree = ast.parse((Path(__file__).resolve().parent.parent / "model" / "nxd_plan.py").read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    assert roots <= {"__future__", "dataclasses"}
