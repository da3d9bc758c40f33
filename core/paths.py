"""Where every stage's output lives, from the config: the one place run-folder and cache paths are resolved."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from core.stages import Stage
from model.config import Init

if TYPE_CHECKING:
    from core.config import JobConfig


def is_hub_id(path: str) -> bool:
    """A hub id is `org/name` that is not an existing local path."""
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", path)) and not Path(os.path.expanduser(path)).exists()


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def cache_dir(cfg: JobConfig) -> Path:
    return Path(os.path.expanduser(cfg.cluster.cache_dir))


def hub_local_dir(cfg: JobConfig, repo_id: str) -> Path:
    return cache_dir(cfg) / "hub" / slug(repo_id)


def tokenizer_dir(cfg: JobConfig) -> Path:
    """The folder the data stage and the training stage read the tokenizer from."""
    tok = cfg.data.tokenizer
    if tok == "sample":
        return cache_dir(cfg) / "tokenizers" / f"sample-bpe-{cfg.model.vocab_size}"
    if is_hub_id(tok):
        return hub_local_dir(cfg, tok)
    return Path(os.path.expanduser(tok))


def pretrained_dir(cfg: JobConfig) -> Path:
    """Local HF folder (config.json + safetensors) of the pretrained weights."""
    p = cfg.model.pretrained_path
    return hub_local_dir(cfg, p) if is_hub_id(p) else Path(os.path.expanduser(p))


def hub_dataset_dir(cfg: JobConfig) -> Path:
    """Where a hub dataset's parquet files are downloaded (a local folder of that layout is used as is)."""
    d = cfg.data
    local = Path(os.path.expanduser(d.hub_dataset))
    if local.is_dir():
        return local
    return cache_dir(cfg) / "hub" / "datasets" / slug(f"{d.hub_dataset}@{d.hub_revision}")


def data_dir(cfg: JobConfig) -> Path:
    from core.fingerprint import fingerprint

    if cfg.data.output_dir:
        return Path(os.path.expanduser(cfg.data.output_dir))
    return cache_dir(cfg) / "datasets" / f"{slug(cfg.data.name)}-{fingerprint(Stage.data, cfg)}"


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def tensorboard_dir(run_dir: Path) -> Path:
    return run_dir / "tensorboard"


def final_dir(stage: Stage, cfg: JobConfig, run_dir: Path) -> Path:
    if stage == Stage.download:
        # One folder per thing downloaded; the marker lives in the first (weights, else tokenizer).
        if cfg.model.init == Init.pretrained and is_hub_id(cfg.model.pretrained_path):
            return pretrained_dir(cfg)
        return tokenizer_dir(cfg)
    if stage == Stage.data:
        return data_dir(cfg)
    if stage == Stage.convert:
        # NxD's trainer loads pretrained weights from <checkpoint_dir>/pretrained_weight.
        return checkpoints_dir(run_dir) / "pretrained_weight"
    if stage == Stage.compile:
        return run_dir / "stages" / "compile" / "done"
    if stage == Stage.train:
        return checkpoints_dir(run_dir)
    return run_dir / "export"
