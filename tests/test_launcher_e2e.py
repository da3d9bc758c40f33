"""The embedded default end to end, as a new user runs it: `python -m launcher` with no arguments from a clean
state trains the tiny Llama 3 until its validation loss is at most 0.7x the untrained one, then a second run
reuses everything. Also: a SIGTERM to the launcher reaches the training process, which checkpoints and stops;
the same command then continues."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.cli import ROOT, run_cli

pytestmark = pytest.mark.slow

RUN = Path("runs") / "tiny-none-local"


def _status(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / "stages" / stage / "status.json").read_text())


def test_default_run_end_to_end_then_rerun_skips(isolated, tmp_path):
    first = run_cli([], cwd=isolated, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    run_dir = isolated / RUN
    for stage in ("data", "train", "export"):
        assert _status(run_dir, stage)["state"] == "completed", stage
    summary = _status(run_dir, "train")["summary"]
    assert summary["completed"] and summary["steps"] == summary["max_steps"] >= 200
    # The bar: the model learns rather than memorises: the validation loss (held-out text) ends at
    # most 0.7x the untrained model's, measured before the first step; the training loss falls too.
    assert summary["val_loss_initial"] and summary["val_loss"] <= 0.7 * summary["val_loss_initial"], summary
    assert summary["loss_last"] < summary["loss_first"], summary
    last = run_dir / "checkpoints" / f"step_{summary['max_steps']}"
    assert (last / "COMPLETE").is_file() and any((last / "model").iterdir())
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "export" / "model.safetensors").is_file()
    # The tokenizer the data stage trained is a Hugging Face tokenizer.json with Llama 3's BOS post-processor.
    from transformers import AutoTokenizer

    tok_dirs = list((tmp_path / "cache" / "tokenizers").iterdir())
    assert len(tok_dirs) == 1
    tok = AutoTokenizer.from_pretrained(str(tok_dirs[0]))
    assert tok("Hello world")["input_ids"][0] == tok.bos_token_id
    for words in ("loss", "validation loss", "tokens/s", "checkpoints", "tensorboard"):
        assert words in first.stdout, words

    again = run_cli([], cwd=isolated, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for stage in ("data", "train", "export"):
        assert f"[{stage}] skipped" in again.stdout, (stage, again.stdout[-2000:])
    assert "complete" in again.stdout  # the plan says why each stage is skipped
    status = run_cli(["status"], cwd=isolated)
    # The latest run reused every stage: status shows the outputs (complete, training's summary), not "skipped".
    assert status.returncode == 0 and str(run_dir.resolve()) in status.stdout, status.stdout
    assert all(_status(run_dir, s)["state"] == "skipped" for s in ("data", "train", "export"))
    flat = " ".join(status.stdout.split())
    assert all(f"{s} complete" in flat for s in ("data", "train", "export")), status.stdout
    assert "validation loss" in status.stdout and " -> " in status.stdout, status.stdout


# A small model and run, so that the signal test takes seconds per step rather than the default's minutes.
QUICK = [
    "model.hidden_size=64",
    "model.intermediate_size=128",
    "model.num_hidden_layers=2",
    "model.num_attention_heads=4",
    "model.num_key_value_heads=2",
    "trainer.max_steps=400",  # far more than the signal needs to arrive, however fast the machine
    "trainer.global_batch_size=2",
    "trainer.micro_batch_size=2",
    "trainer.checkpoint_interval=0",
    "trainer.log_interval=1",
]


def test_sigterm_to_the_launcher_checkpoints_and_the_same_command_continues(isolated):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher", *QUICK],
        cwd=isolated,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 300
    for line in proc.stdout:  # wait until training is really stepping
        seen.append(line)
        if re.search(r"\[train\] step +5/", line) or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    out = "".join(seen) + proc.stdout.read()
    rc = proc.wait(timeout=120)
    run_dir = isolated / RUN
    state = _status(run_dir, "train")
    assert state["state"] == "stopped", (rc, out[-3000:])
    assert "stopped by SIGTERM" in out, out[-3000:]
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    assert len(checkpoints) == 1 and (run_dir / "checkpoints" / checkpoints[0] / "COMPLETE").is_file(), checkpoints
    step = int(checkpoints[0].removeprefix("step_"))
    assert 5 <= step < 400
    # The export stage did not run on an unfinished model.
    assert not (run_dir / "export").exists()

    again = run_cli(QUICK, cwd=isolated, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    resumed = [line for line in again.stdout.splitlines() if "resumed from" in line]
    assert resumed and f"checkpoints/{checkpoints[0]}" in resumed[0], again.stdout[-3000:]
    summary = _status(run_dir, "train")["summary"]
    assert summary["completed"] and summary["start_step"] == step and summary["steps"] == 400 - step
    assert (run_dir / "export" / "model.safetensors").is_file()
