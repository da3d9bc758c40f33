"""Stall watchdog: a training process that stops making progress says so and exits, instead of hanging.

Two layers, both from config:
- `trainer.collective_timeout_s` is the process group's timeout: a collective that one rank never joins raises
  on the others after that long (gloo and nccl), with torch's traceback.
- `trainer.stall_timeout_s` is a heartbeat on every rank: the loop beats after every step, evaluation and
  checkpoint. A thread checks it; after half the timeout without a beat it prints
  `no progress for N s at step K (phase)` (a warning), after the whole timeout it prints the error, records the
  stage as failed (rank 0) and exits the process with EXIT_STALLED, whatever the main thread is blocked in
  (a collective, a file system, a deadlock). 0 disables it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

EXIT_STALLED = 124  # as timeout(1): the process was stopped for taking too long


class Watchdog:
    def __init__(
        self, timeout_s: float, *, rank: int = 0, on_stall: Callable[[str], None] | None = None, poll_s: float = 0
    ):
        self.timeout, self.rank, self.on_stall = float(timeout_s), rank, on_stall
        self.poll = poll_s or max(0.05, min(5.0, self.timeout / 10))
        self.step, self.phase = 0, "startup"
        self._last = time.monotonic()
        self._warned = False
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, step: int, phase: str) -> None:
        """Progress: `phase` is what the process does next (shown if it stalls there)."""
        self.step, self.phase, self._last, self._warned = step, phase, time.monotonic(), False

    def start(self) -> Watchdog:
        if self.timeout > 0 and self._thread is None:
            self._last = time.monotonic()
            self._thread = threading.Thread(target=self._watch, name="train-watchdog", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll * 2 + 1)
            self._thread = None

    def __enter__(self) -> Watchdog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _watch(self) -> None:
        while not self._done.wait(self.poll):
            idle = time.monotonic() - self._last
            where = f"at step {self.step} ({self.phase}) on rank {self.rank}"
            if idle >= self.timeout:
                msg = (
                    f"no progress for {idle:.0f} s {where}: stopping (trainer.stall_timeout_s="
                    f"{self.timeout:g}). Another rank may have died or be blocked; see every rank's log. Rerun "
                    "the same command to resume from the last checkpoint, or raise trainer.stall_timeout_s if "
                    "this phase is legitimately slow (0 disables the watchdog)."
                )
                print(f"\n[train] error: {msg}", file=sys.stderr, flush=True)
                if self.on_stall is not None:
                    try:
                        self.on_stall(msg)
                    except Exception as exc:  # the exit matters more than the record
                        print(f"[train] could not record the stall: {exc}", file=sys.stderr, flush=True)
                sys.stdout.flush()
                os._exit(EXIT_STALLED)
            if idle >= self.timeout / 2 and not self._warned:
                self._warned = True
                print(
                    f"[train] warning: no progress for {idle:.0f} s {where}; exiting after "
                    f"{self.timeout:g} s (trainer.stall_timeout_s)",
                    file=sys.stderr,
                    flush=True,
                )
