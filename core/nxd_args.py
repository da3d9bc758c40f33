"""The NxD flags of a config: one function per tool, each reading the layout from the same `cfg.parallel` fields.

The seed's converter and trainer were configured by hand and disagreed (its conversion omitted `--fuse_qkv`, which
NxD's trainer defaults to 1). Here the `convert` stage parses `convert_args(cfg, ...)` with the standalone
converter's own parser, and the NxD training launch gets `train_args(cfg, ...)`; the plan prints both, and a test
checks that they agree. Flag names are NxD's (`convert_checkpoints.py`, `run_llama_nxd.py`; see
`../shared/reference/nxd-llama-example.md`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from core.arithmetic import derive
from model.config import Init

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


def train_args(cfg: JobConfig, checkpoint_dir: Path | str) -> list[str]:
    """The layout, batch and checkpoint flags NxD's `run_llama_nxd.py` takes for this config. With
    `model.init=pretrained` it loads `<checkpoint_dir>/pretrained_weight`, which is where `convert` writes."""
    p, t, d = cfg.parallel, cfg.trainer, derive(cfg)
    args = [
        "--tensor_parallel_size",
        str(p.tensor_parallel_degree),
        "--pipeline_parallel_size",
        str(p.pipeline_parallel_degree),
        "--kv_replicator",
        str(p.kv_size_multiplier),
        "--qkv_linear",
        _flag(p.qkv_linear),
        "--fuse_qkv",
        _flag(p.fuse_qkv),
        "--seq_len",
        str(cfg.data.seq_len),
        "--train_batch_size",
        str(d.batch_per_replica),
        "--max_steps",
        str(t.max_steps),
        "--lr",
        f"{cfg.optim.lr:g}",
        "--checkpoint_dir",
        str(checkpoint_dir),
        "--checkpoint_freq",
        str(t.checkpoint_interval),
        "--pretrained_weight",
        _flag(cfg.model.init == Init.pretrained),
        "--save_load_xser",
        "1",
    ]
    if p.pipeline_parallel_degree > 1:
        args += ["--num_microbatches", str(d.micro_batches)]
    return args
