"""One stdout line per log interval and the same numbers as TensorBoard scalars (rank 0 only).

TensorBoard goes to `<run_dir>/tensorboard`; existing event files are never deleted (NxD's 70B script wipes
the folder). Every run opens its writer with `purge_step = resumed step + 1` (1 on a fresh start): TensorBoard
then drops the events a killed run wrote past that checkpoint, so each step has exactly one value.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


class MetricLogger:
    def __init__(self, tb_dir: Path | None, *, enabled: bool, resume_step: int, max_steps: int):
        self.enabled, self.max_steps = enabled, max_steps
        self.writer: Any = None
        if enabled and tb_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            tb_dir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(tb_dir), purge_step=resume_step + 1)

    def info(self, text: str) -> None:
        if self.enabled:
            print(f"[train] {text}", flush=True)

    def train(
        self, step: int, *, loss: float, lr: float, grad_norm: float, tokens_per_s: float, step_time: float
    ) -> None:
        if not self.enabled:
            return
        width = len(str(self.max_steps))
        print(
            f"[train] step {step:>{width}}/{self.max_steps} | loss {loss:.4f} | lr {lr:.3e} | "
            f"grad norm {grad_norm:.3f} | {tokens_per_s:,.0f} tok/s | {step_time * 1e3:.0f} ms/step",
            flush=True,
        )
        if self.writer is not None:
            for tag, value in (
                ("train/loss", loss),
                ("train/lr", lr),
                ("train/grad_norm", grad_norm),
                ("train/tokens_per_s", tokens_per_s),
                ("train/step_time_s", step_time),
            ):
                if math.isfinite(value):
                    self.writer.add_scalar(tag, value, step)

    def validation(self, step: int, loss: float, samples: int) -> None:
        if not self.enabled:
            return
        print(f"[train] step {step} | validation loss {loss:.4f} ({samples} held-out blocks)", flush=True)
        if self.writer is not None:
            self.writer.add_scalar("val/loss", loss, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
