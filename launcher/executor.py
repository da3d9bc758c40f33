"""The executor seam: how a plan's stages are started. `submit(plan)` never blocks on a stage and returns one
handle per started stage (or, locally, one handle for the whole chain); only a local handle's `wait()` runs
anything, and the CLI waits only on that one. Slurm handles carry the job id and log path; status and cancel
read them back from the run folder (launcher/status.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from core.config import ExecutorKind
from core.stages import Stage
from launcher.plan import Plan


class JobHandle(Protocol):
    stage: Stage
    job_id: str
    log: Path

    def wait(self) -> int | None:
        """Local: run to the end and return the exit code. Slurm: None at once (never waits on a job)."""
        ...


class Executor(Protocol):
    def submit(self, plan: Plan) -> Sequence[JobHandle]:
        """Start (or queue) the plan's stages that must run; returns their handles without waiting."""
        ...


def get_executor(kind: ExecutorKind) -> Executor:
    if kind == ExecutorKind.local:
        from launcher.local_executor import LocalExecutor

        return LocalExecutor()
    from launcher.slurm_executor import SlurmExecutor

    return SlurmExecutor()
