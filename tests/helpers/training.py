"""Helpers for the training tests: a real prepared dataset (the data stage on the sample corpus with
a small BPE vocabulary) and real training processes (`python -m launcher.job RUN train`, under torchrun for
several ranks), exactly what the launcher runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import replace
from pathlib import Path

from core.config import JobConfig
from model.config import ModelConfig

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"\[train\] step +(\d+)/\d+ \| loss ([0-9.]+) \| lr ([0-9.e+-]+) \| grad norm ([0-9.]+)")

# Small enough that a step takes milliseconds; every degree used in the tests (tp 2) divides it.
SMALL_MODEL = ModelConfig(
    name="test",
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


def small_config(cache: Path, **trainer) -> JobConfig:
    cfg = JobConfig(model=replace(SMALL_MODEL))
    cfg.cluster.cache_dir = str(cache)
    cfg.data.seq_len = 64
    cfg.data.num_proc = 1
    cfg.optim.warmup_steps = 5
    cfg.trainer.max_steps = 20
    cfg.trainer.global_batch_size = 8
    cfg.trainer.micro_batch_size = 2
    cfg.trainer.log_interval = 1
    cfg.trainer.eval_interval = 10
    cfg.trainer.eval_batches = 2
    cfg.trainer.checkpoint_interval = 5
    cfg.trainer.keep_last = 2
    for k, v in trainer.items():
        setattr(cfg.trainer, k, v)
    return cfg


def write_config(run_dir: Path, cfg: JobConfig) -> None:
    from omegaconf import OmegaConf

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def env(threads: int = 1) -> dict[str, str]:
    e = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [e.get("PYTHONPATH")])])
    return e


def job_command(run_dir: Path, stage: str = "train", procs: int = 1) -> list[str]:
    """The command the launcher's plan runs for this stage (launcher.plan.job_command), for the config written
    at run_dir/config.yaml: the tests start exactly what a user's run starts."""
    from core.stages import Stage
    from launcher.job import load_config
    from launcher.plan import job_command as plan_command

    return plan_command(load_config(run_dir), Stage(stage), run_dir, procs, 1)


def run_job(run_dir: Path, cfg: JobConfig, procs: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    write_config(run_dir, cfg)
    return subprocess.run(
        job_command(run_dir, procs=procs), env=env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def start_job(run_dir: Path, cfg: JobConfig, log: Path, procs: int = 1) -> subprocess.Popen:
    write_config(run_dir, cfg)
    return subprocess.Popen(
        job_command(run_dir, procs=procs), env=env(), stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT
    )


def losses(stdout: str) -> dict[int, float]:
    """step -> logged loss (the value as printed, 4 decimals)."""
    return {int(m.group(1)): float(m.group(2)) for m in LINE.finditer(stdout)}


def tb_scalars(tb_dir: Path, tag: str = "train/loss") -> list[tuple[int, float]]:
    """(step, value) of every event TensorBoard would show, after its purge of restarted runs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "stages" / "train" / "status.json").read_text())


def tb_raw_steps(tb_dir: Path, tag: str = "train/loss") -> list[int]:
    """Steps of every `tag` event in the event files as written (no purge applied), file by file in order."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = []
    for path in sorted(tb_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return steps


def checkpoint_compatibility(cfg: JobConfig) -> dict:
    """The compatibility record a training run of `cfg` records in its checkpoints (as train/loop.py computes it)."""
    from checkpoint.train_state import compatibility
    from core.arithmetic import derive

    return compatibility(cfg.model, derive(cfg), cfg.parallel.data_parallel_mode)
