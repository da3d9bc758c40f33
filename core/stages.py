"""The stage contract: the stages, what each one's entrypoint is, and which apply to a config.

Frozen interfaces (later work deepens stages without changing these):
- entrypoint: every stage has one adapter, `<package>.stage_<name>:run(cfg: JobConfig, ctx: StageContext) -> dict`,
  the only code of its package that reads `JobConfig` or resolves run-folder paths; the libraries under it take
  plain arguments. It writes into `ctx.work_dir` and returns a JSON-able summary. For atomic stages `work_dir` is
  a temporary sibling of `final_dir` that the job runner publishes (core/publish.py) with the marker only after
  `run` returned.
- marker: `<final_dir>/_stage.json` (core/marker.py); a stage whose marker has the current fingerprint is skipped.
- run folder: <run_dir>/{config.yaml, plan.txt, stages/<stage>/{status.json,<stage>.log}, checkpoints/step_N/,
  tensorboard/, export/}.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.config import JobConfig


class Stage(str, Enum):
    download = "download"
    data = "data"
    convert = "convert"
    compile = "compile"
    train = "train"
    export = "export"


@dataclass(frozen=True)
class StageContext:
    stage: Stage
    run_dir: Path
    # Where the stage writes (temporary for atomic stages).
    work_dir: Path
    # Where its output lives once complete.
    final_dir: Path


# The one signature of every stage adapter.
StageFn = Callable[["JobConfig", StageContext], dict[str, Any]]


@dataclass(frozen=True)
class StageSpec:
    stage: Stage
    # `module:function` of the stage's adapter.
    entrypoint: str
    # Stages whose output this one reads (an explicit `stages=[...]` without them needs their output on disk).
    needs: tuple[Stage, ...]
    # Written under a temporary name and published whole (train is resumable instead).
    atomic: bool
    # Runs on every training process (torchrun / srun tasks) rather than in one process.
    distributed: bool
    what: str


SPECS: dict[Stage, StageSpec] = {
    s.stage: s
    for s in (
        StageSpec(
            Stage.download,
            "checkpoint.stage_download:run",
            (),
            atomic=True,
            distributed=False,
            what="fetch weights/tokenizer from the HF Hub",
        ),
        StageSpec(
            Stage.data,
            "data.stage_data:run",
            (Stage.download,),
            atomic=True,
            distributed=False,
            what="tokenize and pack the corpus",
        ),
        StageSpec(
            Stage.convert,
            "checkpoint.stage_convert:run",
            (Stage.download,),
            atomic=True,
            distributed=False,
            what="HF safetensors -> NxD tp x pp shards",
        ),
        StageSpec(
            Stage.compile,
            "train.stage_compile:run",
            (Stage.data,),
            atomic=False,
            distributed=True,
            what="neuron_parallel_compile a few steps to warm the compile cache",
        ),
        StageSpec(
            Stage.train,
            "train.stage_train:run",
            (Stage.data, Stage.convert, Stage.compile),
            atomic=False,
            distributed=True,
            what="training loop",
        ),
        StageSpec(
            Stage.export,
            "checkpoint.stage_export:run",
            (Stage.train,),
            atomic=True,
            distributed=False,
            what="final checkpoint -> HF safetensors",
        ),
    )
}
ORDER = list(SPECS)


def needs_download(cfg: JobConfig) -> bool:
    from core.paths import is_hub_id
    from model.config import Init

    weights = cfg.model.init == Init.pretrained and is_hub_id(cfg.model.pretrained_path)
    return weights or is_hub_id(cfg.data.tokenizer)


def applicable(cfg: JobConfig) -> list[Stage]:
    """Every stage this config calls for, in order (the default of `stages=[]`)."""
    from core.arithmetic import backend_for
    from model.config import Init
    from train.config import Backend

    nxd = backend_for(cfg) == Backend.nxd
    out = [Stage.download] if needs_download(cfg) else []
    out.append(Stage.data)
    if cfg.model.init == Init.pretrained and nxd:
        out.append(Stage.convert)
    if nxd and cfg.cluster.accelerator.value == "trn1":  # Neuron's compiler; NxD's CPU mode compiles nothing
        out.append(Stage.compile)
    out.append(Stage.train)
    out.append(Stage.export)
    return out


def selected(cfg: JobConfig) -> list[Stage]:
    return list(cfg.stages) if cfg.stages else applicable(cfg)
