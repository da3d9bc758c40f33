"""Resume is exact, crashes never damage the previous checkpoint, signals checkpoint and exit: all with real
training processes (`python -m launcher.job RUN train`), real kill -9 and real signals."""

from __future__ import annotations

import random
import re
import shutil
import signal
import subprocess
import time

import pytest
from train_testlib import losses, prepared, run_job, small_config, start_job, status, tb_scalars  # noqa: F401

from train import checkpoint as ckpt
from train.signals import EXIT_REQUEUE

STEP_LINE = re.compile(r"^\[train\] step +\d+/\d+ \| loss [^|]+\| lr [^|]+\| grad norm [^|]+", re.M)


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory) -> dict:  # noqa: F811
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
    assert "validation loss" in reference["stdout"]
    summary = status(reference["run_dir"])["summary"]
    assert summary["completed"] and summary["steps"] == 20 and summary["resumed_from"] is None
    assert summary["loss_first"] == pytest.approx(steps[1], abs=1e-4)
    assert summary["checkpoint"].endswith("step_20") and summary["tokens_per_s"] > 0
    # keep_last=2: only the two newest complete checkpoints remain, nothing temporary.
    root = reference["run_dir"] / "checkpoints"
    assert [s for s, _ in ckpt.complete_steps(root)] == [15, 20]
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_stop_at_10_then_resume_is_bit_exact(prepared, reference, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    first = run_job(run_dir, small_config(prepared, steps_this_run=10))
    assert first.returncode == 0, first.stdout + first.stderr
    assert sorted(losses(first.stdout)) == list(range(1, 11))
    assert "stopped after step 10 of 20" in first.stdout
    assert status(run_dir)["state"] == "stopped"
    assert (run_dir / "checkpoints" / "step_10" / ckpt.COMPLETE).exists()

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


@pytest.mark.slow
def test_kill_9_mid_checkpoint_and_at_random_keeps_previous_checkpoint(prepared, reference, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    root = run_dir / "checkpoints"
    cfg = small_config(prepared, checkpoint_interval=1, keep_last=2)
    log = tmp_path / "train.log"
    rng = random.Random()
    kills = []
    # 1) Killed while a checkpoint folder is being written (its temporary folder exists), after a first one.
    # 2) Killed at a random moment a little after it resumed.
    for wait in (
        lambda: ckpt.latest(root) is not None and any(root.glob(".step_*")),
        lambda: "resumed from" in log.read_text(),
    ):
        proc = start_job(run_dir, cfg, log)
        try:
            _wait_for(wait, 120, proc)
            if "resumed from" in log.read_text():
                time.sleep(rng.uniform(0.0, 0.3))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
        kills.append(ckpt.latest(root))
    # After each kill: the newest complete checkpoint passes the manifest check (no torn files).
    for path in kills:
        if path is not None and path.exists():
            ckpt.verify(path, ckpt.read_metadata(path))
    last = ckpt.latest(root)
    done = run_job(run_dir, cfg)
    assert done.returncode == 0, done.stdout + done.stderr
    if last is not None:
        assert f"resumed from {last}" in done.stdout
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # temporary folders cleaned
    # The resumed run continues exactly where the uninterrupted one was, and TensorBoard has each step once.
    ref = _lines(reference["stdout"])
    got = _lines(done.stdout)
    assert got and {s: ref[s] for s in got} == got
    assert tb_scalars(run_dir / "tensorboard") == reference["tb"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2])
def test_signal_checkpoints_at_step_boundary_and_exits_for_requeue(prepared, tmp_path, sig):  # noqa: F811
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
