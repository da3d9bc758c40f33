"""Resume is exact, crashes never damage the previous checkpoint, signals checkpoint and exit: all with real
training processes (`python -m launcher.job RUN train`), real kill -9 and real signals."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from checkpoint import train_state as ckpt
from tests.helpers.training import losses, run_job, small_config, start_job, status, tb_raw_steps, tb_scalars
from train.signals import EXIT_REQUEUE

pytestmark = pytest.mark.slow  # training runs (subprocesses): `pytest --full`

STEP_LINE = re.compile(r"^\[train\] step +\d+/\d+ \| loss [^|]+\| lr [^|]+\| grad norm [^|]+", re.M)


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory) -> dict:
    """One uninterrupted 20-step run: stdout lines and TensorBoard values to compare against."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    proc = run_job(run_dir, small_config(prepared))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"stdout": proc.stdout, "tb": tb_scalars(run_dir / "tensorboard"), "run_dir": run_dir}


def _lines(stdout: str) -> dict[int, str]:
    """step -> the deterministic part of its log line (loss, lr, grad norm; not the timings)."""
    return {int(m.group(0).split()[2].split("/")[0]): m.group(0) for m in STEP_LINE.finditer(stdout)}


def test_uninterrupted_run_learns_and_logs_every_step(reference):
    steps = losses(reference["stdout"])
    assert sorted(steps) == list(range(1, 21))
    assert steps[20] < steps[1] - 0.3
    assert [s for s, _ in reference["tb"]] == list(range(1, 21))
    # Every log line has the throughput and step time too; TensorBoard has the same scalars, one per step.
    assert len(re.findall(r"\| grad norm [0-9.]+ \| [0-9,]+ tok/s \| \d+ ms/step$", reference["stdout"], re.M)) == 20
    tb_dir = reference["run_dir"] / "tensorboard"
    for tag in ("train/lr", "train/grad_norm", "train/tokens_per_s", "train/step_time_s"):
        assert [s for s, _ in tb_scalars(tb_dir, tag)] == list(range(1, 21)), tag
    # Validation on the held-out split before the first step, then every trainer.eval_interval=10 steps.
    assert [s for s, _ in tb_scalars(tb_dir, "val/loss")] == [0, 10, 20]
    assert len(re.findall(r"^\[train\] step (0|10|20) \| validation loss [0-9.]+", reference["stdout"], re.M)) == 3
    summary = status(reference["run_dir"])["summary"]
    assert summary["completed"] and summary["steps"] == 20 and summary["resumed_from"] is None
    assert summary["loss_first"] == pytest.approx(steps[1], abs=1e-4)
    assert summary["checkpoint"].endswith("step_20") and summary["tokens_per_s"] > 0
    # keep_last=2: only the two newest complete checkpoints remain, nothing temporary.
    root = reference["run_dir"] / "checkpoints"
    assert [s for s, _ in ckpt.complete_steps(root)] == [15, 20]
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_stop_at_10_then_resume_is_bit_exact(prepared, reference, tmp_path):
    run_dir = tmp_path / "run"
    first = run_job(run_dir, small_config(prepared, steps_this_run=10))
    assert first.returncode == 0, first.stdout + first.stderr
    assert sorted(losses(first.stdout)) == list(range(1, 11))
    assert "stopped after step 10 of 20" in first.stdout
    assert status(run_dir)["state"] == "stopped"
    assert (run_dir / "checkpoints" / "step_10" / ckpt.COMPLETE).exists()

    notes = run_dir / "tensorboard" / "notes.txt"  # a user's file: a start never erases the folder
    notes.write_text("keep me")
    second = run_job(run_dir, small_config(prepared, steps_this_run=10))
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"resumed from {run_dir / 'checkpoints' / 'step_10'} (step 10" in second.stdout
    ref = _lines(reference["stdout"])
    got = _lines(second.stdout)
    assert sorted(got) == list(range(11, 21))
    assert {s: ref[s] for s in got} == got  # identical loss, lr and grad norm text for steps 11-20
    # TensorBoard: one event per step over both runs, float32-identical to the uninterrupted run.
    assert tb_scalars(run_dir / "tensorboard") == reference["tb"]
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2
    # Even the raw files (what any other reader sees) hold each step once: 1-10 in the first, 11-20 in the second.
    assert tb_raw_steps(run_dir / "tensorboard") == list(range(1, 21))
    assert notes.read_text() == "keep me"
    assert status(run_dir)["state"] == "completed"


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited early with {proc.returncode}")
        time.sleep(0.005)
    raise AssertionError("timed out waiting for the training process")


def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def _freeze_inside_save(proc: subprocess.Popen, root: Path, timeout: float) -> Path:
    """SIGSTOP the trainer at a moment when it is writing a checkpoint (its `.step_N.tmp-<host>-<pid>` folder
    exists) after a first complete one; returns that folder. If the save finished between the look and the stop,
    SIGCONT and look again: the kill that follows is then known to land in the middle of a save."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"training exited early with {proc.returncode}")
        tmps = list(root.glob(".step_*.tmp-*")) if ckpt.latest(root) is not None else []
        if tmps:
            proc.send_signal(signal.SIGSTOP)
            while not _stopped(proc.pid):
                time.sleep(0.001)
            if tmps[0].exists():
                return tmps[0]
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.002)
    raise AssertionError("never caught the trainer inside a checkpoint save")


@pytest.mark.slow
def test_kill_9_mid_checkpoint_and_at_random_keeps_previous_checkpoint(prepared, reference, tmp_path):
    run_dir = tmp_path / "run"
    root = run_dir / "checkpoints"
    cfg = small_config(prepared, checkpoint_interval=1, keep_last=2)
    log = tmp_path / "train.log"
    # 1) kill -9 while a checkpoint is being written (frozen first, so the kill provably lands mid-save).
    proc = start_job(run_dir, cfg, log)
    try:
        torn = _freeze_inside_save(proc, root, 120)
        before = ckpt.latest(root)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert torn.exists() and before is not None and ckpt.latest(root) == before
    ckpt.verify(before, ckpt.read_metadata(before))  # the previous checkpoint is intact
    # 2) The next start deletes the torn folder and resumes from the previous checkpoint; kill -9 it at a
    #    random moment a little later.
    proc = start_job(run_dir, cfg, log)
    try:
        _wait_for(lambda: "resumed from" in log.read_text(), 120, proc)
        assert f"resumed from {before} " in log.read_text()
        time.sleep(random.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    last = ckpt.latest(root)
    assert last is not None
    ckpt.verify(last, ckpt.read_metadata(last))
    # 3) A full restart finishes the run.
    done = run_job(run_dir, cfg)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resumed from {last}" in done.stdout
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # temporary folders cleaned
    # The resumed run continues exactly where the uninterrupted one was, and TensorBoard has each step once.
    ref = _lines(reference["stdout"])
    got = _lines(done.stdout)
    assert got and {s: ref[s] for s in got} == got
    assert tb_scalars(run_dir / "tensorboard") == reference["tb"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2], ids=lambda s: s.name)
def test_signal_checkpoints_at_step_boundary_and_exits_for_requeue(prepared, tmp_path, sig):
    run_dir = tmp_path / "run"
    cfg = small_config(prepared, max_steps=100000, checkpoint_interval=0, eval_interval=0, log_interval=1)
    cfg.optim.warmup_steps = 5
    log = tmp_path / "train.log"
    proc = start_job(run_dir, cfg, log)
    try:
        _wait_for(lambda: max(losses(log.read_text()), default=0) >= 5, 120, proc)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == EXIT_REQUEUE
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert f"received {sig.name}" in text
    stopped = max(losses(text))
    path = ckpt.latest(run_dir / "checkpoints")
    assert path is not None and path.name == f"step_{stopped}"
    assert status(run_dir)["state"] == "stopped" and status(run_dir)["exit_code"] == EXIT_REQUEUE
    again = run_job(
        run_dir, small_config(prepared, max_steps=100000, checkpoint_interval=0, eval_interval=0, steps_this_run=2)
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resumed from {path}" in again.stdout
    assert sorted(losses(again.stdout)) == [stopped + 1, stopped + 2]
    shutil.rmtree(run_dir)


def _worker_pid(parent: int, rank: int, timeout: float = 60) -> int:
    """The pid of torchrun's worker process with RANK=rank (read from /proc/PID/environ)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
            try:
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return int(child)
        time.sleep(0.05)
    raise AssertionError(f"no worker with RANK={rank} under {parent}")


@pytest.mark.slow
@pytest.mark.distributed
def test_signal_to_one_rank_stops_every_rank_after_the_same_step(prepared, tmp_path):
    """USR2 to rank 1 only: the flag travels in the step's all-reduce, so rank 0 (which got no signal) stops
    after the same step, and the one checkpoint they write together is complete and resumable."""
    run_dir = tmp_path / "run"
    cfg = small_config(prepared, max_steps=100000, checkpoint_interval=0, eval_interval=0)
    cfg.parallel.data_parallel_degree = 2
    log = tmp_path / "train.log"
    proc = start_job(run_dir, cfg, log, procs=2)
    try:
        rank1 = _worker_pid(proc.pid, 1)
        _wait_for(lambda: max(losses(log.read_text()), default=0) >= 3, 180, proc)
        os.kill(rank1, signal.SIGUSR2)
        proc.wait(timeout=120)  # torchrun itself reports the workers' non-zero exit (75) as a failure
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    stopped = max(losses(text))
    assert f"stopped by a signal on another rank after step {stopped}" in text
    path = ckpt.latest(run_dir / "checkpoints")
    assert path is not None and path.name == f"step_{stopped}"
    ckpt.verify(path, ckpt.read_metadata(path))
    assert status(run_dir)["state"] == "stopped" and status(run_dir)["exit_code"] == EXIT_REQUEUE
