"""The `compile` stage's adapter (`train.stage_compile:run`), for the nxd backend on trn1.

Each node runs it under `neuron_parallel_compile` (launcher/nxd_env.py builds that per-node command), which sets
NEURON_EXTRACT_GRAPHS_ONLY=1, runs this process to trace the training graphs without executing them, then compiles
every graph in parallel into the cache of NEURON_CC_FLAGS --cache_dir: the same shared cache the train stage's
environment names, so training starts on cache hits. This adapter runs the one training loop for
`COMPILE_STEPS` steps (the steps the real run will trace: the first ones and a steady-state one) into a scratch
folder that is deleted afterwards: no checkpoint, no TensorBoard of the run. It records the graph-relevant settings
(the stage fingerprint: model, parallel layout, sequence length, micro-batch) with the cache, and is skipped when a
record for the same settings is there.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from core.config import JobConfig
from core.stages import Stage, StageContext

COMPILE_STEPS = 3


def compile_cache(cfg: JobConfig) -> Path:
    """The Neuron compile cache every nxd job of this cluster shares (launcher/nxd_env.py exports it)."""
    from core.paths import cache_dir

    return Path(cfg.cluster.neuron.compile_cache or cache_dir(cfg) / "neuron-compile-cache")


def record(cfg: JobConfig) -> Path:
    from core.fingerprint import fingerprint

    return compile_cache(cfg) / "trainium-launcher" / f"{fingerprint(Stage.compile, cfg)}.json"


def run(cfg: JobConfig, ctx: StageContext) -> dict[str, Any]:
    import os

    from core import publish
    from core.fingerprint import fingerprint_inputs
    from train.backend import make_backend
    from train.loop import train
    from train.stage_train import train_job

    done = record(cfg)
    if done.exists():
        return {"skipped": True, "reason": f"compile cache already filled for these settings ({done})"}
    few = replace(
        cfg,
        trainer=replace(
            cfg.trainer, max_steps=COMPILE_STEPS, steps_this_run=-1, checkpoint_interval=0, eval_interval=0
        ),
        optim=replace(cfg.optim, warmup_steps=min(cfg.optim.warmup_steps, 1)),
    )
    scratch = Path(ctx.run_dir) / "stages" / "compile" / "scratch"
    # The run's own inputs (dataset, converted weights); outputs only into the scratch folder.
    job = replace(
        train_job(few, Path(ctx.run_dir), Stage.compile),
        checkpoint_dir=scratch / "checkpoints",
        tensorboard_dir=scratch / "tensorboard",
    )
    backend = make_backend(job)
    backend.setup()
    try:
        summary = train(job, backend)
    finally:
        backend.teardown()
    if int(os.environ.get("RANK", "0")) == 0:
        shutil.rmtree(scratch, ignore_errors=True)
        if os.environ.get("NEURON_EXTRACT_GRAPHS_ONLY", "0") != "0":  # under neuron_parallel_compile only
            publish.write_json(done, fingerprint_inputs(Stage.compile, cfg))
    return {"steps": summary.get("steps"), "cache": str(compile_cache(cfg)), "record": str(done)}
