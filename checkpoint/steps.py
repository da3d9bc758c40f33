"""Names of a training checkpoint folder on disk, shared by its writer (checkpoint/train_state.py), the NxD
backend's own saves, and every reader (resume, export, status): `step_N/` with a completion marker, and one
`dp_rank_XX_tp_rank_YY_pp_rank_ZZ.pt` file per rank (NxD's naming). "Latest" = the newest complete step."""

from __future__ import annotations

import re
from pathlib import Path

STEP_RE = re.compile(r"^step_(\d+)$")
# Ours (written last by train_state.save), and NxD's `nxd.save_checkpoint` (written after an async save ends).
COMPLETE = "COMPLETE"
DONE_MARKERS = (COMPLETE, "done")


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step}"


def rank_file_name(dp: int, tp: int, pp: int) -> str:
    return f"dp_rank_{dp:02d}_tp_rank_{tp:02d}_pp_rank_{pp:02d}.pt"


def complete_steps(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under `root`, oldest first."""
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = STEP_RE.match(p.name)
        if m and p.is_dir() and any((p / d).exists() for d in DONE_MARKERS):
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest(root: Path) -> Path | None:
    steps = complete_steps(root)
    return steps[-1][1] if steps else None


def step_of(path: Path) -> int:
    m = STEP_RE.match(path.name)
    if m is None:
        raise ValueError(f"{path} is not a step_N checkpoint folder")
    return int(m.group(1))
