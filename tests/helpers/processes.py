"""Processes of a stage job seen from outside: start one, find its workers, wait until it is encoding."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def start_data_job(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "launcher.job", str(run_dir), "data"],
        env=env,
        cwd=run_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def wait_until_encoding(proc: subprocess.Popen, final: Path, timeout: float = 120) -> list[int]:
    """Block until the stage is writing blocks into its temporary folder; return the worker pids."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        arrows = list(final.parent.glob(f".{final.name}.tmp-*-{proc.pid}/_tmp/train.arrow"))
        if arrows and arrows[0].stat().st_size > 0:  # this run's (a killed run leaves its own behind)
            return children(proc.pid)
        time.sleep(0.05)
    raise AssertionError("the data stage never started writing")


def wait_for(predicate, what: str, timeout: float = 30, interval: float = 0.2):
    """Poll `predicate` until it returns something true (returned), or fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
