"""Submission to the real local Slurm (tests/helpers/slurm_cluster.py): scripts, preflight, requeue rules.

Fast tests: jobs are held (`cluster.sbatch_options=[--hold]`) or rejected before queueing, so nothing trains here;
tests/test_slurm_jobs.py runs stages for real.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slurm
FOUR_NODES = ("cluster.nodes=4", "trainer.global_batch_size=32", "trainer.micro_batch_size=8")


def slurm_args(tmp: Path, *extra: str) -> list[str]:
    return [
        "cluster=slurm",
        "cluster.accelerator=cpu",
        "cluster.partition=debug",
        f"cluster.runs_dir={tmp / 'runs'}",
        f"cluster.cache_dir={tmp / 'cache'}",
        *extra,
    ]


def launcher(cluster, args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = cluster.subprocess_env({"PYTHONPATH": str(ROOT)})
    return subprocess.run(
        [sys.executable, "-m", "launcher", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def squeue_names(cluster) -> dict[str, str]:
    r = cluster.run(["squeue", "-h", "-o", "%i %j %T"])
    return {line.split()[0]: line.split()[1] for line in r.stdout.splitlines() if line.strip()}


def test_submitted_script_is_byte_for_byte_the_rendered_one(slurm_cluster, tmp_path):
    """What Slurm stored for each job is the script the executor rendered (and the plan printed, ids aside); the
    command returns while the jobs are still queued."""
    from launcher.compose import compose
    from launcher.plan import make_plan
    from launcher.slurm_executor import render

    run_dir = tmp_path / "runs" / "held"
    args = slurm_args(tmp_path, f"run_dir={run_dir}", "cluster.sbatch_options=[--hold]")
    proc = launcher(slurm_cluster, args, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    ids = {}
    try:
        for stage in ("data", "train", "export"):
            job = json.loads((run_dir / "stages" / stage / "job.json").read_text())
            ids[stage] = job["job_id"]
            assert f"{stage:<8} job {job['job_id']}" in proc.stdout
        queued = squeue_names(slurm_cluster)
        assert {queued[i] for i in ids.values()} == {"held-data", "held-train", "held-export"}
        for stage, jid in ids.items():
            r = slurm_cluster.run(["scontrol", "write", "batch_script", jid, "-"])
            assert r.returncode == 0, r.stderr
            saved = (run_dir / "stages" / stage / f"{stage}.sbatch").read_text()
            submitted = (run_dir / "stages" / stage / "submitit" / jid / f"{jid}_submission.sh").read_text()
            assert r.stdout == saved == submitted
        train = (run_dir / "stages" / "train" / "train.sbatch").read_text()
        assert f"#SBATCH --dependency=afterok:{ids['data']}\n" in train and "$" not in train.split("# setup")[0]
        # The dry-run path renders the same text; with the real ids in place it is identical.
        from core.stages import Stage

        plan = make_plan(compose(args), run_dir)
        sp = next(s for s in plan.stages if s.stage.value == "train")
        assert render(plan, sp, {Stage.data: ids["data"]}) == train
        assert "afterok:<data>" in render(plan, sp)
    finally:
        slurm_cluster.run(["scancel", *ids.values()])


def test_private_renderer_contract():
    """The one private submitit call (script_text) still exists with the signature we use: fails loudly on drift."""
    import inspect

    import submitit
    from submitit.slurm import slurm

    assert submitit.__version__.startswith("1.5."), submitit.__version__
    assert list(inspect.signature(slurm.SlurmExecutor._make_submission_file_text).parameters) == [
        "self",
        "command",
        "uid",
    ]
    assert isinstance(slurm.SlurmExecutor._submitit_command_str, property)


def test_preflight_lists_every_problem_and_queues_nothing(slurm_cluster, tmp_path):
    locked = tmp_path / "a-file"  # a run folder under a file can never be created (root ignores permissions)
    locked.write_text("")
    before = squeue_names(slurm_cluster)
    args = slurm_args(
        tmp_path,
        "cluster.partition=nosuch",
        f"run_dir={tmp_path / 'ok'}",
        "cluster.python=/nonexistent/venv",
    )
    proc = launcher(slurm_cluster, args, tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr
    assert "cluster.partition='nosuch': this cluster has no such partition (sinfo lists: debug)" in err
    assert "cluster.python='/nonexistent/venv'" in err
    assert squeue_names(slurm_cluster) == before and not (tmp_path / "ok").exists()
    # nodes and time limits against the partition (MaxTime set for the test, then restored)
    slurm_cluster.run(["scontrol", "update", "PartitionName=debug", "MaxTime=30"], check=True)
    try:
        proc = launcher(
            slurm_cluster,
            slurm_args(tmp_path, *FOUR_NODES, f"run_dir={locked / 'run'}"),
            tmp_path,
        )
    finally:
        slurm_cluster.run(["scontrol", "update", "PartitionName=debug", "MaxTime=INFINITE"], check=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr
    assert "cluster.nodes=4: partition 'debug' can never give 4 nodes (it has 2" in err
    assert "cluster.resources.train.time_min=1440: partition 'debug' allows at most 30 minutes" in err
    assert "cluster.resources.data.time_min=240" in err
    assert f"run_dir: {locked / 'run'} cannot be created or written" in err
    assert squeue_names(slurm_cluster) == before


def test_preflight_without_sbatch(tmp_path):
    env = {"PATH": "/nonexistent", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "launcher", *slurm_args(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "sbatch is not on PATH" in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists()


def test_requeue_rules():
    from launcher.slurm_job import decide, rendezvous_port

    # a failing non-train stage: retried until max_requeues retries in a row made no progress
    hist: list[dict] = []
    outcomes = []
    for _ in range(5):
        again, why, streak = decide(hist, "failed", -1, 2, "data")
        hist.append({"outcome": "failed", "step": -1, "streak": streak})
        outcomes.append(again)
        if not again:
            break
    assert outcomes == [True, True, False] and "cluster.max_requeues=2" in why
    # training: preemptions that make progress requeue forever; the same step failing twice stops at once
    hist = []
    for step in (5, 10, 15):
        again, _, streak = decide(hist, "preempted", step, 1, "train")
        assert again and streak == 0
        hist.append({"outcome": "preempted", "step": step, "streak": streak})
    assert decide(hist, "failed", 20, 1, "train")[0]
    hist.append({"outcome": "failed", "step": 20, "streak": 0})
    again, why, _ = decide(hist, "failed", 20, 5, "train")
    assert not again and "same step" in why
    assert rendezvous_port("12345") == rendezvous_port("12345") != rendezvous_port("12346")
    assert 20000 <= rendezvous_port("99999999") < 40000


def test_sweep_shares_one_data_job_and_cancel_says_what_it_cancelled(slurm_cluster, tmp_path):
    args = ["-m", "optim.lr=1e-3,3e-3", *slurm_args(tmp_path, "cluster.sbatch_options=[--hold]")]
    proc = launcher(slurm_cluster, args, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    points = sorted(p.parent for p in (tmp_path / "runs").rglob("run.json"))
    assert [p.name for p in points] == ["optim.lr=0.001", "optim.lr=0.003"]
    jobs = {p.name: {s: json.loads((p / "stages" / s / "job.json").read_text())["job_id"] for s in ("data", "train")}
            for p in points}  # fmt: skip
    data_ids = {j["data"] for j in jobs.values()}
    train_ids = [j["train"] for j in jobs.values()]
    try:
        queued = squeue_names(slurm_cluster)
        names = sorted(n for i, n in queued.items() if i in {*data_ids, *train_ids})
        assert len(data_ids) == 1 and len(set(train_ids)) == 2 and len(names) == 3, (jobs, queued)
        for tid in train_ids:
            dep = slurm_cluster.job(tid)["Dependency"]
            assert dep.startswith(f"afterok:{next(iter(data_ids))}"), dep
        r = launcher(slurm_cluster, ["cancel", str(points[0])], tmp_path)
        assert r.returncode == 0, r.stderr
        assert f"train (job {jobs[points[0].name]['train']}, was pending)" in r.stdout, r.stdout
        left = squeue_names(slurm_cluster)
        assert jobs[points[0].name]["train"] not in left and jobs[points[1].name]["train"] in left
        r = launcher(slurm_cluster, ["status", str(points[0])], tmp_path)
        assert re.search(r"train\s+cancelled", r.stdout), r.stdout
    finally:
        slurm_cluster.run(["scancel", *squeue_names(slurm_cluster)])
