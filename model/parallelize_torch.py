"""How the `torch` backend parallelises `model.llama3.Llama3`: standard torch.distributed APIs only.

Order (each step sees the result of the previous one, as in torchtitan):
1. Tensor parallel on the "tp" mesh axis with DTensor `parallelize_module`: wq/wk/wv/w1/w3 column-wise,
   wo/w2 row-wise (one all-reduce after attention and one after the MLP), the embedding sharded by vocabulary
   rows and the output head by vocabulary columns with its logits gathered (replicated) for the loss. Each rank
   holds 1/tp of every one of these weights; norms stay replicated. Attention needs no edit: it reads its local
   head count from the sharded projection's output (`view(b, s, -1, head_dim)`).
2. Activation checkpointing per block (`parallel.activation_checkpointing`): "full" recomputes the whole block
   in backward; "selective" keeps matmul and attention outputs and recomputes the cheap element-wise ops.
3. Data parallel on the "dp" axis: FSDP2 `fully_shard` per block then the root (`data_parallel_mode=fsdp`,
   applied even when dp is 1 so parameter types and the bf16 policy do not depend on the degree), or DDP
   (`ddp`, only when dp > 1; composes with TP through the DTensor-to-local transform torch provides).

Precision: under FSDP, bf16 means bf16 parameters in compute and float32 master weights and gradient
reduction (`MixedPrecisionPolicy`). Under DDP or without data parallel the weights stay float32 and the
training loop runs the forward under `torch.autocast(device_type, torch.bfloat16)`.

Every collective here runs on gloo (CPU tests), nccl and the Neuron backend alike; see docs/model.md.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import Replicate
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel, parallelize_module
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from model import rules
from model.config import DataParallelMode, ModelConfig, ParallelConfig
from model.llama3 import Llama3

MESH_AXES = ("dp", "tp")


def build_mesh(dp: int, tp: int, device_type: str = "cpu") -> DeviceMesh:
    """2-D mesh ("dp", "tp"); tp is the inner (fastest-varying) axis so TP ranks are neighbours on a node."""
    return init_device_mesh(device_type, (dp, tp), mesh_dim_names=MESH_AXES)


def check_tp(cfg: ModelConfig, tp: int) -> None:
    """What TP needs here (no K/V replication on this backend, unlike NxD's kv_size_multiplier): model/rules.py."""
    rules.raise_if(rules.torch_tp_problems(cfg, tp))


def apply_tp(model: Llama3, tp_mesh: DeviceMesh) -> None:
    check_tp(model.cfg, tp_mesh.size())
    top: dict[str, ParallelStyle] = {}
    if model.tok_embeddings is not None:
        # Vocabulary-parallel embedding: each rank looks up its rows, an all-reduce sums the partial results.
        top["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate())
    if model.output is not None:
        # Gathered logits keep loss_fn unchanged; loss_parallel would save the gather at the cost of a seam.
        top["output"] = ColwiseParallel(input_layouts=Replicate(), output_layouts=Replicate())
    parallelize_module(model, tp_mesh, top)
    if model.tok_embeddings is not None:
        _keep_grad_layout(model.tok_embeddings.weight)  # type: ignore[arg-type]  # a DTensor parameter
    for block in model.layers.values():
        parallelize_module(
            block,
            tp_mesh,
            {
                "attention.wq": ColwiseParallel(),
                "attention.wk": ColwiseParallel(),
                "attention.wv": ColwiseParallel(),
                "attention.wo": RowwiseParallel(),
                "feed_forward.w1": ColwiseParallel(),
                "feed_forward.w3": ColwiseParallel(),
                "feed_forward.w2": RowwiseParallel(),
            },
        )


def _keep_grad_layout(param: nn.Parameter) -> None:
    """The vocabulary-parallel embedding's backward yields a Replicate (full-size) gradient for a Shard(0)
    weight (torch 2.13); keep only this rank's rows so the gradient and the optimizer state stay 1/tp. FSDP2
    re-shards gradients itself; DDP's TP transform converts them back to the local shard."""

    def hook(grad):
        placements = param.placements  # type: ignore[attr-defined]  # a DTensor parameter
        return grad if grad.placements == placements else grad.redistribute(placements=placements)

    param.register_hook(hook)


_SAVE_OPS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
}


def _save_matmuls(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _checkpointed(forward, selective: bool):
    context_fn = partial(create_selective_checkpoint_contexts, _save_matmuls) if selective else None

    def run(*args):
        if context_fn is None:
            return checkpoint(forward, *args, use_reentrant=False)
        return checkpoint(forward, *args, use_reentrant=False, context_fn=context_fn)

    return run


def apply_activation_checkpointing(model: Llama3, mode: str) -> None:
    """Replace each block's forward in place (no wrapper module, so parameter names stay the HF-mappable
    ones that checkpoints and weight-decay groups use)."""
    if mode == "none":
        return
    rules.raise_if(rules.activation_checkpointing_problems(mode))
    for block in model.layers.values():
        block.forward = _checkpointed(block.forward, selective=mode == "selective")


def apply_fsdp(model: Llama3, dp_mesh: DeviceMesh, bf16: bool) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32 if bf16 else None
    )
    for block in model.layers.values():
        fully_shard(block, mesh=dp_mesh, mp_policy=mp)
    # The root holds embeddings, final norm and head; it is gathered last in forward, so keep it unsharded
    # after forward to save one all-gather in backward.
    fully_shard(model, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=False)


def apply_ddp(model: Llama3, dp_mesh: DeviceMesh) -> nn.Module:
    from torch.distributed.tensor.parallel.ddp import _pre_dp_module_transform
    from torch.nn.parallel import DistributedDataParallel

    # DDP all-reduces plain tensors: TP's DTensor parameters are exposed to it as their local shards.
    _pre_dp_module_transform(model)
    return DistributedDataParallel(model, process_group=dp_mesh.get_group(), forward_sync_buffers=False)


def parallelize(model: Llama3, *, mesh: DeviceMesh, parallel_cfg: ParallelConfig, bf16: bool = False) -> nn.Module:
    """Apply TP, activation checkpointing and DP in that order; returns the module to train (the model
    itself, or its DDP wrapper). Initialise or load the full weights before calling: TP slices them from
    each rank's (identical) copy. `bf16`: FSDP computes in bf16 with float32 master weights."""
    mode = DataParallelMode(parallel_cfg.data_parallel_mode)
    assert mesh.mesh_dim_names == MESH_AXES, mesh.mesh_dim_names
    rules.raise_if(rules.torch_pipeline_problems(parallel_cfg.pipeline_parallel_degree))
    tp_mesh, dp_mesh = mesh["tp"], mesh["dp"]
    if tp_mesh.size() > 1:
        apply_tp(model, tp_mesh)
    apply_activation_checkpointing(model, parallel_cfg.activation_checkpointing)
    if mode == DataParallelMode.fsdp:
        apply_fsdp(model, dp_mesh, bf16)
        return model
    if dp_mesh.size() > 1:
        return apply_ddp(model, dp_mesh)
    return model
