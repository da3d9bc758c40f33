"""Export of a training checkpoint to an HF folder (safetensors + config.json); the stage is checkpoint/stage_export.py.

- nxd backend: `step_N/model/dp_rank_00_tp_rank_XX_pp_rank_YY.pt` (plain or xser) is merged back with the same
  layout plan the conversion uses (checkpoint/nxd_layout.py), streaming one HF tensor at a time.
- torch backend: `step_N/model/dp_rank_DD_tp_rank_TT_pp_rank_00.pt` hold each rank's local tensors (TP shards,
  FSDP shards of those, or whole tensors). They are re-assembled by shape: FSDP shards concatenate on dim 0
  within a TP rank, TP shards on the one dim where tp x local == full; then `save_hf` writes the HF folder.
  Names are the model's own; a checkpoint written under DDP carries DDP's `module.` before each, which is dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from checkpoint import steps
from model.config import ModelConfig


def latest_step(root: Path) -> Path:
    """Newest complete step_N under `root` (ours: COMPLETE; NxD's: done), or a one-paragraph error."""
    step = steps.latest(root)
    if step is None:
        raise ValueError(
            f"No complete training checkpoint (step_N with {' or '.join(steps.DONE_MARKERS)}) under {root}: run "
            "the train stage first (export reads its last checkpoint)."
        )
    return step


def merge_torch_shards(step: Path, model_cfg: ModelConfig) -> dict[str, Any]:
    """Full tensors (our key names) from a torch-backend checkpoint, whatever its DP/TP sharding."""
    import torch

    from checkpoint.train_state import read_metadata, verify
    from model.llama3 import build

    meta = read_metadata(step)
    verify(step, meta)
    par = meta["layout"]["parallel"]
    tp, dp = int(par["tensor_parallel_degree"]), int(par["data_parallel_degree"])
    shards_dp = dp if par.get("data_parallel_mode") == "fsdp" else 1
    with torch.device("meta"):
        model = build(model_cfg, device="meta")
        full_shapes = {k: tuple(v.shape) for k, v in model.named_parameters(remove_duplicate=False)}
    files = {(d, t): step / "model" / steps.rank_file_name(d, t, 0) for d in range(shards_dp) for t in range(tp)}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise ValueError(
            f"The checkpoint {step} lacks model shards {missing[:4]} for its dp {dp} x tp {tp} "
            "layout; it is incomplete: export an older step_N or rerun training."
        )
    from checkpoint.model_keys import model_keys

    # model_keys: checkpoints written before the names were fixed carry DDP's `module.` prefix.
    sds = {k: model_keys(torch.load(f, map_location="cpu", weights_only=True, mmap=True)) for k, f in files.items()}
    for (d, t), sd in sds.items():
        absent = [key for key in full_shapes if key not in sd]
        if absent:
            raise ValueError(
                f"{files[(d, t)]} lacks {len(absent)} of the model's tensors ({', '.join(absent[:3])}, ...; it holds "
                f"{', '.join(list(sd)[:3]) or 'nothing'}, ...): the checkpoint is not of this model config. Export "
                "with the config the run was trained with."
            )
    out: dict[str, Any] = {}
    for key, shape in full_shapes.items():
        absent = [str(f) for k, f in files.items() if key not in sds[k]]
        if absent:
            raise ValueError(
                f"The checkpoint {step} has no tensor {key} in {absent[:2]}: it was not written by this model "
                "config's training (export the run it belongs to, or rerun training)."
            )
        locals_ = [
            torch.cat([sds[(d, t)][key] for d in range(shards_dp)], 0) if shards_dp > 1 else sds[(0, t)][key]
            for t in range(tp)
        ]
        local = tuple(locals_[0].shape)
        if local == shape:
            full = locals_[0]
        else:
            dims = [i for i, (a, b) in enumerate(zip(local, shape)) if a * tp == b and a != b]
            if len(dims) != 1 or len(local) != len(shape):
                raise ValueError(
                    f"{key} in {step} has local shape {list(local)} that does not tile the model's "
                    f"{list(shape)} over tp {tp}: the checkpoint is not of this model config."
                )
            full = torch.cat(locals_, dims[0])
        out[key] = full.clone()
    return out
