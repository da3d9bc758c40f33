"""Fingerprints: what a stage's output depends on, hashed. A dataset's cache folder is named by its fingerprint,
and every marker records one; a changed fingerprint means the output is rebuilt. The values are pinned by
tests/test_fingerprints_pinned.py: outputs made by earlier versions must still be recognised."""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields, is_dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from core.stages import Stage
from data.config import DataSource
from model.config import Init

if TYPE_CHECKING:
    from core.config import JobConfig


def as_plain(obj: Any) -> Any:
    """Dataclass tree -> JSON-able dict with enum values as strings (for markers and fingerprints)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: as_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, dict):
        return {k: as_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_plain(v) for v in obj]
    return obj


def digest(value: Any) -> str:
    """The one fingerprint function: 16 hex digits of the sha256 of canonical JSON."""
    blob = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


LAYOUT_KEYS = ("tensor_parallel_degree", "pipeline_parallel_degree", "kv_size_multiplier", "qkv_linear", "fuse_qkv")
# Trainer settings that do not change what training computes (resume_changed only allows a rerun to continue).
# How this process runs, not what it trains: no effect on the output.
TRAIN_NEUTRAL = (
    "steps_this_run",
    "num_threads",
    "log_interval",
    "resume_changed",
    "collective_timeout_s",
    "stall_timeout_s",
)


def fingerprint_inputs(stage: Stage, cfg: JobConfig) -> dict[str, Any]:
    """The config a stage's output depends on; a change here means the output is rebuilt."""
    c = as_plain(cfg)
    if stage == Stage.download:
        return {
            "pretrained_path": c["model"]["pretrained_path"] if cfg.model.init == Init.pretrained else "",
            "tokenizer": c["data"]["tokenizer"],
        }
    if stage == Stage.data:
        data = {k: v for k, v in c["data"].items() if k not in ("output_dir", "num_proc", "name")}
        if cfg.data.source != DataSource.files:
            data.pop("paths")
        if cfg.data.tokenizer == "sample":
            data["sample_vocab_size"] = cfg.model.vocab_size
        return {"data": data}
    arch = {k: v for k, v in c["model"].items() if k not in ("init", "name")}
    layout = {k: c["parallel"][k] for k in LAYOUT_KEYS}
    if stage == Stage.convert:
        return {"model": arch, "layout": layout, "hw": c["cluster"]["accelerator"]}
    if stage == Stage.compile:
        return {
            "model": arch,
            "parallel": c["parallel"],
            "seq_len": cfg.data.seq_len,
            "micro_batch_size": cfg.trainer.micro_batch_size,
        }
    train = {
        "model": c["model"],
        "parallel": c["parallel"],
        "data": fingerprint(Stage.data, cfg),
        "optim": c["optim"],
        "trainer": {k: v for k, v in c["trainer"].items() if k not in TRAIN_NEUTRAL},
    }
    if stage == Stage.train:
        return train
    return {"train": train}  # export


def data_inputs_of(cfg: JobConfig) -> dict[str, Any]:
    """The data stage's inputs, which the train fingerprint holds only as a hash (recorded to name what changed)."""
    return fingerprint_inputs(Stage.data, cfg)


def fingerprint(stage: Stage, cfg: JobConfig) -> str:
    return digest(fingerprint_inputs(stage, cfg))
