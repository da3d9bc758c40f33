"""AdamW groups and the learning-rate schedules against their references (NxD's formula, HF's function)."""

from __future__ import annotations

import math

import pytest
import torch

from launcher.schema import ModelConfig, OptimConfig, Schedule
from model import llama3
from train.optim import build_optimizer, build_scheduler, lr_at, param_groups


def _schedule(opt: torch.optim.Optimizer, sched, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_is_nxd_cosine_annealing():
    """NxD lr.CosineAnnealing: lr*(s+1)/(w+1) for s <= w, cosine to min_lr over max-w, min_lr after max."""
    o = OptimConfig(lr=1.5e-5, min_lr=1e-6, warmup_steps=20, schedule=Schedule.cosine)
    max_steps = 300
    for s in (0, 1, 19, 20):
        assert lr_at(s, o, max_steps) == pytest.approx(1.5e-5 * (s + 1) / 21, rel=1e-12)
    for s in (21, 100, 299, 300):
        mult = 0.5 * (1 + math.cos(math.pi * (s - 20) / (max_steps - 20)))
        assert lr_at(s, o, max_steps) == pytest.approx((1.5e-5 - 1e-6) * mult + 1e-6, rel=1e-12)
    assert lr_at(300, o, max_steps) == pytest.approx(1e-6)
    assert lr_at(301, o, max_steps) == 1e-6
    # The torch scheduler follows the formula step by step (it is what gets checkpointed).
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([p], lr=o.lr)
    got = _schedule(opt, build_scheduler(opt, o, max_steps), 40)
    assert got == pytest.approx([lr_at(s, o, max_steps) for s in range(40)], rel=1e-12)


def test_linear_is_hf_get_linear_schedule_with_warmup():
    from transformers import get_linear_schedule_with_warmup

    o = OptimConfig(lr=1.5e-4, min_lr=0.0, warmup_steps=10, schedule=Schedule.linear)
    max_steps = 100
    p = torch.nn.Parameter(torch.zeros(2, 2))
    ref_opt = torch.optim.AdamW([p], lr=o.lr)
    ref = _schedule(ref_opt, get_linear_schedule_with_warmup(ref_opt, 10, max_steps), max_steps + 3)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2, 2))], lr=o.lr)
    ours = _schedule(opt, build_scheduler(opt, o, max_steps), max_steps + 3)
    assert ours == pytest.approx(ref, rel=1e-12, abs=1e-20)
    assert ours[0] == 0.0 and ours[10] == pytest.approx(1.5e-4) and ours[max_steps] == 0.0


def test_constant_and_min_lr_checks():
    o = OptimConfig(lr=1e-3, min_lr=0.0, warmup_steps=3, schedule=Schedule.constant)
    assert [lr_at(s, o, 50) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    bad = OptimConfig(lr=1e-4, min_lr=1e-3)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=bad.lr)
    with pytest.raises(ValueError, match=r"optim.min_lr=0.001 is above optim.lr=0.0001"):
        build_scheduler(opt, bad, 10)


def test_weight_decay_groups_and_value_really_used():
    cfg = ModelConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = llama3.build(cfg)
    decay, keep = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in keep["params"]} == {n for n, _ in model.named_parameters() if "norm" in n}
    assert all(p.ndim == 2 for p in decay["params"]) and decay["weight_decay"] == 0.1 and keep["weight_decay"] == 0
    # One step with zero gradients: only decoupled weight decay acts, by exactly lr * wd on matrices only.
    opt = build_optimizer(model, OptimConfig(lr=0.5, weight_decay=0.1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        factor = 1.0 if "norm" in n else 1 - 0.5 * 0.1
        torch.testing.assert_close(p.detach(), before[n] * factor, rtol=0, atol=1e-7)
