"""The `compile` stage's adapter: `neuron_parallel_compile` of a few training steps, for the nxd backend (trn1).

Planned, not built: the nxd training backend it compiles for is not in this version, and validation refuses
every config that would run this stage (trainer.backend=nxd), so a user is told before anything is queued.
This adapter exists so the stage registry resolves; reaching it says the same thing again.
"""

from __future__ import annotations

from typing import Any

from core.config import JobConfig
from core.stages import StageContext


def run(cfg: JobConfig, ctx: StageContext) -> dict[str, Any]:
    raise ValueError(
        f"The compile stage (neuron_parallel_compile for cluster.accelerator={cfg.cluster.accelerator.value}) is "
        "not available in this version: the nxd training backend is planned. Run with cluster.accelerator=cpu, "
        "cuda or trn2 (the torch backend), or stages=[data] to prepare data for a trn1 job."
    )
