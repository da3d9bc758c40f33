"""A stage's status file, `<run_dir>/stages/<stage>/status.json`: its state (running, completed, skipped,
stopped, interrupted, failed), times, host, pid, job id and summary or error. Written by the job runner, the
executors and a training rank's watchdog; read by `status` and the end-of-run summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core import publish
from core.stages import Stage


def status_path(run_dir: Path, stage: Stage | str) -> Path:
    return run_dir / "stages" / Stage(stage).value / "status.json"


def read_status(run_dir: Path, stage: Stage | str) -> dict[str, Any]:
    try:
        value = json.loads(status_path(run_dir, stage).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_status(run_dir: Path, stage: Stage | str, **fields: Any) -> None:
    """Update the given fields, keeping the others (atomic replace)."""
    old = read_status(run_dir, stage)
    old.update(fields)
    publish.write_json(status_path(run_dir, stage), old)
