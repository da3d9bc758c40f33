"""The `convert` stage's adapter: the pretrained HF folder -> `ctx.work_dir/model/...` (published as
`<run_dir>/checkpoints/pretrained_weight`, where NxD's trainer loads it)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from core import paths
from core.config import JobConfig
from core.stages import StageContext


def layout_from_cfg(cfg: JobConfig, input_dir: Path | str = ".", output_dir: Path | str = ".") -> Any:
    """The stage's layout, parsed by the standalone converter's own parser from `core.nxd_args.convert_args`:
    the flags the plan prints for this stage, built from the same cfg.parallel fields as the NxD training flags."""
    from checkpoint.convert import parser
    from checkpoint.nxd_layout import Layout
    from core.nxd_args import convert_args

    args = parser().parse_args(convert_args(cfg, input_dir, output_dir))
    return Layout(args.tp_size, args.pp_size, args.kv_size_multiplier, args.qkv_linear, args.fuse_qkv, args.hw_backend)


def run(cfg: JobConfig, ctx: StageContext) -> dict[str, Any]:
    from checkpoint.convert import format_summary, to_nxd
    from checkpoint.hf_folder import check_config, read_hf_config
    from checkpoint.nxd_layout import Arch

    src = paths.pretrained_dir(cfg)
    check_config(src, cfg.model)
    arch = Arch.from_hf_config(read_hf_config(src), str(src / "config.json"))
    # xser, as the seed converts (--save_xser 1) and as NxD's trainer saves; its loader detects either form.
    layout = layout_from_cfg(cfg, src, ctx.work_dir)
    summary = to_nxd(src, Path(ctx.work_dir), arch, layout, xser=True, progress=sys.stderr.isatty())
    print(format_summary(summary), flush=True)
    return summary
