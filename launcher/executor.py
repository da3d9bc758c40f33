"""The executor seam: how a plan's stages are started. Local processes now; submitit's Slurm executor next."""

from __future__ import annotations

from typing import Protocol

from core.config import ExecutorKind
from launcher.plan import Plan


class Executor(Protocol):
    def submit(self, plan: Plan) -> int:
        """Start the plan's stages; return an exit code (0 when every stage it ran succeeded)."""
        ...


def get_executor(kind: ExecutorKind) -> Executor:
    if kind == ExecutorKind.local:
        from launcher.local_executor import LocalExecutor

        return LocalExecutor()
    raise NotImplementedError(f"executor {kind.value} is not available yet")
