"""What every stage job runs: `python -m launcher.job RUN_DIR STAGE` (under torchrun for distributed stages).

It loads the run's resolved config, skips a stage whose output is complete for this config, gives the stage a
temporary folder and publishes it with its marker (core/publish.py) only after the stage returned, so a killed
job never leaves a half-written output where a complete one is expected. The same code runs locally and in Slurm.
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

from core import publish
from core.config import JobConfig
from core.marker import is_complete, now, write_marker
from core.paths import final_dir
from core.stages import SPECS, Stage, StageContext, StageFn

# Exit codes: 2 = bad user input (one paragraph, no traceback); the training loop uses its own code when it
# stopped early on a signal so a requeue resumes it.
EXIT_USER_ERROR = 2


def load_config(run_dir: Path) -> JobConfig:
    from omegaconf import OmegaConf

    from launcher.compose import register

    register()
    base = OmegaConf.structured(JobConfig)
    cfg = OmegaConf.to_object(OmegaConf.merge(base, OmegaConf.load(run_dir / "config.yaml")))
    assert isinstance(cfg, JobConfig)
    return cfg


def status_path(run_dir: Path, stage: Stage) -> Path:
    return run_dir / "stages" / stage.value / "status.json"


def write_status(run_dir: Path, stage: Stage, **fields: Any) -> None:
    import json

    path = status_path(run_dir, stage)
    old: dict[str, Any] = {}
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    old.update(fields)
    publish.write_json(path, old)


def entrypoint(stage: Stage) -> StageFn:
    module, func = SPECS[stage].entrypoint.split(":")
    return getattr(importlib.import_module(module), func)


def run_job(run_dir: Path, stage: Stage, cfg: JobConfig | None = None) -> dict[str, Any]:
    cfg = cfg or load_config(run_dir)
    spec = SPECS[stage]
    rank = int(os.environ.get("RANK", "0"))
    final = final_dir(stage, cfg, run_dir)
    lead = rank == 0
    done, why = is_complete(stage, cfg, run_dir)
    if done and not cfg.force:
        if lead:
            print(f"[{stage.value}] skipped: {why}", flush=True)
            write_status(run_dir, stage, state="skipped", reason=why, ended=now())
        return {"skipped": True, "reason": why}
    if lead:
        write_status(
            run_dir,
            stage,
            state="running",
            started=now(),
            ended=None,
            host=socket.gethostname(),
            pid=os.getpid(),
            job_id=os.environ.get("SLURM_JOB_ID", ""),
            restart=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
            error=None,
            exit_code=None,
        )
    fn = entrypoint(stage)
    if spec.atomic:
        with publish.publishing(final) as work:
            summary = fn(cfg, StageContext(stage=stage, run_dir=run_dir, work_dir=work, final_dir=final)) or {}
            write_marker(work, stage, cfg, summary)
        state = "completed"
    else:
        final.mkdir(parents=True, exist_ok=True)
        summary = fn(cfg, StageContext(stage=stage, run_dir=run_dir, work_dir=final, final_dir=final)) or {}
        completed = summary.get("completed", True)
        if lead and completed:
            write_marker(final, stage, cfg, summary)
        state = "completed" if completed else "stopped"
    if lead:
        write_status(run_dir, stage, state=state, ended=now(), summary=summary)
    return summary


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m launcher.job RUN_DIR STAGE", file=sys.stderr)
        return EXIT_USER_ERROR
    run_dir, stage = Path(argv[0]), Stage(argv[1])
    lead = int(os.environ.get("RANK", "0")) == 0
    try:
        run_job(run_dir, stage)
    except ValueError as exc:
        # User-facing errors are ValueErrors with a one-paragraph message: no traceback.
        print(f"\n[{stage.value}] error: {exc}", file=sys.stderr, flush=True)
        if lead:
            write_status(run_dir, stage, state="failed", ended=now(), error=str(exc), exit_code=EXIT_USER_ERROR)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        write_status(run_dir, stage, state="cancelled", ended=now())
        return 130
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        if code and lead:
            write_status(run_dir, stage, state="stopped", ended=now(), exit_code=code)
        return code
    except BaseException as exc:
        traceback.print_exc()
        if lead:
            write_status(run_dir, stage, state="failed", ended=now(), error=f"{type(exc).__name__}: {exc}", exit_code=1)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
