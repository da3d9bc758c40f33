"""What a stage's Slurm job runs on each node: the callable that submitit pickles (`StageTask`).

One Slurm task per node. The task works out its node rank and the rendezvous address and port from the job's
environment (SLURM_NODEID, SLURM_LAUNCH_NODE_IPADDR or node 0's NodeAddr, a port derived from the job id), starts
`python -m launcher.job RUN STAGE` (under torchrun when the stage has several processes) and waits for it. The nxd
stages on trn1 run NxD's per-node script instead (launcher/nxd_env.py), whose port is the configured, reserved one.

Requeue is ours, not submitit's checkpoint() path: the workers must finish their checkpoint before anyone
decides, failures need the same cap as timeouts, and an external `scontrol requeue`, a lost node or HyperPod's
auto-resume restart the job without calling any handler, so every (re)start resumes from the last complete
checkpoint on disk. On SIGUSR2 (`--signal=USR2@cluster.signal_delay_s` before the time limit, or
`scancel --signal=USR2` for a preemption) the training workers checkpoint and exit 75; node 0's task then reads
the stage's status.json (torchrun itself exits 1 when a worker stopped on a signal) and requeues the job with
`scontrol requeue`. A failed stage (not bad input, exit 2) is requeued the same way, up to
`cluster.max_requeues` times in a row without progress; a training failure at the same step as the previous
failure stops at once. Every decision is appended to stages/<stage>/requeue.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.marker import now
from core.publish import write_json

EXIT_USER_ERROR = 2
EXIT_REQUEUE = 75  # train/signals.py: stopped on a signal after its checkpoint
CANCEL_MARKER = "cancel_requested"
PORT_BASE, PORT_SPAN = 20000, 20000


def rendezvous_port(job_id: str) -> int:
    """A port per job, so two jobs that share a node do not collide (their ids differ)."""
    digits = "".join(ch for ch in job_id.split("_")[0] if ch.isdigit()) or "0"
    return PORT_BASE + int(digits) % PORT_SPAN


def rendezvous_addr(env: dict[str, str]) -> str:
    """Node 0's address: srun sets SLURM_LAUNCH_NODE_IPADDR (the batch host is node 0); else NodeAddr of the first
    host of the allocation (node names need not resolve)."""
    if env.get("SLURM_LAUNCH_NODE_IPADDR"):
        return env["SLURM_LAUNCH_NODE_IPADDR"]
    hosts = subprocess.run(
        ["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]], capture_output=True, text=True, check=True
    ).stdout.split()
    out = subprocess.run(["scontrol", "-o", "show", "node", hosts[0]], capture_output=True, text=True).stdout
    for tok in out.split():
        if tok.startswith("NodeAddr="):
            return tok.split("=", 1)[1]
    return hosts[0]


def node_command(python: str, run_dir: Path, stage: str, nodes: int, procs: int, env: dict[str, str]) -> list[str]:
    """This node's command line, from the job environment (no shell anywhere: values reach the job intact)."""
    job = [python, "-m", "launcher.job", str(run_dir), stage]
    if nodes * procs <= 1:
        return job
    return [
        python,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={procs}",
        f"--nnodes={nodes}",
        f"--node_rank={int(env.get('SLURM_NODEID', '0'))}",
        f"--master_addr={rendezvous_addr(env)}",
        f"--master_port={rendezvous_port(env.get('SLURM_JOB_ID', '0'))}",
        "--max_restarts=0",
        *job[1:],
    ]


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def latest_step(run_dir: Path) -> int:
    from checkpoint import steps

    found = steps.complete_steps(run_dir / "checkpoints")
    return found[-1][0] if found else -1


def decide(history: list[dict], outcome: str, step: int, max_requeues: int, stage: str) -> tuple[bool, str, int]:
    """(requeue?, why, streak) after an attempt ended with `outcome` (preempted|failed) at checkpoint `step`.

    streak = attempts in a row that made no progress (no newer checkpoint than the attempt before; stages other
    than train never show progress, so for them it counts every retry)."""
    prev = history[-1] if history else None
    progressed = prev is None or step > prev["step"]
    streak = 0 if progressed or prev is None else prev.get("streak", 0) + 1
    if outcome == "failed" and stage == "train" and prev and prev["outcome"] == "failed" and not progressed:
        return False, f"failed again at the same step (checkpoint step {step}): no progress, not requeued", streak
    if streak >= max_requeues:
        return False, f"{streak + 1} attempts in a row without progress (cluster.max_requeues={max_requeues})", streak
    return True, f"{outcome}; requeued (attempt {len(history) + 2})", streak


@dataclass
class StageTask:
    """The submitted callable (one per stage job). Plain data, so cloudpickle stores it by reference."""

    run_dir: str
    stage: str
    nodes: int
    procs: int
    max_requeues: int
    env: dict[str, str] = field(default_factory=dict)
    threads: int = 0
    # nxd stages on trn1: the per-node bash NxD's scripts run (launcher/nxd_env.py:node_command: the example's
    # environment, the reserved port, torchrun under neuron_parallel_compile for compile). Empty: node_command.
    node_script: str = ""

    def __call__(self) -> dict:
        run_dir, folder = Path(self.run_dir), Path(self.run_dir) / "stages" / self.stage
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        if self.threads:
            env.setdefault("OMP_NUM_THREADS", str(self.threads))
        lead = int(env.get("SLURM_PROCID", "0")) == 0
        job_id, restart = env.get("SLURM_JOB_ID", ""), int(env.get("SLURM_RESTART_COUNT", "0") or 0)
        received: list[str] = []

        def _note(signum, frame):  # the workers got the same signal from Slurm; we only remember it
            received.append(signal.Signals(signum).name)

        for sig in (signal.SIGUSR2, signal.SIGTERM, signal.SIGCONT):
            signal.signal(sig, _note)
        if self.node_script:
            argv = ["bash", "-c", self.node_script]
        else:
            argv = node_command(sys.executable, run_dir, self.stage, self.nodes, self.procs, env)
        print(f"[{self.stage}] job {job_id} restart {restart} node {env.get('SLURM_NODEID', '0')}: {argv}", flush=True)
        # torchrun has no SIGUSR2 handler (it would die and orphan its workers): it ignores it, the workers
        # install their own handler (train/signals.py) over the inherited SIG_IGN.
        proc = subprocess.Popen(argv, env=env, preexec_fn=lambda: signal.signal(signal.SIGUSR2, signal.SIG_IGN))
        while proc.poll() is None:
            time.sleep(0.2)
        rc = proc.returncode
        if not lead:
            if rc != 0:
                raise RuntimeError(f"stage {self.stage} exited with {rc} on node {env.get('SLURM_NODEID')}")
            return {"rc": rc}
        status = _read(folder / "status.json")
        if rc == 0 and status.get("state") == "stopped":
            # trainer.steps_this_run ended this run before max_steps: what depends on training must not start.
            raise RuntimeError(f"stage {self.stage} stopped before the end (steps_this_run); submit again to continue")
        if rc == 0:
            return {"state": status.get("state", "completed"), "job_id": job_id}
        if "SIGTERM" in received and "SIGUSR2" not in received:
            # Slurm is ending this job (scancel, scontrol requeue, node failure, preemption): it decides.
            raise RuntimeError(f"stage {self.stage} stopped by SIGTERM (exit {rc}); Slurm requeues or ends the job")
        if status.get("exit_code") == EXIT_USER_ERROR or rc == EXIT_USER_ERROR:
            raise RuntimeError(f"stage {self.stage} failed on bad input: {status.get('error', '')}")
        if (folder / CANCEL_MARKER).exists():
            raise RuntimeError(f"stage {self.stage} stopped: cancel requested")
        stopped = status.get("state") == "stopped" and status.get("exit_code") == EXIT_REQUEUE
        outcome = "preempted" if stopped or "SIGUSR2" in received else "failed"
        log_path = folder / "requeue.json"
        history = _read(log_path).get("attempts", [])
        step = latest_step(run_dir) if self.stage == "train" else -1
        again, why, streak = decide(history, outcome, step, self.max_requeues, self.stage)
        history.append(
            {"job_id": job_id, "restart": restart, "outcome": outcome, "exit_code": rc, "step": step,
             "streak": streak, "requeued": again, "why": why, "at": now()}
        )  # fmt: skip
        write_json(log_path, {"attempts": history})
        print(f"[{self.stage}] {why}", flush=True)
        if not again:
            raise RuntimeError(f"stage {self.stage} {why}")
        subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)
        # The requeue ends this job step; wait for Slurm to stop us rather than report an outcome.
        with contextlib.suppress(Exception):
            time.sleep(120)
        return {"state": "requeued", "job_id": job_id}
