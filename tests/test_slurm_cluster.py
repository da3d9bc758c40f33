"""The local test cluster itself, with real sbatch/srun/scancel/scontrol/sacct (tests/helpers/slurm_cluster.py).

These pin the Slurm behaviour the launcher relies on: one task per node on two nodes, where a rendezvous address
comes from (the node names do not resolve), real accounting, status without accounting, afterok on a failed job,
requeue of a running job, and where ``scancel --signal=USR2`` is delivered.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.helpers.processes import wait_for
from tests.helpers.slurm_cluster import SlurmCluster

# Idempotent once conftest.py loads the plugin too.
pytest_plugins = ["tests.helpers.slurm_fixtures"]
pytestmark = pytest.mark.slurm


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _sacct(cluster: SlurmCluster, job_id: str, *extra: str) -> dict[str, list[str]]:
    r = cluster.run(["sacct", "-j", job_id, "-n", "-P", "-o", "JobID,JobName,State,ExitCode,NodeList", *extra])
    assert r.returncode == 0, r.stderr
    return {line.split("|")[0]: line.split("|")[1:] for line in r.stdout.splitlines() if line}


def test_two_idle_nodes_started_fast(slurm_cluster, slurm_cluster_noacct):
    for c in (slurm_cluster, slurm_cluster_noacct):
        r = c.run(["sinfo", "-h", "-N", "-p", c.partition, "-o", "%N %t %c"])
        assert sorted(r.stdout.split("\n")[:2]) == [f"n1 idle {c.cpus_per_node}", f"n2 idle {c.cpus_per_node}"]
        assert c.node_names == ["n1", "n2"]
        print(f"{c.cluster_name}: ready in {c.startup_s:.2f} s")
        assert c.startup_s < 30, c.startup_s  # measured here: ~5 s with accounting, ~1.3 s without
    r = slurm_cluster.run(["sacctmgr", "-n", "-P", "list", "cluster", "format=cluster"])
    assert slurm_cluster.cluster_name in r.stdout.split()


def test_two_node_batch_job_one_task_per_node_and_sacct(slurm_cluster, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/bash\n"
        'first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)\n'
        'echo "batch first=$first addr=$(scontrol show node "$first" | grep -o "NodeAddr=[^ ]*")"\n'
        "srun -l bash -c 'echo task $SLURM_PROCID $SLURM_NODEID $SLURMD_NODENAME "
        "$SLURM_LAUNCH_NODE_IPADDR $SLURM_SRUN_COMM_HOST'\n"
    )
    out = tmp_path / "out.txt"
    job = slurm_cluster.sbatch("-N2", "--ntasks-per-node=1", "-o", str(out), str(script))
    slurm_cluster.wait_job(job, {"COMPLETED", "FAILED", "CANCELLED"})
    text = out.read_text()
    assert "batch first=n1 addr=NodeAddr=127.0.0.1" in text, text
    tasks = sorted(line.split(": ", 1)[1] for line in text.splitlines() if ": task " in line)
    # one task per node; the address of the node that ran srun (the first node) is in every task's environment
    assert tasks == ["task 0 0 n1 127.0.0.1 127.0.0.1", "task 1 1 n2 127.0.0.1 127.0.0.1"], text

    # real accounting: the job record settles a moment after the end (first JobName=allocation, NodeList=n1)
    def completed():
        rows = _sacct(slurm_cluster, job)
        ok = rows.get(job, [None, None, None, None])[1:] == ["COMPLETED", "0:0", "n[1-2]"]
        return rows if ok and rows.get(f"{job}.0", [None, None])[1] == "COMPLETED" else None

    rows = wait_for(completed, "sacct COMPLETED", timeout=30)
    assert rows[job][0] == "job.sh" and rows[f"{job}.batch"][1:3] == ["COMPLETED", "0:0"]


def test_without_accounting_squeue_and_scontrol_work_sacct_fails(slurm_cluster_noacct, tmp_path):
    c = slurm_cluster_noacct
    job = c.sbatch("-N2", "-o", str(tmp_path / "o.txt"), "--wrap", "srun sleep 3")
    c.wait_job(job, {"RUNNING"})
    r = c.run(["squeue", "-h", "-j", job, "-o", "%i %T %D %N"])
    assert r.stdout.split() == [job, "RUNNING", "2", "n[1-2]"], r.stdout
    info = c.wait_job(job, {"COMPLETED", "FAILED"}, timeout=30)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0" and info["NodeList"] == "n[1-2]"
    # ended jobs stay in scontrol for MinJobAge (300 s) and leave squeue
    assert c.run(["squeue", "-h", "-j", job]).stdout.strip() == ""
    r = c.run(["sacct", "-j", job])
    assert r.returncode != 0
    assert "accounting storage is disabled" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr


def test_afterok_on_failed_job_never_runs(slurm_cluster, tmp_path):
    c = slurm_cluster
    parent = c.sbatch("-o", "/dev/null", "--wrap", "exit 3")
    # DependencyParameters=kill_invalid_depend (cluster default): cancelled
    killed = c.sbatch("-o", str(tmp_path / "killed.txt"), f"--dependency=afterok:{parent}", "--wrap", "echo ran")
    # per job opt-out: pending forever
    kept = c.sbatch(
        "-o", str(tmp_path / "kept.txt"), f"--dependency=afterok:{parent}", "--kill-on-invalid-dep=no",
        "--wrap", "echo ran",
    )  # fmt: skip
    assert c.wait_job(parent, {"FAILED"})["ExitCode"] == "3:0"
    info = c.wait_job(killed, {"CANCELLED"}, timeout=30)
    assert info["Reason"] == "DependencyNeverSatisfied" and info["Dependency"] == f"afterok:{parent}(failed)"
    info = wait_for(lambda: (i := c.job(kept)).get("Reason") == "DependencyNeverSatisfied" and i, "reason")
    assert info["JobState"] == "PENDING"
    assert wait_for(lambda: _sacct(c, killed).get(killed, [None, None])[1] == "CANCELLED", "sacct CANCELLED")
    assert _sacct(c, parent)[parent][1:3] == ["FAILED", "3:0"]
    c.run(["scancel", kept])
    c.wait_job(kept, {"CANCELLED"})
    assert not (tmp_path / "killed.txt").exists() and not (tmp_path / "kept.txt").exists()


def test_scontrol_requeue_of_running_job(slurm_cluster, tmp_path):
    c = slurm_cluster
    out = tmp_path / "out.txt"
    job = c.sbatch(
        "-N2", "--open-mode=append", "-o", str(out),
        "--wrap", 'echo "start restart=${SLURM_RESTART_COUNT:-0}"; srun sleep 60',
    )  # fmt: skip
    wait_for(lambda: "restart=0" in _read(out), "first start")
    t0 = time.monotonic()
    r = c.run(["scontrol", "requeue", job])
    assert r.returncode == 0, r.stderr
    wait_for(lambda: "restart=1" in _read(out), "the rerun", timeout=40)
    requeue_s = time.monotonic() - t0
    info = c.job(job)
    assert info["JobState"] == "RUNNING" and info["Restarts"] == "1", info
    assert "DUE TO JOB REQUEUE" in out.read_text()
    c.run(["scancel", job])
    c.wait_job(job, {"CANCELLED"})

    # sacct shows the last run; --duplicates also the requeued one
    def both_runs():
        r = c.run(["sacct", "-j", job, "--duplicates", "-n", "-P", "-X", "-o", "JobID,State"])
        rows = r.stdout.splitlines()
        return rows if rows == [f"{job}|REQUEUED", f"{job}|CANCELLED by 0"] else None

    assert wait_for(both_runs, "sacct --duplicates: REQUEUED, then CANCELLED")
    print(f"requeue -> rerun in {requeue_s:.1f} s (cred_expire=5)")


SIGNAL_SCRIPT = r"""#!/bin/bash
trap 'echo "batch USR2"' USR2
srun -l bash -c 'trap "echo task USR2; exit 0" USR2; echo task ready; for i in $(seq 40); do sleep 0.1; done' &
echo batch ready
wait; wait
"""


@pytest.mark.parametrize(
    ("flag", "batch_gets", "tasks_get"),
    [("", False, True), ("--batch", True, False), ("--full", True, True)],
    ids=["default", "batch", "full"],
)
def test_scancel_signal_usr2_delivery(slurm_cluster, tmp_path, flag, batch_gets, tasks_get):
    c = slurm_cluster
    script = tmp_path / "sig.sh"
    script.write_text(SIGNAL_SCRIPT)
    out = tmp_path / "out.txt"
    job = c.sbatch("-N2", "--ntasks-per-node=1", "-o", str(out), str(script))
    wait_for(lambda: _read(out).count("ready") == 3, "batch and both tasks ready")
    time.sleep(0.3)  # srun sets up its own signal forwarding right after launch
    r = c.run(["scancel", *([flag] if flag else []), "--signal=USR2", job])
    assert r.returncode == 0, r.stderr
    info = c.wait_job(job, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=30)
    text = out.read_text()
    assert ("batch USR2" in text) is batch_gets, text
    assert text.count("task USR2") == (2 if tasks_get else 0), text
    assert info["JobState"] == "COMPLETED", (info, text)  # the signal, trapped, does not end the job


def test_stop_ends_daemons_and_job_processes(tmp_path):
    c = SlurmCluster(tmp_path / "c", accounting=False)
    try:
        c.start()
    except Exception as e:
        if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}:
            raise
        pytest.skip(f"local Slurm cluster unavailable: {e}")
    try:
        job = c.sbatch("-N2", "-o", "/dev/null", "--wrap", "srun sleep 300")
        c.wait_job(job, {"RUNNING"})
        wait_for(lambda: len(_cluster_pids(c, comm="sleep")) == 2, "a sleep on each node")
        daemons = [p.pid for _, p in c._procs]
    finally:
        c.stop()
    assert [pid for pid in daemons if not _gone(pid)] == []
    assert _cluster_pids(c) == []  # no slurmstepd, no job process left


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _cluster_pids(c: SlurmCluster, comm: str | None = None) -> list[int]:
    """Live processes that carry this cluster's SLURM_CONF (its daemons, slurmstepd, job processes)."""
    marker = f"SLURM_CONF={c.conf}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if comm is not None and (entry / "comm").read_text().strip() != comm:
                continue
        except OSError:
            continue
        if not _gone(int(entry.name)):
            found.append(int(entry.name))
    return found
