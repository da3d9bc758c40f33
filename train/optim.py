"""AdamW with the NxD examples' weight-decay groups, and their learning-rate schedules as pure functions.

`lr_at(step)` is the rate of optimizer step `step` (0-based, the step about to run), so the schedule is one
testable formula; the torch scheduler is a LambdaLR over it whose state (last_epoch) is checkpointed.
- cosine: NxD `lr.CosineAnnealing` (NeMo's WarmupPolicy): lr*(step+1)/(warmup+1) while step <= warmup, then
  cosine from lr to min_lr over max_steps - warmup steps, min_lr after max_steps (the 70B recipe).
- linear: HF `get_linear_schedule_with_warmup`: lr*step/warmup, then linear decay reaching min_lr at max_steps
  (HF decays to 0: the 8B recipe sets min_lr 0, which is exactly HF's formula).
- constant: the cosine recipe's warmup, then lr.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from train.config import OptimConfig, Schedule


def no_decay(name: str, param: torch.Tensor) -> bool:
    """NxD's rule (names containing "bias" or "norm"), plus any vector, which catches norms by shape too."""
    lowered = name.lower()
    return "bias" in lowered or "norm" in lowered or param.ndim < 2


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay: list[nn.Parameter] = []
    keep: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (keep if no_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, ocfg: OptimConfig) -> torch.optim.AdamW:
    # foreach (the default on every device) batches the update into a few kernels; fused is CUDA-only.
    return torch.optim.AdamW(
        param_groups(model, ocfg.weight_decay),
        lr=ocfg.lr,
        betas=(ocfg.beta1, ocfg.beta2),
        eps=ocfg.eps,
        weight_decay=ocfg.weight_decay,
    )


def lr_at(step: int, ocfg: OptimConfig, max_steps: int) -> float:
    lr, min_lr, warmup = ocfg.lr, ocfg.min_lr, ocfg.warmup_steps
    schedule = Schedule(ocfg.schedule)
    if schedule == Schedule.linear:
        if step < warmup:
            return lr * step / max(1, warmup)
        frac = max(0.0, (max_steps - step) / max(1, max_steps - warmup))
        return min_lr + (lr - min_lr) * frac
    if warmup > 0 and step <= warmup:
        return lr * (step + 1) / (warmup + 1)
    if schedule == Schedule.constant:
        return lr
    if step > max_steps:
        return min_lr
    decay_steps = max(1, max_steps - warmup)
    return (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / decay_steps)) + min_lr


def build_scheduler(
    optimizer: torch.optim.Optimizer, ocfg: OptimConfig, max_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    base = ocfg.lr
    if base <= 0:
        raise ValueError(f"optim.lr={base} must be positive. Set optim.lr=3e-4 or similar.")
    if ocfg.min_lr > base and Schedule(ocfg.schedule) != Schedule.constant:
        raise ValueError(
            f"optim.min_lr={ocfg.min_lr} is above optim.lr={base}: the schedule would rise while it "
            f"should decay. Set optim.min_lr to at most {base} (e.g. optim.min_lr={base / 10:g})."
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, ocfg, max_steps) / base)


def apply_settings(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, ocfg: OptimConfig
) -> None:
    """After a checkpoint was loaded: use the config's optimizer settings instead of the ones the checkpoint
    restored (its param groups carry lr, betas, eps, weight decay; the scheduler its base lr). Used when a run
    continues with changed settings (trainer.resume_changed=true); the moments and the step count are kept."""
    for i, group in enumerate(optimizer.param_groups):
        group["betas"] = (ocfg.beta1, ocfg.beta2)
        group["eps"] = ocfg.eps
        if i == 0:  # param_groups(): the decaying group first, the no-decay group keeps 0
            group["weight_decay"] = ocfg.weight_decay
        group["initial_lr"] = ocfg.lr
    scheduler.base_lrs = [ocfg.lr] * len(optimizer.param_groups)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["lr"] = ocfg.lr * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
