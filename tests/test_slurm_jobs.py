"""Stages run as real Slurm jobs on the local two-node cluster: the chain, reruns, failures, requeue and resume,
quoting, status with and without accounting. The tiny model with a few small steps keeps each job short."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.helpers.processes import wait_for
from tests.test_slurm_submit import launcher, slurm_args


def _wait(predicate, what: str, timeout: float = 900, interval: float = 1.0):
    return wait_for(predicate, what, timeout, interval)


pytestmark = [pytest.mark.slurm, pytest.mark.slow]
# 12 small steps, a checkpoint every 4, a log line every step, one thread per process (2 shared cores).
TINY = (
    "trainer.max_steps=12",
    "trainer.checkpoint_interval=4",
    "trainer.log_interval=1",
    "trainer.global_batch_size=4",
    "trainer.micro_batch_size=2",
    "trainer.num_threads=1",
    "optim.warmup_steps=2",
)
LOSS_RE = re.compile(r"\[train\] step\s+(\d+)/\d+ \| loss ([\d.]+)")
SENTINEL = "hf_SENTINELtoken0123456789"


def _job(run_dir: Path, stage: str) -> str:
    return json.loads((run_dir / "stages" / stage / "job.json").read_text())["job_id"]


def _status(run_dir: Path, stage: str) -> dict:
    try:
        return json.loads((run_dir / "stages" / stage / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _gone(cluster, ids: list[str]) -> bool:
    r = cluster.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i"])
    return (r.returncode == 0 and not r.stdout.strip()) or "Invalid job id" in r.stderr


def _losses(log: Path) -> dict[int, str]:
    return {int(s): loss for s, loss in LOSS_RE.findall(log.read_text(errors="replace"))}


def _log(run_dir: Path, stage: str) -> Path:
    return Path(json.loads((run_dir / "stages" / stage / "job.json").read_text())["log"])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("slurm-cache")


@pytest.fixture(scope="module")
def uninterrupted(slurm_cluster, tmp_path_factory, cache):
    """The tiny default submitted to Slurm once, uninterrupted, with a sentinel HF token in the environment and
    in the token file: (run_dir, submit output, final loss)."""
    tmp = tmp_path_factory.mktemp("chain")
    hf_home = tmp / "hf"
    hf_home.mkdir()
    (hf_home / "token").write_text(SENTINEL)
    run_dir = tmp / "runs" / "chain"
    args = [*slurm_args(tmp, f"run_dir={run_dir}", *TINY)]
    args[args.index(f"cluster.cache_dir={tmp / 'cache'}")] = f"cluster.cache_dir={cache}"
    env = slurm_cluster.subprocess_env({"PYTHONPATH": str(ROOT), "HF_TOKEN": SENTINEL, "HF_HOME": str(hf_home)})
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "launcher", *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=120
    )
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ids = [_job(run_dir, s) for s in ("data", "train", "export")]
    queued = slurm_cluster.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i"]).stdout.split()
    _wait(lambda: _gone(slurm_cluster, ids), "the chain to finish")
    final = _status(run_dir, "train").get("summary", {}).get("loss_last")
    return {"run_dir": run_dir, "proc": proc, "args": args, "env": env, "queued": queued, "took": took, "loss": final}


def test_default_chain_completes_as_jobs_and_rerun_skips(slurm_cluster, uninterrupted, cache):
    u, run_dir = uninterrupted, uninterrupted["run_dir"]
    # The submit command returned while its jobs were still queued (it never waits on a job).
    assert len(u["queued"]) >= 2, u["queued"]
    for stage in ("data", "train", "export"):
        assert _status(run_dir, stage).get("state") == "completed", (stage, _status(run_dir, stage))
        assert (run_dir / "stages" / stage / f"{stage}.sbatch").is_file()
        assert _log(run_dir, stage).is_file()
    assert u["loss"] is not None
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["command"][1:3] == ["-m", "launcher"] and meta["git"]["commit"] and "submitit" in meta["versions"]
    assert (run_dir / "config.yaml").is_file()
    r = launcher(slurm_cluster, ["status", str(run_dir)], run_dir.parent)
    assert r.returncode == 0 and "Slurm state from sacct" in r.stdout, r.stdout + r.stderr
    for stage in ("data", "train", "export"):
        # The outputs: a stage whose output is complete for the run's config reads "complete".
        assert re.search(rf"{stage}\s+complete\s+{_job(run_dir, stage)}", r.stdout), r.stdout
    assert "latest checkpoint:" in r.stdout and "step_12" in r.stdout
    # A rerun of the same command submits nothing.
    again = subprocess.run(
        [sys.executable, "-m", "launcher", *u["args"]],
        cwd=run_dir.parent,
        env=u["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0 and "Nothing to submit: every stage is complete." in again.stdout, again.stdout
    # The token never reaches the output, the run folder, the scripts or the logs.
    assert SENTINEL not in u["proc"].stdout + u["proc"].stderr + again.stdout + again.stderr
    for f in run_dir.rglob("*"):
        if f.is_file():
            assert SENTINEL.encode() not in f.read_bytes(), f


def _interrupt_and_resume(slurm_cluster, tmp_path, cache, interrupt: list[str]) -> tuple[Path, str]:
    run_dir = tmp_path / "run"
    args = slurm_args(tmp_path, f"run_dir={run_dir}", f"cluster.cache_dir={cache}", "stages=[data,train]", *TINY)
    proc = launcher(slurm_cluster, args, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = _job(run_dir, "train")
    _wait(lambda: (run_dir / "checkpoints" / "step_4" / "COMPLETE").exists(), "the first checkpoint")
    slurm_cluster.run([*interrupt, job], check=True)
    _wait(lambda: _status(run_dir, "train").get("state") == "completed", "training to complete after the restart")
    _wait(lambda: _gone(slurm_cluster, [job]), "the job to end")
    return run_dir, job


@pytest.mark.parametrize(
    "interrupt", [["scontrol", "requeue"], ["scancel", "--signal=USR2"]], ids=["scontrol-requeue", "usr2"]
)
def test_interrupted_training_resumes_with_the_same_final_loss(
    slurm_cluster, uninterrupted, tmp_path, cache, interrupt
):
    run_dir, _ = _interrupt_and_resume(slurm_cluster, tmp_path, cache, interrupt)
    log = _log(run_dir, "train").read_text(errors="replace")
    resumed = [int(k) for k in re.findall(r"resumed from \S*step_(\d+)", log)]
    assert resumed and resumed[-1] > 0, log[-3000:]
    summary = _status(run_dir, "train")["summary"]
    assert summary["loss_last"] == uninterrupted["loss"], (summary, uninterrupted["loss"])
    assert _status(run_dir, "train").get("restart", 0) >= 1
    if interrupt[0] == "scancel":  # our own requeue, recorded
        attempts = json.loads((run_dir / "stages" / "train" / "requeue.json").read_text())["attempts"]
        assert attempts[0]["outcome"] == "preempted" and attempts[0]["requeued"]


DP = ("parallel=cpu_dp2", "stages=[data,train]", *TINY)


@pytest.fixture(scope="module")
def local_dp2(tmp_path_factory) -> dict[int, str]:
    """The same data-parallel config run locally on 2 processes: its losses by step."""
    tmp = tmp_path_factory.mktemp("local-dp2")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRAINIUM_LAUNCHER_CACHE": str(tmp / "cache")}
    env.pop("SLURM_CONF", None)
    proc = subprocess.run(
        [sys.executable, "-m", "launcher", f"run_dir={tmp / 'run'}", *DP],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    losses = _losses(tmp / "run" / "stages" / "train" / "train.log")
    assert len(losses) == 12
    return losses


def _two_node(cluster, tmp_path, cache) -> Path:
    run_dir = tmp_path / "two-node"
    args = slurm_args(tmp_path, "cluster.nodes=2", f"run_dir={run_dir}", f"cluster.cache_dir={cache}", *DP)
    proc = launcher(cluster, args, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir


def test_two_node_data_parallel_matches_local(slurm_cluster, tmp_path, cache, local_dp2):
    """cluster.nodes=2 parallel=cpu_dp2: one torchrun per node, rendezvous from the allocation; the same losses
    as the same config run locally on 2 processes."""
    run_dir = _two_node(slurm_cluster, tmp_path, cache)
    _wait(lambda: _gone(slurm_cluster, [_job(run_dir, "train")]), "the two-node job")
    assert _status(run_dir, "train").get("state") == "completed", _status(run_dir, "train")
    assert _losses(_log(run_dir, "train")) == local_dp2
    log = _log(run_dir, "train").read_text()
    assert "--nnodes=2" in log and "--node_rank=0" in log and "--master_addr=127.0.0.1" in log
    node1 = _log(run_dir, "train").with_name(_log(run_dir, "train").name.replace("_0_log", "_1_log"))
    assert "--node_rank=1" in node1.read_text()


def _job_pids_on(node: str, job: str) -> list[int]:
    """The job's processes on one node: its tasks (by their Slurm environment) and the slurmstepd above them."""
    pids: set[int] = set()
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            vars_ = set(env.read_bytes().split(b"\0"))
            stat = (env.parent / "stat").read_text()
        except OSError:
            continue
        if f"SLURMD_NODENAME={node}".encode() in vars_ and f"SLURM_JOB_ID={job}".encode() in vars_:
            pids.add(int(env.parent.name))
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            with contextlib.suppress(OSError):
                if "slurmstepd" in Path(f"/proc/{ppid}/cmdline").read_text():
                    pids.add(ppid)
    return sorted(pids)


def test_node_lost_mid_training_requeues_and_resumes(slurm_cluster, tmp_path, cache, local_dp2):
    """Kill n2's slurmd and the job's processes on it (a node that dies), start it again (a replaced node): Slurm
    requeues the job, which resumes from its last checkpoint and ends with the same losses."""
    import signal

    from tests.helpers.slurm_cluster import which

    run_dir = _two_node(slurm_cluster, tmp_path, cache)
    job = _job(run_dir, "train")
    _wait(lambda: (run_dir / "checkpoints" / "step_4" / "COMPLETE").exists(), "the first checkpoint")
    slurmd = dict(slurm_cluster._procs)["slurmd-n2"]
    doomed = [slurmd.pid, *_job_pids_on("n2", job)]
    assert len(doomed) >= 3, doomed  # slurmd, slurmstepd, the task (and its torchrun and worker)
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    slurmd.wait(10)
    down = lambda: "down" in slurm_cluster.run(["sinfo", "-h", "-n", "n2", "-o", "%t"]).stdout  # noqa: E731
    _wait(down, "n2 to be marked down", timeout=120)
    slurm_cluster._spawn("slurmd-n2", [which("slurmd"), "-D", "-N", "n2"])
    _wait(lambda: _status(run_dir, "train").get("state") == "completed", "training to complete after the requeue")
    _wait(lambda: _gone(slurm_cluster, [job]), "the job to end")
    assert int(slurm_cluster.job(job).get("Restarts", "0")) >= 1 or _status(run_dir, "train").get("restart", 0) >= 1
    log = _log(run_dir, "train").read_text(errors="replace")
    resumed = [int(k) for k in re.findall(r"resumed from \S*step_(\d+)", log)]
    assert resumed and resumed[-1] >= 4, log[-3000:]
    losses = _losses(_log(run_dir, "train"))
    assert losses[12] == local_dp2[12] and all(losses[k] == local_dp2[k] for k in losses), (losses, local_dp2)


def test_failing_data_stage_never_trains_and_status_says_why_without_accounting(slurm_cluster_noacct, tmp_path):
    bad = tmp_path / "corpus.txt"
    bad.write_bytes(b"caf\xe9 \xff\xfe not utf-8\n" * 500)
    run_dir = tmp_path / "run"
    # One document, none held out: the plan's split-size check passes; only the data job decodes the bytes.
    args = slurm_args(tmp_path, f"run_dir={run_dir}", "data=files", f"data.paths=[{bad}]", "data.val_fraction=0", *TINY)
    proc = launcher(slurm_cluster_noacct, args, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ids = [_job(run_dir, s) for s in ("data", "train", "export")]
    _wait(lambda: _gone(slurm_cluster_noacct, ids), "the chain to end", timeout=300)
    assert _status(run_dir, "data")["state"] == "failed"
    assert "started" not in _status(run_dir, "train")  # training never ran
    r = launcher(slurm_cluster_noacct, ["status", str(run_dir)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Slurm state from squeue/scontrol" in r.stdout
    assert re.search(r"data\s+failed", r.stdout) and "UTF-8" in r.stdout, r.stdout
    assert re.search(r"train\s+cancelled", r.stdout), r.stdout
    assert "never ran: the stage it depends on (data) failed" in r.stdout


def test_values_with_shell_characters_reach_the_job_intact(slurm_cluster, tmp_path, cache):
    odd = tmp_path / "a b; $(touch PWNED) 'q' `touch PWNED2`"
    run_dir = odd / "run"
    args = slurm_args(tmp_path, f'run_dir="{run_dir}"', f"cluster.cache_dir={cache}", "stages=[data]", "force=true")
    args += [f"cluster.setup=[\"echo setup ran > '{tmp_path}/setup.txt'\"]"]
    proc = launcher(slurm_cluster, args, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _wait(lambda: _gone(slurm_cluster, [_job(run_dir, "data")]), "the data job", timeout=300)
    assert _status(run_dir, "data")["state"] == "completed", _status(run_dir, "data")
    assert f"'launcher.job', {str(run_dir)!r}, 'data'" in _log(run_dir, "data").read_text()  # argv, intact
    assert (tmp_path / "setup.txt").read_text() == "setup ran\n"
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))


def test_always_failing_training_stops_after_its_retries(slurm_cluster, tmp_path):
    """The dataset's data files vanish under a valid marker (a crash, not bad input): the job requeues itself once,
    fails again at the same step, and stops there; status says why."""
    args = slurm_args(tmp_path, f"run_dir={tmp_path / 'run'}", *TINY, "cluster.max_requeues=3")
    run_dir = tmp_path / "run"
    proc = launcher(slurm_cluster, [*args, "stages=[data]"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _wait(lambda: _gone(slurm_cluster, [_job(run_dir, "data")]), "the data job", timeout=300)
    dataset = Path(json.loads((run_dir / "run.json").read_text())["stages"][0]["output"])  # the data stage's
    arrows = list(dataset.rglob("*.arrow"))
    assert arrows, dataset
    for f in arrows:
        f.unlink()
    proc = launcher(slurm_cluster, [*args, "stages=[train]"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = _job(run_dir, "train")
    _wait(lambda: _gone(slurm_cluster, [job]), "the training job to give up", timeout=600)
    attempts = json.loads((run_dir / "stages" / "train" / "requeue.json").read_text())["attempts"]
    assert [a["requeued"] for a in attempts] == [True, False], attempts
    assert "same step" in attempts[-1]["why"]
    r = launcher(slurm_cluster, ["status", str(run_dir)], tmp_path)
    assert re.search(r"train\s+failed\s+" + job, r.stdout) and "same step" in r.stdout, r.stdout


def test_cancel_checkpoints_training_first_and_says_what_it_cancelled(slurm_cluster, tmp_path, cache):
    run_dir = tmp_path / "run"
    args = slurm_args(tmp_path, f"run_dir={run_dir}", f"cluster.cache_dir={cache}", *TINY)
    proc = launcher(slurm_cluster, args, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    train, export = _job(run_dir, "train"), _job(run_dir, "export")
    _wait(lambda: (run_dir / "checkpoints" / "step_4" / "COMPLETE").exists(), "the first checkpoint")
    r = launcher(slurm_cluster, ["cancel", str(run_dir)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"export (job {export}, was pending)" in r.stdout and f"train (job {train}, was running)" in r.stdout
    _wait(lambda: _gone(slurm_cluster, [train, export]), "the run's jobs to end", timeout=120)
    state = _status(run_dir, "train")
    assert state["state"] == "stopped" and "stopped by SIGTERM" in _log(run_dir, "train").read_text(), state
    assert "started" not in _status(run_dir, "export")
    r = launcher(slurm_cluster, ["status", str(run_dir)], tmp_path)
    assert re.search(r"export\s+cancelled", r.stdout) and re.search(r"train\s+stopped", r.stdout), r.stdout
