"""Ctrl-C and kill -9 in the middle of the data stage (run by the real job wrapper, `python -m launcher.job`):
the output path holds nothing, the workers go away, a dead worker stops the stage instead of hanging it, a
rerun completes, and a further rerun is skipped."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from core.paths import data_dir
from tests.helpers.corpora import documents, make_cfg, write_jsonl
from tests.helpers.processes import alive, cmdline, start_data_job, wait_until_encoding

ROOT = Path(__file__).resolve().parent.parent


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
        proc = start_data_job(run_dir)
        workers = wait_until_encoding(proc, final)  # the two pool workers and multiprocessing's tracker
        assert len([w for w in workers if b"spawn_main" in cmdline(w)]) == 2
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), out
        assert not final.exists()
        deadline = time.time() + 30
        while any(alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(alive(w) for w in workers), "worker processes outlived the stage"

    # A worker killed mid-way (as the OOM killer would): the stage stops with an error instead of waiting
    # forever for the piece that worker held, and publishes nothing.
    proc = start_data_job(run_dir)
    workers = [w for w in wait_until_encoding(proc, final) if b"spawn_main" in cmdline(w)]  # not the tracker
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "an encode worker died" in out and "exit code -9" in out, out
    assert not final.exists()
    deadline = time.time() + 30
    while alive(workers[1]) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(workers[1]), "the other worker outlived the stage"

    proc = start_data_job(run_dir)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "docs/s" in out and "tok/s" in out  # the progress bar, in a log (not a terminal)
    assert (final / "_stage.json").is_file() and (final / "train" / "state.json").is_file()
    assert "documents" in out and not list(final.parent.glob(f".{final.name}.tmp-*"))

    proc = start_data_job(run_dir)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "skipped" in out, out
