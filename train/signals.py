"""Preemption and timeout: SIGTERM and SIGUSR2 ask the loop to checkpoint at the next step boundary and exit.

The handler only records the signal; the loop polls `requested` once per step and agrees on it across ranks
(one all-reduce it already does), so every rank stops after the same step and the checkpoint is consistent.
Slurm sends SIGTERM before killing a preempted or cancelled job; submitit's Checkpointable path sends SIGUSR2
ahead of the time limit (`--signal=USR2@...`). The process then exits with EXIT_REQUEUE (75, EX_TEMPFAIL:
"try again later"), which tells the job wrapper to requeue rather than fail.
"""

from __future__ import annotations

import signal
from types import FrameType

EXIT_REQUEUE = 75
# SIGINT: Ctrl-C (the local executor passes it on to the stage's process group as SIGINT).
SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


class StopRequest:
    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is not None:
            return  # under torchrun a signal can arrive twice (from the process group and from torchrun)
        name = self.signal_name = signal.Signals(signum).name
        what = "SIGINT (Ctrl-C)" if signum == signal.SIGINT else name
        print(f"[train] received {what}: checkpointing at the end of this step, then exiting", flush=True)

    def install(self) -> StopRequest:
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()


class Preempted(SystemExit):
    """Raised after the checkpoint is written, so the process exits with EXIT_REQUEUE."""

    def __init__(self, signal_name: str, checkpoint: str):
        super().__init__(EXIT_REQUEUE)
        self.signal_name, self.checkpoint = signal_name, checkpoint
