"""What every stage job runs: `python -m launcher.job RUN_DIR STAGE` (under torchrun for distributed stages).

It loads the run's resolved config, skips a stage whose output is complete for this config, gives the stage a
temporary folder and publishes it with its marker (core/publish.py) only after the stage returned, so a killed
job never leaves a half-written output where a complete one is expected. The same code runs locally and in Slurm.

Ctrl-C (SIGINT) and SIGTERM stop every stage but training (which checkpoints on its own, train/signals.py) by
raising StageInterrupted where the stage is: its temporary output is removed on the way out (encode workers
are terminated by their pool), the status records `interrupted` with the time and the signal, and the exit
code is 128 + the signal (130 / 143).
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

from core import publish
from core.config import JobConfig
from core.marker import is_complete, now, record_inputs, write_marker
from core.paths import final_dir
from core.stage_status import write_status
from core.stages import SPECS, Stage, StageContext, StageFn

# Exit codes: 2 = bad user input (one paragraph, no traceback); the training loop uses its own code when it
# stopped early on a signal so a requeue resumes it.
EXIT_USER_ERROR = 2
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StageInterrupted(KeyboardInterrupt):
    """Raised in a stage by SIGINT or SIGTERM (a KeyboardInterrupt, so libraries treat it as Ctrl-C)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    for sig in STOP_SIGNALS:  # the clean-up on the way out must not be interrupted in turn
        signal.signal(sig, signal.SIG_IGN)
    raise StageInterrupted(signum)


def install_interrupt_handlers() -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_interrupted)


def load_config(run_dir: Path) -> JobConfig:
    from omegaconf import OmegaConf

    from launcher.compose import register

    register()
    base = OmegaConf.structured(JobConfig)
    cfg = OmegaConf.to_object(OmegaConf.merge(base, OmegaConf.load(run_dir / "config.yaml")))
    assert isinstance(cfg, JobConfig)
    return cfg


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
    if stage == Stage.train:
        _check_resume(cfg, run_dir, final, lead)
    if spec.atomic:
        with publish.publishing(final, force=cfg.force) as work:
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


def _check_resume(cfg: JobConfig, run_dir: Path, final: Path, lead: bool) -> None:
    """The plan's refusal, once more where the job starts (a job run by hand, or a config edited since);
    then record the config these checkpoints are being made from (with the history of changes)."""
    from checkpoint.steps import latest, step_of
    from launcher.reuse import train_refusal

    refusal, _ = train_refusal(cfg, run_dir)
    if refusal:
        raise ValueError(refusal)
    if lead:
        last = latest(final)
        record_inputs(final, Stage.train, cfg, at_step=step_of(last) if last else None)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m launcher.job RUN_DIR STAGE", file=sys.stderr)
        return EXIT_USER_ERROR
    run_dir, stage = Path(argv[0]), Stage(argv[1])
    lead = int(os.environ.get("RANK", "0")) == 0
    if stage != Stage.train:
        install_interrupt_handlers()
    try:
        run_job(run_dir, stage)
    except ValueError as exc:
        # User-facing errors are ValueErrors with a one-paragraph message: no traceback.
        print(f"\n[{stage.value}] error: {exc}", file=sys.stderr, flush=True)
        if lead:
            write_status(run_dir, stage, state="failed", ended=now(), error=str(exc), exit_code=EXIT_USER_ERROR)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        name = signal.Signals(signum).name
        print(f"\n[{stage.value}] interrupted by {name}; its temporary output was removed", file=sys.stderr, flush=True)
        if lead:
            write_status(run_dir, stage, state="interrupted", ended=now(), signal=name, exit_code=128 + signum)
        return 128 + signum
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
