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

from core.marker import now
from core.stage_status import read_status, write_status
from core.stages import Stage
from launcher.plan import Plan, StagePlan


def _tee(proc: subprocess.Popen, log: Path) -> None:
    # Chunks, not lines: progress bars redraw with carriage returns and must reach the terminal as they come.
    with log.open("ab") as f:
        assert proc.stdout is not None
        while chunk := os.read(proc.stdout.fileno(), 65536):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            f.write(chunk)
            f.flush()  # `status` reads the log of a running stage (its current step)


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
    def __init__(self) -> None:
        # The signal the launcher itself received (Ctrl-C, SIGTERM): the run stops after the current stage.
        self.signal: int | None = None

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
            if self.signal is not None:
                return 128 + self.signal
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

        # A SIGTERM to the launcher (or Ctrl-C) is passed on to the stage's process group as the same signal, so the
        # training loop checkpoints and other stages remove their temporary output, instead of being orphaned;
        # we keep relaying its output meanwhile, and the run stops after this stage.
        def stop(signum: int, frame: object = None) -> None:
            self.signal = self.signal or signum
            _forward(proc, signum)

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            try:
                _tee(proc, log)
            except KeyboardInterrupt:
                # Ctrl-C reaches only the launcher (the stage runs in its own session): pass it on as what it
                # is, so the stage reports SIGINT, not a SIGTERM nobody sent.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)
                _tee(proc, log)
            rc = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        took = time.monotonic() - start
        if rc < 0:  # killed by a signal: report it as a shell would (128 + n), never a negative exit code
            rc = 128 - rc
        if rc != 0:
            state = _state(plan.run_dir, sp)
            if state == "running":  # died before it could record an outcome (killed, crashed interpreter)
                state = "failed"
                error = f"the stage process ended with exit code {rc}"
                if rc > 128 and rc - 128 in signal.valid_signals():
                    error += f" (killed by {signal.Signals(rc - 128).name})"
                write_status(plan.run_dir, sp.stage, state=state, exit_code=rc, ended=now(), error=error)
            print(f"[{sp.stage.value}] {state} (exit code {rc}) after {took:.1f} s; log: {log}", flush=True)
        elif self.signal is not None:
            print(f"[{sp.stage.value}] finished while stopping ({signal.Signals(self.signal).name})", flush=True)
        else:
            print(f"[{sp.stage.value}] done in {took:.1f} s", flush=True)
        return rc


def _forward(proc: subprocess.Popen, signum: int = signal.SIGTERM) -> None:
    """Pass the signal on as what it is (Ctrl-C stays SIGINT), so the stage reports the signal the user sent."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)


def _state(run_dir: Path, sp: StagePlan) -> str:
    return read_status(run_dir, sp.stage).get("state", "failed")
