"""Ctrl-C and kill -9 in the middle of the data stage (run by the real job wrapper, `python -m launcher.job`):
the output path holds nothing, the workers go away, a dead worker stops the stage instead of hanging it, a
rerun completes, and a further rerun is skipped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_data_lib import documents, make_cfg, write_jsonl

from core.paths import data_dir

ROOT = Path(__file__).resolve().parent.parent


def _start(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "launcher.job", str(run_dir), "data"],
        env=env,
        cwd=run_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _wait_until_encoding(proc: subprocess.Popen, final: Path, timeout: float = 120) -> list[int]:
    """Block until the stage is writing blocks into its temporary folder; return the worker pids."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        arrows = list(final.parent.glob(f".{final.name}.tmp-*-{proc.pid}/_tmp/train.arrow"))
        if arrows and arrows[0].stat().st_size > 0:  # this run's (a killed run leaves its own behind)
            return _children(proc.pid)
        time.sleep(0.05)
    raise AssertionError("the data stage never started writing")


@pytest.mark.slow
def test_ctrl_c_and_kill_9_leave_nothing_then_rerun_completes_and_skips(tmp_path):
    from omegaconf import OmegaConf

    docs = documents(5000, seed=21, max_words=300)
    paths = [str(write_jsonl(tmp_path / "corpus" / f"p{i}.jsonl", docs[i::4])) for i in range(4)]
    cfg = make_cfg(tmp_path, paths=[str(tmp_path / "corpus" / "*.jsonl")], seq_len=128, num_proc=2)
    cfg.data.output_dir = str(tmp_path / "prepared")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    final = data_dir(cfg)
    assert final == tmp_path / "prepared" and len(paths) == 4

    for sig in (signal.SIGINT, signal.SIGKILL):
        proc = _start(run_dir)
        workers = _wait_until_encoding(proc, final)  # the two pool workers and multiprocessing's tracker
        assert len([w for w in workers if b"spawn_main" in _cmdline(w)]) == 2
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), out
        assert not final.exists()
        deadline = time.time() + 30
        while any(_alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "worker processes outlived the stage"

    # A worker killed mid-way (as the OOM killer would): the stage stops with an error instead of waiting
    # forever for the piece that worker held, and publishes nothing.
    proc = _start(run_dir)
    workers = [w for w in _wait_until_encoding(proc, final) if b"spawn_main" in _cmdline(w)]  # not the tracker
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "an encode worker died" in out and "exit code -9" in out, out
    assert not final.exists()
    deadline = time.time() + 30
    while _alive(workers[1]) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(workers[1]), "the other worker outlived the stage"

    proc = _start(run_dir)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "docs/s" in out and "tok/s" in out  # the progress bar, in a log (not a terminal)
    assert (final / "_stage.json").is_file() and (final / "train" / "state.json").is_file()
    assert "documents" in out and not list(final.parent.glob(f".{final.name}.tmp-*"))

    proc = _start(run_dir)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "skipped" in out, out
