"""The `export` stage: the newest complete training checkpoint -> an HF folder (safetensors + config.json).

- nxd backend: `step_N/model/dp_rank_00_tp_rank_XX_pp_rank_YY.pt` (plain or xser) is merged back with the same
  layout plan the conversion uses (checkpoint/nxd_layout.py), streaming one HF tensor at a time.
- torch backend: `step_N/model/dp_rank_DD_tp_rank_TT_pp_rank_00.pt` hold each rank's local tensors (TP shards,
  FSDP shards of those, or whole tensors). They are re-assembled by shape: FSDP shards concatenate on dim 0
  within a TP rank, TP shards on the one dim where tp x local == full; then `save_hf` writes the HF folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from launcher.schema import Backend, JobConfig, Stage

STEP = re.compile(r"^step_(\d+)$")
DONE_MARKERS = ("COMPLETE", "done")


def latest_step(root: Path) -> Path:
    """Newest step_N under `root` with a completion marker (ours: COMPLETE; NxD's: done)."""
    steps = sorted(
        (int(m.group(1)), p)
        for p in (root.iterdir() if root.is_dir() else [])
        if (m := STEP.match(p.name)) and any((p / d).exists() for d in DONE_MARKERS)
    )
    if not steps:
        raise ValueError(
            f"No complete training checkpoint (step_N with COMPLETE or done) under {root}: run the "
            "train stage first (export reads its last checkpoint)."
        )
    return steps[-1][1]


def merge_torch_shards(step: Path, cfg: JobConfig) -> dict[str, Any]:
    """Full tensors (our key names) from a torch-backend checkpoint, whatever its DP/TP sharding."""
    import torch

    from model.llama3 import build
    from train.checkpoint import read_metadata, verify

    meta = read_metadata(step)
    verify(step, meta)
    par = meta["layout"]["parallel"]
    tp, dp = int(par["tensor_parallel_degree"]), int(par["data_parallel_degree"])
    shards_dp = dp if par.get("data_parallel_mode") == "fsdp" else 1
    with torch.device("meta"):
        model = build(cfg.model, device="meta")
        full_shapes = {k: tuple(v.shape) for k, v in model.named_parameters(remove_duplicate=False)}
    files = {
        (d, t): step / "model" / f"dp_rank_{d:02d}_tp_rank_{t:02d}_pp_rank_00.pt"
        for d in range(shards_dp)
        for t in range(tp)
    }
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise ValueError(
            f"The checkpoint {step} lacks model shards {missing[:4]} for its dp {dp} x tp {tp} "
            "layout; it is incomplete: export an older step_N or rerun training."
        )
    from checkpoint.model_keys import model_keys

    # model_keys: checkpoints written before the names were fixed carry DDP's `module.` prefix.
    sds = {k: model_keys(torch.load(f, map_location="cpu", weights_only=True, mmap=True)) for k, f in files.items()}
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


def run(cfg: JobConfig, ctx: Any) -> dict[str, Any]:
    from checkpoint.hf_adapter import to_hf_config
    from launcher.arithmetic import backend_for
    from launcher.stages import final_dir

    step = latest_step(final_dir(Stage.train, cfg, Path(ctx.run_dir)))
    out = Path(ctx.work_dir)
    if backend_for(cfg) == Backend.nxd:
        from checkpoint.convert import format_summary, layout_from_cfg, to_hf
        from checkpoint.nxd_layout import Arch

        hf = to_hf_config(cfg.model, "bfloat16")
        summary = to_hf(step, out, Arch.from_hf_config(hf), layout_from_cfg(cfg), hf, progress=False)
        print(format_summary(summary), flush=True)
    else:
        from checkpoint.hf_load import save_hf

        summary = save_hf(merge_torch_shards(step, cfg), cfg.model, out)
    return {**summary, "step": int(step.name.removeprefix("step_")), "checkpoint": str(step)}
