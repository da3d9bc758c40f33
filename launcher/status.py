"""`status [RUN]` and `cancel RUN`: read a run folder's stage status files (and, for local runs, whether the
recorded process is still alive). Slurm runs will add the scheduler's view here."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from launcher.runfolder import latest_run, read_status

EXIT_USER_ERROR = 2


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _resolve(args: list[str]) -> Path:
    """A run folder; a runs folder (its latest run of this user); or, with no argument or with overrides
    (`cluster=hyperpod`), the latest run of this user under the composed config's cluster.runs_dir."""
    if args and "=" not in args[0]:
        path = Path(args[0]).expanduser()
        if (path / "run.json").is_file():
            return path
        latest = latest_run(path) if path.is_dir() else None
        if latest is None:
            raise ValueError(
                f"{args[0]} is not a run folder (no run.json in it), nor a runs folder with a run of yours. "
                f"Fix: pass the folder the launcher printed as 'run folder', e.g. runs/tiny-none-local."
            )
        return latest
    from launcher.compose import ConfigError, compose

    try:
        runs_dir = Path(os.path.expanduser(compose(args).cfg.cluster.runs_dir))
    except ConfigError as err:
        raise ValueError(" ".join(err.problems)) from None
    latest = latest_run(runs_dir)
    if latest is None:
        raise ValueError(
            f"there is no run of yours under {runs_dir} yet (cluster.runs_dir). Fix: start a run with "
            f"`python -m launcher`, pass a run folder (python -m launcher status RUN), or the cluster whose "
            f"runs folder to look in (python -m launcher status cluster=hyperpod)."
        )
    return latest


def stage_rows(run_dir: Path) -> list[dict]:
    meta = json.loads((run_dir / "run.json").read_text())
    rows = []
    for entry in meta["stages"]:
        s = read_status(run_dir, entry["stage"])
        state = s.get("state", "pending")
        if state == "running" and s.get("pgid") and not _alive(int(s["pgid"])):
            state = "died"  # killed (e.g. kill -9) or crashed before it could record an outcome
        rows.append(
            {
                "stage": entry["stage"],
                "state": state,
                "started": s.get("started") or "",
                "ended": s.get("ended") or "",
                "output": entry["output"],
                "log": s.get("log", ""),
                "error": s.get("error") or "",
                "summary": s.get("summary") or {},
            }
        )
    return rows


def show(run_dir: Path) -> None:
    print(f"run folder: {run_dir}")
    for r in stage_rows(run_dir):
        print(f"  {r['stage']:<8} {r['state']:<10} {r['started']:<26} {r['ended']:<26} {r['output']}")
        if r["error"]:
            print(f"           error: {r['error']}")


def cancel(run_dir: Path) -> int:
    stopped = 0
    for r in stage_rows(run_dir):
        s = read_status(run_dir, r["stage"])
        if r["state"] == "running" and s.get("pgid"):
            # SIGTERM: the training loop checkpoints at the next step boundary, then exits.
            os.killpg(int(s["pgid"]), signal.SIGTERM)
            print(f"sent SIGTERM to stage {r['stage']} (process group {s['pgid']})")
            stopped += 1
    if not stopped:
        print(f"nothing to cancel in {run_dir}: no stage is running.")
    return 0


def main(argv: list[str]) -> int:
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "cancel" and (len(rest) != 1 or "=" in rest[0]):
            raise ValueError("cancel needs the run folder: python -m launcher cancel RUN.")
        if len(rest) > 1 and not all("=" in a for a in rest):
            raise ValueError(f"{cmd} takes at most one run folder, got {' '.join(rest)}.")
        run_dir = _resolve(rest)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    if cmd == "cancel":
        return cancel(run_dir)
    show(run_dir)
    return 0
