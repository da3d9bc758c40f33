"""What the NxD side of a config is, as plain data: one function per consumer, each reading the layout from the same
`cfg.parallel` fields.

- `convert_args`: the flags of our converter (`python -m checkpoint.convert`, NxD's `convert_checkpoints.py`
  flag names); the `convert` stage parses them with that converter's own parser.
- `nxd_config`: the keyword arguments of NxD's `neuronx_distributed_config` that the nxd backend
  (train/backend_nxd.py) passes, before it adds the model's classes (activation checkpointing, pipeline cuts,
  meta-device init function).
- `backend_settings`: what the plan's `nxd:` line prints for the compile and train stages: the settings the nxd
  backend really uses. Our backend replaces NxD's example scripts (`run_llama_nxd.py`,
  `tp_zero1_llama_hf_pretrain.py`), so no flags of those scripts are printed: they were never run by the launcher,
  and a partial list of them would not be runnable (see `../shared/reference/nxd-llama-example.md` 1.4, 1.5).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.arithmetic import Derived, derive, nxd_meta_device_init, nxd_sequence_parallel
from model.config import ModelConfig, ParallelConfig
from train.config import OptimConfig, Precision, TrainerConfig

if TYPE_CHECKING:
    from core.config import JobConfig


def _flag(value: bool) -> str:
    return "1" if value else "0"


def convert_args(cfg: JobConfig, input_dir: Path | str, output_dir: Path | str) -> list[str]:
    """`python -m checkpoint.convert` arguments of the `convert` stage (HF -> NxD, xser, as the seed does)."""
    p = cfg.parallel
    return [
        "--input_dir",
        str(input_dir),
        "--output_dir",
        str(output_dir),
        "--config",
        str(Path(input_dir) / "config.json"),
        "--tp_size",
        str(p.tensor_parallel_degree),
        "--pp_size",
        str(p.pipeline_parallel_degree),
        "--n_layers",
        str(cfg.model.num_hidden_layers),
        "--kv_size_multiplier",
        str(p.kv_size_multiplier),
        "--qkv_linear",
        _flag(p.qkv_linear),
        "--fuse_qkv",
        _flag(p.fuse_qkv),
        "--save_xser",
        "1",
        "--hw_backend",
        "trn1",
        "--convert_from_full_state",
    ]


# parallel.activation_checkpointing -> what the backend passes as NxD's activation_checkpoint_config ("selective":
# the model's FeedForward class, NxD's example's LlamaMLP; "full": NxD's whole-layer mode).
ACTIVATION_CHECKPOINT = {"none": None, "full": "full", "selective": "selective"}


def nxd_config(
    model: ModelConfig, parallel: ParallelConfig, trainer: TrainerConfig, optim: OptimConfig, derived: Derived
) -> dict[str, Any]:
    """The keyword arguments of `neuronx_distributed_config` (plain data: the plan and the golden tests read it
    without NxD). `pipeline_config` lacks the model-specific entries the backend adds (transformer_layer_cls,
    leaf_module_cls); "selective" becomes the model's FeedForward class, and meta-device init gets its
    param_init_fn."""
    p, d = parallel, derived
    master = bool(p.zero1 and Precision(trainer.precision) == Precision.bf16)
    out: dict[str, Any] = {
        "tensor_parallel_size": d.tensor_parallel,
        "pipeline_parallel_size": d.pipeline_parallel,
        "optimizer_config": {
            "zero_one_enabled": bool(p.zero1),
            "grad_clipping": True,
            # optim.grad_clip=0 turns clipping off; the norm is still computed (and logged).
            "max_grad_norm": optim.grad_clip if optim.grad_clip > 0 else float("inf"),
        },
        # NxD's optimizer all-reduces the norms' gradients over TP when on; the model (model/parallelize_nxd.py)
        # builds its layers with sequence_parallel_enabled and runs sequence-first.
        "sequence_parallel": nxd_sequence_parallel(p, d.tensor_parallel),
        "activation_checkpoint_config": ACTIVATION_CHECKPOINT.get(p.activation_checkpointing, "selective"),
        "model_init_config": {"sequential_move_factor": 11, "meta_device_init": nxd_meta_device_init(model)},
        "mixed_precision_config": {
            "use_master_weights": master,
            "use_fp32_grad_acc": master,
            "use_master_weights_in_ckpt": False,
        },
    }
    if d.pipeline_parallel > 1:
        out["pipeline_config"] = {
            "num_microbatches": d.micro_batches,
            "output_loss_value_spec": True,
            "input_names": ["input_ids", "labels"],
            "auto_partition": True,
            "tracer_cls": "torch",
            "use_zero1_optimizer": bool(p.zero1),
            "deallocate_pipeline_outputs": True,
            "return_loss_on_cpu": False,
        }
    return out


def backend_settings(cfg: JobConfig, checkpoint_dir: Path | str, converted_dir: Path | str | None) -> list[str]:
    """The plan's `nxd:` line of the compile and train stages: what the nxd backend does with this config, each
    item "name value" (`nxd_config` plus the model's NxD layers, optimizer, checkpoints and initial weights)."""
    p, o, t = cfg.parallel, cfg.optim, cfg.trainer
    d = derive(cfg)
    nc = nxd_config(cfg.model, p, t, o, d)
    mp = nc["mixed_precision_config"]
    pipeline = (
        f"pp {d.pipeline_parallel} (NxDPPModel, {d.micro_batches} micro-batches, auto partition)"
        if d.pipeline_parallel > 1
        else "pp 1"
    )
    qkv = (
        f"GQAQKVColumnParallelLinear(kv_size_multiplier={p.kv_size_multiplier}, fuse_qkv={p.fuse_qkv})"
        if p.qkv_linear
        else "ColumnParallelLinear q/k/v"
    )
    ac_modes = {None: "off", "full": "full", "selective": "selective (the MLP recomputed)"}
    ac = ac_modes[nc["activation_checkpoint_config"]]
    if nc["sequence_parallel"]:
        sp = f"on (activations [S/{d.tensor_parallel}, B, H] between layers)"
    else:
        sp = "off (tp 1: nothing to split)" if p.sequence_parallel else "off"
    zero1 = "on" if p.zero1 else "off"
    if mp["use_master_weights"]:
        zero1 += " (fp32 master weights, fp32 gradient accumulation)"
    clip = nc["optimizer_config"]["max_grad_norm"]
    weights = f"convert stage's shards {converted_dir}" if converted_dir else f"seeded init (trainer.seed {t.seed})"
    if not converted_dir and nc["model_init_config"]["meta_device_init"]:
        weights = "NxD meta-device init (each rank its own shards)"
    keep = f"keep {t.keep_last}" if t.keep_last > 0 else "keep all"
    return [
        f"tp {d.tensor_parallel}",
        pipeline,
        f"dp {d.data_parallel}",
        f"ZeRO-1 {zero1}",
        f"sequence parallel {sp}",
        f"activation checkpointing {ac}",
        f"attention {qkv}",
        f"AdamW lr {o.lr:g} betas {o.beta1:g},{o.beta2:g} eps {o.eps:g} weight decay {o.weight_decay:g}",
        _clip(clip, p.kv_size_multiplier),
        f"precision {Precision(t.precision).value}",
        f"weights {weights}",
        f"checkpoints nxd.save_checkpoint (xser) every {t.checkpoint_interval} steps into {checkpoint_dir}, {keep}, "
        "resume from the newest with NxD's done marker",
    ]


def _clip(max_norm: float, kv_size_multiplier: int) -> str:
    if max_norm == float("inf"):
        return "grad clip off"
    if kv_size_multiplier > 1:
        # Measured in NxD's CPU mode (tests/test_nxd_backend.py): the losses are the unreplicated model's with
        # clipping off; the norm is larger, since the fused weight_qkv is one tensor-parallel parameter.
        return (
            f"grad clip {max_norm:g} (NxD's global norm counts each of the {kv_size_multiplier} K/V replicas, so it "
            "is larger than the unreplicated model's)"
        )
    return f"grad clip {max_norm:g}"
