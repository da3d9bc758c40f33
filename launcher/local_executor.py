"""Runs a plan's stages on this machine, one after another, through the same job wrapper Slurm jobs run.

Each stage is a child process in its own session (so `cancel` can signal the whole group) whose output goes
both to the terminal and to stages/<stage>/<stage>.log; a stage that fails stops the run, like afterok.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.stages import Stage
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


@dataclass
class LocalRun:
    """The handle of a local run: the whole chain, run in order by `wait()` (this machine runs one at a time)."""

    plan: Plan
    stage: Stage
    job_id: str
    log: Path

    def wait(self) -> int:
        return LocalExecutor().run(self.plan)


class LocalExecutor:
    def submit(self, plan: Plan) -> list[LocalRun]:
        first = plan.stages[0].stage if plan.stages else Stage.train
        return [LocalRun(plan, first, "local", plan.run_dir / "stages")]

    def run(self, plan: Plan) -> int:
        for sp in plan.stages:
            if not sp.run:
                print(f"[{sp.stage.value}] skipped: {sp.reason.removeprefix('skipped: ')}", flush=True)
                write_status(plan.run_dir, sp.stage, state="skipped", reason=sp.reason)
                continue
            rc = self._run(plan, sp)
            if rc != 0:
                return rc
            if _state(plan.run_dir, sp) == "stopped":
                # Training stopped before max_steps (steps_this_run, or a signal): later stages would read an
                # unfinished model. Running the same command again continues from the checkpoint.
                print(f"[{sp.stage.value}] stopped before the end; run the same command again to continue.")
                return 0
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
        # A SIGTERM to the launcher (or Ctrl-C) is passed on to the stage's process group as SIGTERM, so the
        # training loop checkpoints and exits instead of being orphaned; we keep relaying its output meanwhile.
        previous = signal.signal(signal.SIGTERM, lambda *_: _forward(proc))
        try:
            try:
                _tee(proc, log)
            except KeyboardInterrupt:
                _forward(proc)
                _tee(proc, log)
            rc = proc.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
        took = time.monotonic() - start
        if rc != 0:
            state = _state(plan.run_dir, sp)
            if state == "running":  # died before it could record an outcome (killed, crashed interpreter)
                state = "failed"
                write_status(plan.run_dir, sp.stage, state=state, exit_code=rc)
            print(f"[{sp.stage.value}] {state} (exit code {rc}) after {took:.1f} s; log: {log}", flush=True)
        else:
            print(f"[{sp.stage.value}] done in {took:.1f} s", flush=True)
        return rc


def _forward(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)


def _state(run_dir: Path, sp: StagePlan) -> str:
    import json

    try:
        return json.loads(status_path(run_dir, sp.stage).read_text()).get("state", "failed")
    except (OSError, ValueError):
        return "failed"
