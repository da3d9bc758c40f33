"""What every stage job runs: `python -m launcher.job RUN_DIR STAGE` (under torchrun for distributed stages).

It loads the run's resolved config, skips a stage whose output is complete for this config, gives the stage a
temporary folder and publishes it with its marker by a rename only after the stage returned, so a killed job
never leaves a half-written output where a complete one is expected. The same code runs locally and in Slurm.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import shutil
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

from launcher import stages as st
from launcher.schema import JobConfig, Stage

# Exit codes: 2 = bad user input (one paragraph, no traceback); the training loop uses its own code when it
# stopped early on a signal so a requeue resumes it.
EXIT_USER_ERROR = 2


def load_config(run_dir: Path) -> JobConfig:
    from omegaconf import OmegaConf

    from launcher.schema import register

    register()
    base = OmegaConf.structured(JobConfig)
    cfg = OmegaConf.to_object(OmegaConf.merge(base, OmegaConf.load(run_dir / "config.yaml")))
    assert isinstance(cfg, JobConfig)
    return cfg


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def status_path(run_dir: Path, stage: Stage) -> Path:
    return run_dir / "stages" / stage.value / "status.json"


def write_status(run_dir: Path, stage: Stage, **fields: Any) -> None:
    path = status_path(run_dir, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = {}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
    old.update(fields)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(old, indent=2, default=str))
    os.replace(tmp, path)


def write_marker(folder: Path, stage: Stage, cfg: JobConfig, summary: dict[str, Any]) -> None:
    marker = {
        "stage": stage.value,
        "fingerprint": st.fingerprint(stage, cfg),
        "inputs": st.fingerprint_inputs(stage, cfg),
        "summary": summary,
        "finished_at": _now(),
        "host": socket.gethostname(),
    }
    tmp = folder / f".{st.MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=2, default=str))
    os.replace(tmp, folder / st.MARKER)


def publish(work: Path, final: Path) -> None:
    """Swap a finished temporary folder into place; the previous output is removed only after the swap."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(work, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _clear_stale(final: Path) -> None:
    for p in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def entrypoint(stage: Stage):
    module, func = st.SPECS[stage].entrypoint.split(":")
    return getattr(importlib.import_module(module), func)


def run_stage(run_dir: Path, stage: Stage, cfg: JobConfig | None = None) -> dict[str, Any]:
    cfg = cfg or load_config(run_dir)
    spec = st.SPECS[stage]
    rank = int(os.environ.get("RANK", "0"))
    final = st.final_dir(stage, cfg, run_dir)
    lead = rank == 0
    done, why = st.is_complete(stage, cfg, run_dir)
    if done and not cfg.force:
        if lead:
            print(f"[{stage.value}] skipped: {why}", flush=True)
            write_status(run_dir, stage, state="skipped", reason=why, ended=_now())
        return {"skipped": True, "reason": why}
    if lead:
        write_status(
            run_dir,
            stage,
            state="running",
            started=_now(),
            ended=None,
            host=socket.gethostname(),
            pid=os.getpid(),
            job_id=os.environ.get("SLURM_JOB_ID", ""),
            error=None,
        )
    if spec.atomic:
        final.parent.mkdir(parents=True, exist_ok=True)
        _clear_stale(final)
        work = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        work.mkdir()
    else:
        work = final
        work.mkdir(parents=True, exist_ok=True)
    ctx = st.StageContext(stage=stage, run_dir=run_dir, work_dir=work, final_dir=final)
    summary = entrypoint(stage)(cfg, ctx) or {}
    if lead:
        if spec.atomic:
            write_marker(work, stage, cfg, summary)
            publish(work, final)
        elif summary.get("completed", True):
            write_marker(final, stage, cfg, summary)
        state = "completed" if spec.atomic or summary.get("completed", True) else "stopped"
        write_status(run_dir, stage, state=state, ended=_now(), summary=summary)
    return summary


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m launcher.job RUN_DIR STAGE", file=sys.stderr)
        return EXIT_USER_ERROR
    run_dir, stage = Path(argv[0]), Stage(argv[1])
    try:
        run_stage(run_dir, stage)
    except ValueError as exc:
        # User-facing errors are ValueErrors with a one-paragraph message: no traceback.
        print(f"\n[{stage.value}] error: {exc}", file=sys.stderr, flush=True)
        if int(os.environ.get("RANK", "0")) == 0:
            write_status(run_dir, stage, state="failed", ended=_now(), error=str(exc))
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        write_status(run_dir, stage, state="cancelled", ended=_now())
        return 130
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        if code and int(os.environ.get("RANK", "0")) == 0:
            write_status(run_dir, stage, state="stopped", ended=_now(), exit_code=code)
        return code
    except BaseException as exc:
        traceback.print_exc()
        if int(os.environ.get("RANK", "0")) == 0:
            write_status(run_dir, stage, state="failed", ended=_now(), error=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
