"""What one training process needs to know: the owners' sections, the derived numbers and the resolved paths.

Built from the job config by the train stage's adapter (train/stage_train.py), the only code of train/ that
reads `JobConfig` or resolves run-folder paths; the loop and the backends read this instead, so they can be
driven without a job config (tests, benchmarks, another launcher).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.arithmetic import Derived
from core.config import Accelerator
from model.config import ModelConfig, ParallelConfig
from train.config import Backend, OptimConfig, TrainerConfig


@dataclass(frozen=True, kw_only=True)
class TrainJob:
    model: ModelConfig
    parallel: ParallelConfig
    optim: OptimConfig
    trainer: TrainerConfig
    # Tokens per training block (data.seq_len).
    seq_len: int
    accelerator: Accelerator
    backend: Backend
    derived: Derived
    # The prepared dataset (<dataset_dir>/{train,validation}).
    dataset_dir: Path
    # Where step_N checkpoints live (resumable: each checkpoint is published whole).
    checkpoint_dir: Path
    tensorboard_dir: Path
    # model.init=pretrained: the local HF folder of the weights (None: random init).
    pretrained_dir: Path | None = None
    # model.init=pretrained on the nxd backend: the convert stage's NxD shards (<checkpoint_dir>/pretrained_weight).
    converted_dir: Path | None = None
    # Called on rank 0 when the watchdog gives up (records the stage as failed, with the message).
    on_stall: Callable[[str], None] | None = None
