"""The stage marker, `<output>/_stage.json`: which stage made a folder, from which config, and its summary.
Written last (atomically) into a stage's output; a folder without it is not a complete output."""

from __future__ import annotations

import datetime as dt
import json
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import publish
from core.fingerprint import fingerprint, fingerprint_inputs
from core.paths import final_dir
from core.stages import Stage

if TYPE_CHECKING:
    from core.config import JobConfig

STAGE_MARKER = "_stage.json"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / STAGE_MARKER).read_text())
    except (OSError, ValueError):
        return None


def write_marker(folder: Path, stage: Stage, cfg: JobConfig, summary: dict[str, Any]) -> None:
    marker = {
        "stage": stage.value,
        "fingerprint": fingerprint(stage, cfg),
        "inputs": fingerprint_inputs(stage, cfg),
        "summary": summary,
        "finished_at": now(),
        "host": socket.gethostname(),
    }
    publish.write_json(folder / STAGE_MARKER, marker)


def is_complete(stage: Stage, cfg: JobConfig, run_dir: Path) -> tuple[bool, str]:
    """(complete, reason) for the plan: complete means the marker exists and records the current config."""
    out = final_dir(stage, cfg, run_dir)
    marker = read_marker(out)
    if marker is None:
        return False, "no output yet" if not out.exists() else "output incomplete (no marker)"
    if marker.get("stage") == stage.value and marker.get("fingerprint") == fingerprint(stage, cfg):
        return True, f"complete at {out}"
    return False, "config changed since the output was made"
