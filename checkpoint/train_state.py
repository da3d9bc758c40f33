"""Atomic, verifiable training checkpoints: `<run_dir>/checkpoints/step_N/`.

    step_N/
      model/dp_rank_XX_tp_rank_YY_pp_rank_ZZ.pt   this rank's model tensors (NxD's file naming)
      optim/dp_rank_XX_tp_rank_YY_pp_rank_ZZ.pt   its optimizer state and param-group settings
      rng/rank_NNNNN.pt                           every rank's RNG states
      metadata.json                               step, data position, scheduler, layout fingerprint, manifest
      COMPLETE                                    written last; "latest" = newest step_N that has it

Every rank writes into rank 0's temporary sibling of `step_N/` (core/publish.py) and hashes what it wrote; rank 0
gathers each rank's (size, sha256) into the manifest, writes metadata.json and COMPLETE, fsyncs, and swaps the
folder into place. A process killed at any moment leaves either a complete step_N or a temporary folder that
the next start removes (its owner is gone), so the previous checkpoint always stays loadable. Corruption after
the fact (a truncated or edited file) is caught by the manifest and reported with the file's path.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch.distributed as dist

from checkpoint.steps import COMPLETE, complete_steps, latest, step_dir
from core import publish
from core.fingerprint import as_plain, digest

if TYPE_CHECKING:
    from core.arithmetic import Derived
    from model.config import DataParallelMode, ModelConfig

__all__ = ["COMPLETE", "complete_steps", "latest", "step_dir"]

METADATA = "metadata.json"
FORMAT_VERSION = 1


class ShardIO(Protocol):
    """What a backend provides: write/read this rank's files in a checkpoint folder."""

    def save_shards(self, folder: Path) -> list[Path]: ...

    def load_shards(self, folder: Path) -> None: ...


def clean_stale(root: Path) -> None:
    """Leftovers of a killed save or prune (never a complete checkpoint): rank 0, before any save."""
    if root.exists():
        for p in root.iterdir():
            if p.name.startswith(".step_"):
                if p.name.endswith(".tmp"):  # the format before core/publish.py (no owner recorded)
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    publish.clean_stale(root / p.name[1:].split(".", 1)[0])


def compatibility(model: ModelConfig, d: Derived, data_parallel_mode: DataParallelMode) -> dict[str, Any]:
    """What must be equal for a checkpoint to load: the architecture and how it is split over processes (stored
    under the metadata key "layout", the name checkpoints have always used)."""
    arch = {k: v for k, v in as_plain(model).items() if k not in ("name", "init", "pretrained_path")}
    return {
        "model": arch,
        "parallel": {
            "tensor_parallel_degree": d.tensor_parallel,
            "pipeline_parallel_degree": d.pipeline_parallel,
            "data_parallel_degree": d.data_parallel,
            "data_parallel_mode": as_plain(data_parallel_mode),
            "backend": d.backend.value,
        },
    }


def _differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: checkpoint {a!r}, config {b!r}")
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, value: Any) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _gather(obj: Any) -> list[Any]:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def save(root: Path, step: int, *, io: ShardIO, compat: dict[str, Any], state: dict[str, Any], keep_last: int) -> Path:
    """Collective: every rank calls it. `compat` is `compatibility(...)` of this run. Returns the published step_N."""
    final = step_dir(root, step)
    tmp = publish.sibling(final)  # rank 0's: every rank writes into the same folder
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    tmp = Path(_gather(str(tmp))[0])
    _barrier()
    written = io.save_shards(tmp)
    # Each rank hashes only what it wrote, in parallel; rank 0 assembles the manifest.
    mine = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in written}
    manifest: dict[str, Any] = {}
    for part in _gather(mine):
        manifest.update(part)
    if _rank() == 0:
        lay = compat
        meta = {
            "format_version": FORMAT_VERSION,
            "step": step,
            **state,
            "layout": lay,
            "layout_fingerprint": digest(lay),
            "world_size": dist.get_world_size() if dist.is_initialized() else 1,
            "saved_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "files": dict(sorted(manifest.items())),
        }
        _write_json(tmp / METADATA, meta)
        _write_json(tmp / COMPLETE, {"step": step})
        publish.fsync_dir(tmp)
        # A rerun saving the same step: the old one goes only after the swap. step_N names are the trainer's
        # own (an interrupted NxD save leaves one without its marker), so no ownership check here.
        publish.swap_in(tmp, final, force=True)
        publish.fsync_dir(root)
        prune(root, keep_last)
    _barrier()
    return final


def prune(root: Path, keep_last: int) -> None:
    if keep_last < 1:
        return
    for _, path in complete_steps(root)[:-keep_last]:
        publish.remove(path)  # a kill midway leaves a trash folder, never a half-deleted "complete" step


def read_metadata(path: Path) -> dict[str, Any]:
    meta_path = path / METADATA
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta["files"], dict) or not isinstance(meta["step"], int):
            raise TypeError("files must be a mapping and step an integer")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"The checkpoint {path} is corrupt: {meta_path} cannot be read ({type(exc).__name__}: "
            f"{exc}). Delete {path} to resume from the checkpoint before it, or start over in a new "
            f"run_dir."
        ) from None
    return meta


def check_compatible(path: Path, meta: dict[str, Any], compat: dict[str, Any]) -> None:
    diffs = _differences(meta.get("layout", {}), compat)
    if diffs:
        raise ValueError(
            f"The checkpoint {path} was made with a different model or parallel layout than this "
            f"config, so its shards cannot be loaded: {'; '.join(diffs)}. Use the config it was "
            f"made with, or start a new run (another run_dir) for the new model/layout."
        )


def verify(path: Path, meta: dict[str, Any]) -> None:
    """Collective: every file of the manifest is checked by one rank; all ranks raise the same error."""
    rank = _rank()
    world = dist.get_world_size() if dist.is_initialized() else 1
    problems = []
    for i, (name, rec) in enumerate(sorted(meta["files"].items())):
        if i % world != rank:
            continue
        f = path / name
        if not f.exists():
            problems.append(f"{f} is missing")
        elif f.stat().st_size != rec["bytes"]:
            problems.append(f"{f} has {f.stat().st_size} bytes, the manifest says {rec['bytes']}")
        elif _sha256(f) != rec["sha256"]:
            problems.append(f"{f} does not match its sha256 in {path / METADATA}")
    found = sorted(p for part in _gather(problems) for p in part)
    if found:
        raise ValueError(
            f"The checkpoint {path} is corrupt: {'; '.join(found)}. Delete {path} to resume from "
            f"the checkpoint before it, or start over in a new run_dir."
        )


def load(path: Path, *, io: ShardIO, compat: dict[str, Any]) -> dict[str, Any]:
    """Collective. Checks compatibility and integrity, then loads this rank's shards; returns the metadata."""
    meta = read_metadata(path)
    check_compatible(path, meta, compat)
    verify(path, meta)
    io.load_shards(path)
    return meta
