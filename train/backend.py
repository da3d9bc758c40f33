"""The seam between the one training loop and a device stack.

The loop (train/loop.py) owns the schedule of work: data position, logging, evaluation, checkpoint cadence,
signals, NaN checks, resume. A backend owns everything that touches devices and parallelism: process groups,
building and sharding the model, the optimizer step, collectives, and this rank's checkpoint files.
`torch` (train/backend_torch.py) serves cpu/gloo, cuda/nccl and trn2/TorchNeuron; `nxd` (train/backend_nxd.py) serves
trn1 (XLA, `initialize_parallel_model`, `nxd.save_checkpoint`) and NxD's CPU mode. A backend may carry its own
checkpoint storage (`checkpoints`, with checkpoint.train_state's functions); the loop's policy is the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from train.config import Backend
from train.job import TrainJob


@dataclass
class StepResult:
    # Mean loss over the global batch (averaged over micro-batches and data-parallel ranks). A float, or a 0-d
    # device tensor that the loop reads (float()) only at its log interval: on XLA every read is a host sync.
    loss: float | torch.Tensor
    grad_norm: float | torch.Tensor
    # True when any rank received a stop signal before this step's collective.
    stop: bool


class TrainBackend(Protocol):
    rank: int
    world_size: int
    dp_rank: int
    dp_size: int
    # The scheduler's state is checkpointed by the loop (JSON in metadata.json).
    scheduler: torch.optim.lr_scheduler.LRScheduler

    def setup(self) -> None:
        """Process group, device, threads, seeds."""

    def build(self, resuming: bool) -> None:
        """Model (initialised, or from pretrained weights unless resuming), parallelism, optimizer, scheduler."""

    def train_step(self, micro_batches: list[torch.Tensor], stop_requested: bool) -> StepResult:
        """Forward/backward over the micro-batches; if the loss is finite: clip, optimizer and scheduler step."""

    def eval_loss(self, batches: list[torch.Tensor]) -> tuple[float, int]:
        """(mean loss over every rank's held-out batches, number of blocks)."""

    def save_shards(self, folder: Path) -> list[Path]:
        """Write this rank's files (model, optimizer, RNG) into a checkpoint folder; return their paths."""

    def load_shards(self, folder: Path) -> None: ...

    def barrier(self) -> None: ...

    def teardown(self) -> None: ...


def make_backend(job: TrainJob) -> TrainBackend:
    """The backend `trainer.backend` (or cluster.accelerator, for auto) selects."""
    if job.backend == Backend.torch:
        from train.backend_torch import TorchBackend

        return TorchBackend(job)
    from train.backend_nxd import NxDBackend

    return NxDBackend(job)
