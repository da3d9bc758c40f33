"""The training loop's configuration: optimizer, schedule and trainer settings. Standard library only."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Schedule(str, Enum):
    cosine = "cosine"
    linear = "linear"
    constant = "constant"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


class Backend(str, Enum):
    """`auto` picks `nxd` on trn1 (XLA, the NxD example's path) and `torch` everywhere else (trn2 via TorchNeuron)."""

    auto = "auto"
    torch = "torch"
    nxd = "nxd"


@dataclass(kw_only=True)
class OptimConfig:
    # Peak learning rate (after warmup).
    lr: float = 4e-3
    # Learning rate at the end of the cosine/linear decay.
    min_lr: float = 4e-4
    # Optimizer steps of linear warmup from 0 to lr.
    warmup_steps: int = 20
    schedule: Schedule = Schedule.cosine
    # AdamW moments.
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    # Applied to weights; norms and biases never decay (the value is really used, unlike NxD's 70B script).
    weight_decay: float = 0.01
    # Max global gradient norm (0 = no clipping).
    grad_clip: float = 1.0


@dataclass(kw_only=True)
class TrainerConfig:
    # Optimizer steps of the whole schedule.
    max_steps: int = 200
    # Stop after this many steps in this run (with a checkpoint) without changing the schedule; -1 = all.
    steps_this_run: int = -1
    # Samples (blocks of data.seq_len tokens) per optimizer step, over all data-parallel replicas.
    global_batch_size: int = 16
    # Samples per forward/backward on one replica.
    micro_batch_size: int = 8
    seed: int = 1234
    # Steps between checkpoints; 0 disables periodic checkpoints (a final one is always written).
    checkpoint_interval: int = 100
    # Completed step_N checkpoints to keep (-1 = all).
    keep_last: int = 2
    # Steps between validation losses (0 = never).
    eval_interval: int = 100
    # Global batches of held-out blocks per validation.
    eval_batches: int = 4
    # Steps between log lines.
    log_interval: int = 10
    precision: Precision = Precision.fp32
    backend: Backend = Backend.auto
    # Intra-op threads per training process (0 = torch's default).
    num_threads: int = 0
    # Seeded (trainer.seed, epoch), resumable shuffling of the training blocks; off, as in NxD's examples.
    shuffle: bool = False
    # Process-group timeout (seconds): a collective that some rank never joins raises after this long.
    collective_timeout_s: int = 1800
    # Watchdog (train/watchdog.py): a rank that makes no progress (step, evaluation, checkpoint) for this long
    # prints where it is stuck and exits with code 124, recording the stage as failed; 0 disables it.
    stall_timeout_s: int = 1800
    # Continue the run folder's checkpoints although training-relevant settings changed since they were made
    # (a new optim.lr, max_steps, corpus...: continued training). Without it such a rerun is refused with the
    # differing keys. The model architecture and tp/pp/data-parallel mode can never change on resume. The
    # checkpoints' marker keeps the history of changes. Not part of any fingerprint.
    resume_changed: bool = False
