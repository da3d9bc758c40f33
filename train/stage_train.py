"""The `train` stage's adapter (`train.stage_train:run`), called on every rank.

Under torchrun it reads RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR/PORT) from the environment and joins
the process group of the device cluster.accelerator names (cpu -> gloo, cuda -> nccl, trn2 -> neuron); alone,
it makes a one-process group. Output goes to ctx.final_dir (<run_dir>/checkpoints, resumable, not atomic as
a whole: each checkpoint is) and <run_dir>/tensorboard.
"""

from __future__ import annotations

import time
from typing import Any

from core.config import JobConfig
from core.stages import StageContext


def run(cfg: JobConfig, ctx: StageContext) -> dict[str, Any]:
    started = time.perf_counter()
    from train.backend import make_backend
    from train.loop import train

    backend = make_backend(cfg, ctx.run_dir)
    backend.setup()
    try:
        return train(cfg, backend, ctx, started=started)
    finally:
        backend.teardown()
