"""The one training loop: resume, data, steps, logging, evaluation, checkpoints, signals, NaN checks.

Everything device- or parallelism-specific is behind the backend (train/backend.py). Step numbers are
1-based: "step N" is the N-th optimizer step, and checkpoint step_N holds the state after it. The schedule is
always the full `trainer.max_steps`; `trainer.steps_this_run` only decides where this process stops.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from checkpoint import train_state as ckpt
from data.loader import Split, TrainBatches, check_dataset, eval_batches
from train.backend import TrainBackend
from train.job import TrainJob
from train.logging import MetricLogger
from train.signals import Preempted, StopRequest
from train.watchdog import Watchdog


def _window_end(step: int, interval: int) -> bool:
    return interval > 0 and step % interval == 0


def train(job: TrainJob, backend: TrainBackend, started: float | None = None) -> dict[str, Any]:
    t = job.trainer
    started = time.perf_counter() if started is None else started
    info = check_dataset(job.dataset_dir, seq_len=job.seq_len, vocab_size=job.model.vocab_size)
    root = job.checkpoint_dir
    lead = backend.rank == 0
    dog = Watchdog(t.stall_timeout_s, rank=backend.rank, on_stall=job.on_stall if lead else None).start()
    try:
        return _train(job, backend, started, info, root, lead, dog)
    finally:
        dog.stop()


def _train(
    job: TrainJob,
    backend: TrainBackend,
    started: float,
    info: Any,
    root: Path,
    lead: bool,
    dog: Watchdog,
) -> dict[str, Any]:
    t = job.trainer
    # Where checkpoints live is the backend's (NxD writes its own folders); the policy below is the same for all.
    store = getattr(backend, "checkpoints", ckpt)
    if lead:
        root.mkdir(parents=True, exist_ok=True)
        store.clean_stale(root)
    backend.barrier()
    d = job.derived
    compat = ckpt.compatibility(job.model, d, job.parallel.data_parallel_mode)
    resume = store.latest(root)
    backend.build(resuming=resume is not None)
    step = consumed = 0
    val_initial = None
    if resume is not None:
        dog.beat(0, f"loading {resume}")
        meta = store.load(resume, io=backend, compat=compat)
        step, consumed = int(meta["step"]), int(meta["consumed_samples"])
        backend.scheduler.load_state_dict(meta["scheduler"])
        val_initial = meta.get("val_loss_initial")
        if t.resume_changed:  # continuing with changed settings: the config's, not the checkpoint's
            from train.optim import apply_settings

            apply_settings(backend.optimizer, backend.scheduler, job.optim)  # type: ignore[attr-defined,arg-type]
    log = MetricLogger(job.tensorboard_dir, enabled=lead, resume_step=step, max_steps=t.max_steps)
    log.info(
        f"resumed from {resume} (step {step}, {consumed:,} samples consumed)"
        if resume
        else f"starting from step 0 ({job.model.init.value} init)"
    )
    log.info(
        f"{d.parameters:,} parameters | tp {d.tensor_parallel} x dp {d.data_parallel} | global batch "
        f"{t.global_batch_size} = dp {d.data_parallel} x {d.grad_accum_steps} accumulation x micro "
        f"{t.micro_batch_size} | {d.tokens_per_step:,} tokens/step | {t.precision.value}"
    )
    train_split = Split(info.path / "train")
    val_split = Split(info.path / "validation")
    batches = TrainBatches(
        train_split,
        global_batch=t.global_batch_size,
        micro_batch=t.micro_batch_size,
        dp_rank=backend.dp_rank,
        dp_size=backend.dp_size,
        seed=t.seed,
        shuffle=t.shuffle,  # off by default, as in NxD's examples
        consumed=consumed,
    )
    held_out = eval_batches(
        val_split,
        global_batch=t.global_batch_size,
        micro_batch=t.micro_batch_size,
        num_batches=t.eval_batches,
        dp_rank=backend.dp_rank,
        dp_size=backend.dp_size,
    )
    end = t.max_steps if t.steps_this_run < 0 else min(t.max_steps, step + t.steps_this_run)
    first_step, last_saved = step, resume
    summary: dict[str, Any] = {"resumed_from": str(resume) if resume else None, "start_step": step}
    losses: list[Any] = []
    # (loss, grad norm, seconds) since the last log line. Loss and grad norm may be device tensors: they are read
    # (a host sync on XLA) only when a log line is due, and checked for NaN/inf then.
    window: list[tuple[Any, Any, float]] = []
    train_seconds, timed_steps = 0.0, 0
    val_loss = None
    if step == 0 and step < end and t.eval_interval > 0 and val_split.rows:
        # Before the first step, so the validation curve starts at the untrained model's loss.
        dog.beat(step, "validation before the first step")
        val_loss, blocks = backend.eval_loss(held_out)
        val_initial = val_loss
        log.validation(step, val_loss, blocks)
    stop = StopRequest().install()
    startup = time.perf_counter() - started
    try:
        while step < end:
            dog.beat(step, f"step {step + 1}")
            t0 = time.perf_counter()
            micro = batches.next_step()
            lr = _lr_of(backend)
            res = backend.train_step(micro, stop.requested)
            dt = time.perf_counter() - t0
            step += 1
            losses.append(res.loss)
            window.append((res.loss, res.grad_norm, dt))
            if step > first_step + 1 or end - first_step == 1:
                train_seconds, timed_steps = train_seconds + dt, timed_steps + 1
            saving = _window_end(step, t.checkpoint_interval) or step == end or res.stop
            if _window_end(step, t.log_interval) or saving:
                _check_finite(window, step, job, last_saved)
                secs = sum(s for _, _, s in window)
                log.train(
                    step,
                    loss=float(res.loss),
                    lr=lr,
                    grad_norm=float(res.grad_norm),
                    tokens_per_s=d.tokens_per_step * len(window) / secs,
                    step_time=secs / len(window),
                )
                window.clear()
            at_end = step == t.max_steps and t.eval_interval > 0
            if (_window_end(step, t.eval_interval) or at_end) and val_split.rows:
                dog.beat(step, "validation")
                val_loss, blocks = backend.eval_loss(held_out)
                log.validation(step, val_loss, blocks)
            if saving:
                dog.beat(step, "checkpoint")
                last_saved = _save(root, step, backend, job, compat, batches.consumed, log, val_initial)
            if res.stop:
                log.info(
                    f"stopped by {stop.signal_name or 'a signal on another rank'} after step {step}; "
                    f"checkpoint {last_saved}; rerun the same command (or requeue) to resume"
                )
                log.close()
                raise Preempted(stop.signal_name or "signal", str(last_saved))
    finally:
        stop.uninstall()
        log.close()
    if last_saved is None:  # nothing to do: resumed at or past max_steps
        last_saved = resume
    summary.update(
        {
            "completed": step >= t.max_steps,
            "step": step,
            "max_steps": t.max_steps,
            "steps": step - first_step,
            "loss_first": float(losses[0]) if losses else None,
            "loss_last": float(losses[-1]) if losses else None,
            "val_loss": val_loss,
            "val_loss_initial": val_initial,
            "tokens_per_s": round(d.tokens_per_step * timed_steps / train_seconds, 1) if train_seconds else None,
            "startup_seconds": round(startup, 3),
            "seconds": round(time.perf_counter() - started, 3),
            "checkpoint": str(last_saved) if last_saved else None,
            "tensorboard": str(job.tensorboard_dir),
        }
    )
    if step >= t.max_steps:
        losses_text = f", loss {float(losses[0]):.4f} -> {float(losses[-1]):.4f}" if losses else ""
        val_text = f", validation loss {val_loss:.4f}" if val_loss is not None else ""
        if val_loss is not None and val_initial is not None:
            val_text = f", validation loss {val_initial:.4f} -> {val_loss:.4f}"
        log.info(f"done: step {step}/{t.max_steps}{losses_text}{val_text}, checkpoint {last_saved}")
    else:
        log.info(
            f"stopped after step {step} of {t.max_steps} (trainer.steps_this_run={t.steps_this_run}); "
            f"checkpoint {last_saved}; run the same command again to continue"
        )
    return summary


def _lr_of(backend: TrainBackend) -> float:
    """The rate the next optimizer step uses (read before the step: the scheduler moves on after it)."""
    return float(backend.scheduler.get_last_lr()[0])


def _save(
    root: Path,
    step: int,
    backend: TrainBackend,
    job: TrainJob,
    compat: dict[str, Any],
    consumed: int,
    log: MetricLogger,
    val_initial: float | None = None,
) -> Path:
    t0 = time.perf_counter()
    state = {"consumed_samples": consumed, "scheduler": backend.scheduler.state_dict()}
    if val_initial is not None:  # the untrained model's validation loss, for the summaries of resumed runs
        state["val_loss_initial"] = val_initial
    store = getattr(backend, "checkpoints", ckpt)
    path = store.save(root, step, io=backend, compat=compat, state=state, keep_last=job.trainer.keep_last)
    log.flush()
    log.info(f"checkpoint {path} ({time.perf_counter() - t0:.2f} s)")
    return path


def _check_finite(window: list[tuple[Any, Any, float]], step: int, job: TrainJob, last_saved: Path | None) -> None:
    """The first NaN/inf loss or gradient norm of the window (the torch backend skipped that optimizer step)."""
    first = step - len(window) + 1
    for i, (loss, norm, _) in enumerate(window):
        loss, norm = float(loss), float(norm)
        if not (_finite(loss) and _finite(norm)):
            what, value = ("loss", loss) if not _finite(loss) else ("gradient norm", norm)
            good = f"the last good checkpoint is {last_saved}" if last_saved else "no checkpoint was written yet"
            raise ValueError(
                f"Training diverged: the {what} is {value} at step {first + i} (the optimizer step was skipped); "
                f"{good}. Lower optim.lr (now {job.optim.lr:g}) or raise optim.warmup_steps, or use "
                f"trainer.precision=fp32, then rerun: it resumes from the last good checkpoint."
            )


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")
