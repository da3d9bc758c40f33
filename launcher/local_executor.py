"""Runs a plan's stages on this machine, one after another, through the same job wrapper Slurm jobs run.

Each stage is a child process in its own session (so `cancel` can signal the whole group) whose output goes
both to the terminal and to stages/<stage>/<stage>.log; a stage that fails stops the run, like afterok.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from launcher.job import status_path, write_status
from launcher.plan import Plan, StagePlan


def _tee(proc: subprocess.Popen, log: Path) -> None:
    # Chunks, not lines: progress bars redraw with carriage returns and must reach the terminal as they come.
    with log.open("ab") as f:
        assert proc.stdout is not None
        while chunk := os.read(proc.stdout.fileno(), 65536):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            f.write(chunk)


class LocalExecutor:
    def submit(self, plan: Plan) -> int:
        for sp in plan.stages:
            if not sp.run:
                print(f"[{sp.stage.value}] skipped: {sp.reason.removeprefix('skipped: ')}", flush=True)
                write_status(plan.run_dir, sp.stage, state="skipped", reason=sp.reason)
                continue
            rc = self._run(plan, sp)
            if rc != 0:
                return rc
        return 0

    def _run(self, plan: Plan, sp: StagePlan) -> int:
        folder = plan.run_dir / "stages" / sp.stage.value
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / f"{sp.stage.value}.log"
        env = {**os.environ, **plan.cfg.cluster.env, **sp.env, "PYTHONUNBUFFERED": "1"}
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        if sp.processes_per_node > 1:
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // sp.processes_per_node)))
        print(f"[{sp.stage.value}] running: {' '.join(sp.command)}  (log: {log})", flush=True)
        start = time.monotonic()
        proc = subprocess.Popen(
            sp.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        write_status(plan.run_dir, sp.stage, executor="local", pgid=proc.pid, log=str(log))
        try:
            _tee(proc, log)
            rc = proc.wait()
        except KeyboardInterrupt:
            # Forward Ctrl-C to the stage's process group as SIGTERM: the training loop checkpoints and exits.
            os.killpg(proc.pid, 15)
            rc = proc.wait()
        took = time.monotonic() - start
        if rc != 0:
            state = _state(plan.run_dir, sp)
            print(f"[{sp.stage.value}] {state} (exit code {rc}) after {took:.1f} s; log: {log}", flush=True)
        else:
            print(f"[{sp.stage.value}] done in {took:.1f} s", flush=True)
        return rc


def _state(run_dir: Path, sp: StagePlan) -> str:
    import json

    try:
        return json.loads(status_path(run_dir, sp.stage).read_text()).get("state", "failed")
    except (OSError, ValueError):
        return "failed"
