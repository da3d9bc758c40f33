"""The `export` stage's adapter: the newest complete training checkpoint of the run -> `ctx.work_dir` (published
as `<run_dir>/export`), in the layout of the backend that trained it, with config.json, generation_config.json
and the tokenizer the data stage used (core.paths.tokenizer_dir): a folder `from_pretrained` loads on its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.arithmetic import backend_for
from core.config import JobConfig
from core.paths import final_dir, tokenizer_dir
from core.stages import Stage, StageContext
from train.config import Backend


def run(cfg: JobConfig, ctx: StageContext) -> dict[str, Any]:
    from checkpoint.export import latest_step
    from checkpoint.hf_adapter import to_hf_config
    from checkpoint.hf_companions import tokenizer_files

    step = latest_step(final_dir(Stage.train, cfg, Path(ctx.run_dir)))
    tok = tokenizer_dir(cfg)
    tokenizer_files(
        tok,
        f"the export copies the tokenizer of data.tokenizer={cfg.data.tokenizer!r} from there; rerun the data "
        "stage (it builds the sample tokenizer; the download stage fetches a hub one), or set data.tokenizer to "
        "the folder of the tokenizer the model was trained with",
    )
    out = Path(ctx.work_dir)
    if backend_for(cfg) == Backend.nxd:
        from checkpoint.convert import format_summary, to_hf
        from checkpoint.nxd_layout import Arch
        from checkpoint.stage_convert import layout_from_cfg

        hf = to_hf_config(cfg.model)  # to_hf writes the dtype of the checkpoint's tensors
        summary = to_hf(step, out, Arch.from_hf_config(hf), layout_from_cfg(cfg), hf, progress=False, tokenizer_dir=tok)
        print(format_summary(summary), flush=True)
    else:
        from checkpoint.export import merge_torch_shards
        from checkpoint.hf_load import save_hf

        summary = save_hf(merge_torch_shards(step, cfg.model), cfg.model, out, tokenizer_dir=tok)
    return {**summary, "step": int(step.name.removeprefix("step_")), "checkpoint": str(step), "tokenizer": str(tok)}
