"""The stage contract: what each stage is, where its output goes, what config it depends on.

Frozen interfaces (later work deepens stages without changing these):
- entrypoint: `def run(cfg: JobConfig, ctx: StageContext) -> dict` in a plain module (`data.prepare:run`, ...);
  it writes into `ctx.work_dir` and returns a JSON-able summary. For atomic stages `work_dir` is a temporary
  sibling of `final_dir` that `launcher.job` renames into place with the marker only after `run` returned.
- marker: `<final_dir>/_stage.json` = {stage, fingerprint, inputs, summary, finished_at}; a stage whose marker
  has the current fingerprint is skipped.
- run folder: <run_dir>/{config.yaml, plan.txt, stages/<stage>/{status.json,<stage>.log}, checkpoints/step_N/,
  tensorboard/, export/}.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.arithmetic import backend_for
from launcher.schema import Backend, DataSource, Init, JobConfig, Stage, as_plain

MARKER = "_stage.json"


@dataclass(frozen=True)
class StageSpec:
    stage: Stage
    entrypoint: str
    # Stages whose output this one reads (an explicit `stages=[...]` without them needs their output on disk).
    needs: tuple[Stage, ...]
    # Written under a temporary name and renamed into place whole (train is resumable instead).
    atomic: bool
    # Runs on every training process (torchrun / srun tasks) rather than in one process.
    distributed: bool
    what: str


SPECS: dict[Stage, StageSpec] = {
    s.stage: s
    for s in (
        StageSpec(
            Stage.download,
            "launcher.download:run",
            (),
            True,
            False,
            "fetch weights/tokenizer from the HF Hub",
        ),
        StageSpec(Stage.data, "data.prepare:run", (Stage.download,), True, False, "tokenize and pack the corpus"),
        StageSpec(
            Stage.convert,
            "checkpoint.convert:run_stage",
            (Stage.download,),
            True,
            False,
            "HF safetensors -> NxD tp x pp shards",
        ),
        StageSpec(
            Stage.compile,
            "train.compile:run",
            (Stage.data,),
            False,
            True,
            "neuron_parallel_compile a few steps to warm the compile cache",
        ),
        StageSpec(Stage.train, "train.main:run", (Stage.data, Stage.convert), False, True, "training loop"),
        StageSpec(
            Stage.export,
            "checkpoint.export:run",
            (Stage.train,),
            True,
            False,
            "final checkpoint -> HF safetensors",
        ),
    )
}
ORDER = list(SPECS)


@dataclass(frozen=True)
class StageContext:
    stage: Stage
    run_dir: Path
    # Where the stage writes (temporary for atomic stages).
    work_dir: Path
    # Where its output lives once complete.
    final_dir: Path


def _is_hub_id(path: str) -> bool:
    """A hub id is `org/name` that is not an existing local path."""
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", path)) and not Path(os.path.expanduser(path)).exists()


def needs_download(cfg: JobConfig) -> bool:
    weights = cfg.model.init == Init.pretrained and _is_hub_id(cfg.model.pretrained_path)
    return weights or _is_hub_id(cfg.data.tokenizer)


def applicable(cfg: JobConfig) -> list[Stage]:
    """Every stage this config calls for, in order (the default of `stages=[]`)."""
    nxd = backend_for(cfg) == Backend.nxd
    out = [Stage.download] if needs_download(cfg) else []
    out.append(Stage.data)
    if cfg.model.init == Init.pretrained and nxd:
        out.append(Stage.convert)
    if nxd:
        out.append(Stage.compile)
    out.append(Stage.train)
    out.append(Stage.export)
    return out


def selected(cfg: JobConfig) -> list[Stage]:
    return list(cfg.stages) if cfg.stages else applicable(cfg)


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
    if _is_hub_id(tok):
        return hub_local_dir(cfg, tok)
    return Path(os.path.expanduser(tok))


def pretrained_dir(cfg: JobConfig) -> Path:
    """Local HF folder (config.json + safetensors) of the pretrained weights."""
    p = cfg.model.pretrained_path
    return hub_local_dir(cfg, p) if _is_hub_id(p) else Path(os.path.expanduser(p))


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
    layout = {
        k: c["parallel"][k]
        for k in (
            "tensor_parallel_degree",
            "pipeline_parallel_degree",
            "kv_size_multiplier",
            "qkv_linear",
            "fuse_qkv",
        )
    }
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
        "trainer": {
            k: v
            for k, v in c["trainer"].items()
            # How this process runs, not what it trains: no effect on the output.
            if k not in ("steps_this_run", "num_threads", "log_interval", "collective_timeout_s", "stall_timeout_s")
        },
    }
    if stage == Stage.train:
        return train
    return {"train": train}  # export


def fingerprint(stage: Stage, cfg: JobConfig) -> str:
    blob = json.dumps(fingerprint_inputs(stage, cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def data_dir(cfg: JobConfig) -> Path:
    if cfg.data.output_dir:
        return Path(os.path.expanduser(cfg.data.output_dir))
    return cache_dir(cfg) / "datasets" / f"{slug(cfg.data.name)}-{fingerprint(Stage.data, cfg)}"


def final_dir(stage: Stage, cfg: JobConfig, run_dir: Path) -> Path:
    if stage == Stage.download:
        # One folder per thing downloaded; the marker lives in the first (weights, else tokenizer).
        if cfg.model.init == Init.pretrained and _is_hub_id(cfg.model.pretrained_path):
            return pretrained_dir(cfg)
        return tokenizer_dir(cfg)
    if stage == Stage.data:
        return data_dir(cfg)
    if stage == Stage.convert:
        # NxD's trainer loads pretrained weights from <checkpoint_dir>/pretrained_weight.
        return run_dir / "checkpoints" / "pretrained_weight"
    if stage == Stage.compile:
        return run_dir / "stages" / "compile" / "done"
    if stage == Stage.train:
        return run_dir / "checkpoints"
    return run_dir / "export"


def read_marker(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_complete(stage: Stage, cfg: JobConfig, run_dir: Path) -> tuple[bool, str]:
    """(complete, reason) for the plan: complete means the marker exists and records the current config."""
    out = final_dir(stage, cfg, run_dir)
    marker = read_marker(out)
    if marker is None:
        return False, "no output yet" if not out.exists() else "output incomplete (no marker)"
    if marker.get("stage") == stage.value and marker.get("fingerprint") == fingerprint(stage, cfg):
        return True, f"complete at {out}"
    return False, "config changed since the output was made"
