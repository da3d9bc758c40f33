"""The stage marker, `<output>/_stage.json`: which stage made a folder, from which config, and its summary.
Written last (atomically) into a stage's output; a folder without it is not a complete output. It lists the
entries the stage wrote (core/publish.py replaces or deletes only those).

Resumable stages (train) also keep `<output>/_inputs.json`, written when the stage starts: the config the
folder's checkpoints are being made from, and the history of changes a run continued through
(`trainer.resume_changed=true`). A rerun compares its config with it before resuming (launcher/plan.py).
"""

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

STAGE_MARKER = publish.MARKER
INPUTS_RECORD = "_inputs.json"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_marker(folder: Path) -> dict[str, Any] | None:
    return _read(folder / STAGE_MARKER)


def read_inputs_record(folder: Path) -> dict[str, Any] | None:
    return _read(folder / INPUTS_RECORD)


def write_marker(folder: Path, stage: Stage, cfg: JobConfig, summary: dict[str, Any]) -> None:
    record = read_inputs_record(folder) or {}
    marker = {
        "stage": stage.value,
        "fingerprint": fingerprint(stage, cfg),
        "inputs": fingerprint_inputs(stage, cfg),
        "summary": summary,
        "finished_at": now(),
        "host": socket.gethostname(),
        # What this stage wrote (for a resumable stage: everything but the inputs record is added later too).
        "entries": sorted(p.name for p in folder.iterdir() if p.name != STAGE_MARKER),
    }
    if record.get("history"):
        marker["history"] = record["history"]
    publish.write_json(folder / STAGE_MARKER, marker)


def recorded_inputs(folder: Path) -> dict[str, Any] | None:
    """The config a resumable stage's output was made from: its inputs record, else its marker (older runs)."""
    for rec in (read_inputs_record(folder), read_marker(folder)):
        if rec and isinstance(rec.get("inputs"), dict):
            return rec
    return None


def record_inputs(folder: Path, stage: Stage, cfg: JobConfig, *, at_step: int | None) -> dict[str, Any]:
    """Write the inputs record at the start of a resumable stage. When the folder was made with other inputs
    (the plan let it continue), the old ones go into `history` with the step they reached; returns the record."""
    from core.fingerprint import data_inputs_of

    old = recorded_inputs(folder)
    history: list[Any] = list((old or {}).get("history", []))
    new: dict[str, Any] = {
        "stage": stage.value,
        "fingerprint": fingerprint(stage, cfg),
        "inputs": fingerprint_inputs(stage, cfg),
        "data_inputs": data_inputs_of(cfg),
        "history": history,
        "recorded_at": now(),
    }
    if old is not None and old.get("fingerprint") != new["fingerprint"]:
        history.append(
            {
                "fingerprint": old.get("fingerprint"),
                "inputs": old.get("inputs"),
                "data_inputs": old.get("data_inputs"),
                "until_step": at_step,
                "changed": differences(old, new),
                "changed_at": new["recorded_at"],
            }
        )
    folder.mkdir(parents=True, exist_ok=True)
    publish.write_json(folder / INPUTS_RECORD, new)
    return new


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out |= _flat(v, f"{prefix}{k}.")
        return out
    return {prefix.rstrip("."): value}


def differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[Any]]:
    """{key: [old, new]} between two records' inputs, with config key names (`optim.lr`); the dataset's
    fingerprint is expanded into the `data.*` keys it hashes when both records hold them."""
    a, b = _flat(old.get("inputs") or {}), _flat(new.get("inputs") or {})
    out = {k: [a.get(k, "<absent>"), b.get(k, "<absent>")] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    if "data" in out and old.get("data_inputs") and new.get("data_inputs"):
        da, db = _flat(old["data_inputs"]), _flat(new["data_inputs"])
        detail = {k: [da.get(k, "<absent>"), db.get(k, "<absent>")] for k in sorted(set(da) | set(db))}
        detail = {k: v for k, v in detail.items() if v[0] != v[1]}
        if detail:
            del out["data"]
            out |= detail
    return out


def is_complete(stage: Stage, cfg: JobConfig, run_dir: Path) -> tuple[bool, str]:
    """(complete, reason) for the plan: complete means the marker exists and records the current config."""
    out = final_dir(stage, cfg, run_dir)
    marker = read_marker(out)
    if marker is None:
        return False, "no output yet" if not out.exists() else "output incomplete (no marker)"
    if marker.get("stage") == stage.value and marker.get("fingerprint") == fingerprint(stage, cfg):
        return True, f"complete at {out}"
    return False, "config changed since the output was made"
