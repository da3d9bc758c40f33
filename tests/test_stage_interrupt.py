"""SIGTERM in the middle of the data stage, to the stage job alone and to the launcher (which passes it on):
exit 143, status `interrupted` with the time and the signal, no temporary folder left in the shared cache, no
encode worker left running; a failed stage leaves no temporary folder either."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.paths import data_dir
from tests.helpers.cli import ROOT, run_cli
from tests.helpers.corpora import documents, make_cfg, write_jsonl
from tests.helpers.processes import alive, cmdline, start_data_job, wait_until_encoding


def _leftovers(final: Path) -> list[Path]:
    return list(final.parent.glob(f".{final.name}.*"))


@pytest.mark.slow
def test_sigterm_to_the_data_job_and_to_the_launcher(tmp_path, isolated):
    from omegaconf import OmegaConf

    docs = documents(5000, seed=3, max_words=300)
    for i in range(4):
        write_jsonl(tmp_path / "corpus" / f"p{i}.jsonl", docs[i::4])
    cfg = make_cfg(tmp_path, paths=[str(tmp_path / "corpus" / "*.jsonl")], seq_len=128, num_proc=2)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    final = data_dir(cfg)

    # The job alone gets SIGTERM (as `kill PID` or Slurm's scancel would send it): its pool is terminated.
    proc = start_data_job(run_dir)
    workers = [w for w in wait_until_encoding(proc, final) if b"spawn_main" in cmdline(w)]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "interrupted by SIGTERM" in out, out[-2000:]
    status = json.loads((run_dir / "stages" / "data" / "status.json").read_text())
    assert status["state"] == "interrupted" and status["signal"] == "SIGTERM" and status["ended"]
    assert status["exit_code"] == 143 and not final.exists() and not _leftovers(final)
    deadline = time.time() + 30
    while any(alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert len(workers) == 2 and not any(alive(w) for w in workers), "encode workers outlived the stage"

    # The launcher gets SIGTERM (Ctrl-C is handled the same way): it passes it on and exits 143 after the stage.
    args = ["data=files", f"data.paths=[{tmp_path}/corpus/*.jsonl]", "data.seq_len=128", "data.num_proc=2"]
    args += ["stages=[data]", "run_dir=r"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "launcher", *args], cwd=isolated, env=env, stdout=subprocess.PIPE, text=True
    )
    from launcher.compose import compose

    final = data_dir(compose(args).cfg)
    deadline = time.time() + 120
    while not list(final.parent.glob(f".{final.name}.tmp-*/_tmp/train.arrow")) and time.time() < deadline:
        assert launcher.poll() is None
        time.sleep(0.05)
    launcher.send_signal(signal.SIGTERM)
    out, _ = launcher.communicate(timeout=60)
    status = json.loads((isolated / "r" / "stages" / "data" / "status.json").read_text())
    assert launcher.returncode == 143 and "exit code 143" in out, out[-2000:]
    assert status["state"] == "interrupted" and status["ended"] and not _leftovers(final)
    deadline = time.time() + 30  # nothing of the stage's process group is left (multiprocessing's resource
    while _group_alive(int(status["pgid"])) and time.time() < deadline:  # tracker goes once its pipe closes)
        time.sleep(0.1)
    assert not _group_alive(int(status["pgid"])), "processes of the stage outlived it"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_a_failed_data_stage_leaves_no_temporary_folder(isolated):
    """A corpus the plan cannot fault (its bytes are only decoded by the stage) fails inside the data job."""
    (isolated / "bad.txt").write_bytes(b"caf\xe9 latin-1, not UTF-8 " * 500)
    args = ["stages=[data]", "data=files", f"data.paths=[{isolated / 'bad.txt'}]", "data.val_fraction=0", "run_dir=r"]
    proc = run_cli(args, cwd=isolated)
    assert proc.returncode == 2 and "not valid UTF-8" in proc.stdout + proc.stderr, proc.stdout[-2000:]
    datasets = isolated.parent / "cache" / "datasets"
    assert not datasets.exists() or list(datasets.iterdir()) == []
    status = json.loads((isolated / "r" / "stages" / "data" / "status.json").read_text())
    assert status["state"] == "failed" and status["ended"] and "not valid UTF-8" in status["error"]
