"""The `train` stage's adapter (`train.stage_train:run`), called on every rank.

Under torchrun it reads RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR/PORT) from the environment and joins
the process group of the device cluster.accelerator names (cpu -> gloo, cuda -> nccl, trn2 -> neuron); alone,
it makes a one-process group. Output goes to ctx.final_dir (<run_dir>/checkpoints, resumable, not atomic as
a whole: each checkpoint is) and <run_dir>/tensorboard.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from core import paths
from core.arithmetic import backend_for, derive
from core.config import JobConfig
from core.stages import Stage, StageContext
from model.config import Init
from train.job import TrainJob


def train_job(cfg: JobConfig, run_dir: Path, stage: Stage = Stage.train) -> TrainJob:
    """The training process's view of `cfg` in the run folder `run_dir`."""
    run_dir = Path(run_dir)
    pretrained = cfg.model.init == Init.pretrained
    return TrainJob(
        model=cfg.model,
        parallel=cfg.parallel,
        optim=cfg.optim,
        trainer=cfg.trainer,
        seq_len=cfg.data.seq_len,
        accelerator=cfg.cluster.accelerator,
        backend=backend_for(cfg),
        derived=derive(cfg),
        dataset_dir=paths.data_dir(cfg),
        checkpoint_dir=paths.final_dir(Stage.train, cfg, run_dir),
        tensorboard_dir=paths.tensorboard_dir(run_dir),
        pretrained_dir=paths.pretrained_dir(cfg) if pretrained else None,
        converted_dir=paths.final_dir(Stage.convert, cfg, run_dir) if pretrained else None,
        on_stall=_record_stall(run_dir, stage),
    )


def _record_stall(run_dir: Path, stage: Stage):
    def record(msg: str) -> None:
        from core.marker import now
        from core.stage_status import write_status
        from train.watchdog import EXIT_STALLED

        write_status(run_dir, stage, state="failed", ended=now(), exit_code=EXIT_STALLED, error=msg)

    return record


def run(cfg: JobConfig, ctx: StageContext) -> dict[str, Any]:
    started = time.perf_counter()
    from train.backend import make_backend
    from train.loop import train

    job = train_job(cfg, Path(ctx.run_dir), ctx.stage)
    backend = make_backend(job)
    backend.setup()
    try:
        return train(job, backend, started=started)
    finally:
        backend.teardown()
