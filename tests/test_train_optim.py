"""AdamW groups and the learning-rate schedules against their references (NxD's formula, HF's function)."""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from model import llama3
from model.config import ModelConfig
from train.config import OptimConfig, Schedule
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


@pytest.mark.parametrize(
    ("model", "schedule", "lr", "min_lr", "warmup", "max_steps", "betas", "eps"),
    [
        ("llama3_8b", Schedule.linear, 1.5e-4, 0.0, 100, 10000, (0.9, 0.999), 1e-6),
        ("llama3_70b", Schedule.cosine, 1.5e-5, 1e-6, 2000, 30000, (0.9, 0.95), 1e-8),
    ],
)
def test_nxd_recipes_are_config(model, schedule, lr, min_lr, warmup, max_steps, betas, eps):
    """`+model=llama3_8b` / `llama3_70b` select NxD's recipes: 8B warmup + linear decay to 0, 70B warmup + cosine
    to min_lr; the schedule the loop builds from them has the recipe's peak and end values."""
    from launcher.compose import compose

    cfg = compose([f"+model={model}"]).cfg
    o, t = cfg.optim, cfg.trainer
    assert (Schedule(o.schedule), o.lr, o.min_lr, o.warmup_steps, t.max_steps) == (
        schedule,
        lr,
        min_lr,
        warmup,
        max_steps,
    )
    assert (o.beta1, o.beta2) == betas and o.eps == eps and o.grad_clip == 1.0 and o.weight_decay == 0.01
    assert t.precision.value == "bf16"
    assert lr_at(warmup, o, max_steps) == pytest.approx(lr)
    assert lr_at(max_steps, o, max_steps) == pytest.approx(min_lr, abs=1e-15)
    assert lr_at(warmup // 2, o, max_steps) < lr / 2 + lr / warmup
    # Halfway through the decay: linear is at the midpoint, cosine too (cos(pi/2) = 0): same formula value.
    mid = warmup + (max_steps - warmup) // 2
    assert lr_at(mid, o, max_steps) == pytest.approx((lr + min_lr) / 2, rel=1e-3)
    opt = build_optimizer(torch.nn.Linear(2, 2), o)
    assert opt.defaults["betas"] == betas and opt.defaults["eps"] == eps


def _step_config(precision: str = "fp32", mode: str = "ddp"):
    from core.config import JobConfig
    from model.config import DataParallelMode
    from train.config import Precision

    cfg = JobConfig(
        model=ModelConfig(
            name="step",
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )
    cfg.data.seq_len = 16
    cfg.trainer.global_batch_size, cfg.trainer.micro_batch_size, cfg.trainer.max_steps = 4, 2, 10
    cfg.trainer.precision = Precision(precision)
    cfg.parallel.data_parallel_mode = DataParallelMode(mode)
    cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.weight_decay, cfg.optim.grad_clip = 1e-2, 2, 0.1, 0.5
    return cfg


@contextmanager
def _backend(cfg):
    """The real torch backend in this process: a one-rank gloo group (in-memory store), torn down after."""
    from train.backend_torch import TorchBackend
    from train.stage_train import train_job

    backend = TorchBackend(train_job(cfg, Path("unused-run")))
    backend.setup()
    try:
        backend.build(resuming=False)
        yield backend
    finally:
        backend.teardown()


def _batches(steps: int) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    return [[torch.randint(0, 128, (2, 16), generator=gen) for _ in range(2)] for _ in range(steps)]


def test_train_step_equals_hf_trained_with_torch_clip_and_adamw():
    """Three steps of the backend's train_step (2 micro-batches, clipping active, weight decay, warmup) move the
    weights exactly as transformers' LlamaForCausalLM trained on the same global batch with torch's own
    clip_grad_norm_ and the same AdamW and schedule; the logged grad norm is torch's pre-clip total norm."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from checkpoint.hf_adapter import to_hf, to_hf_config

    cfg = _step_config()
    with _backend(cfg) as backend:
        hf = LlamaForCausalLM(LlamaConfig(**to_hf_config(cfg.model), attn_implementation="sdpa"))
        hf.load_state_dict(to_hf(backend.model.state_dict()), strict=True)
        opt = build_optimizer(hf, cfg.optim)
        sched = build_scheduler(opt, cfg.optim, cfg.trainer.max_steps)
        for micro in _batches(3):
            res = backend.train_step(micro, stop_requested=False)
            loss = hf(input_ids=torch.cat(micro), labels=torch.cat(micro)).loss
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(hf.parameters(), cfg.optim.grad_clip)
            opt.step()
            opt.zero_grad()
            sched.step()
            assert res.loss == pytest.approx(loss.item(), rel=1e-6) and not res.stop
            assert res.grad_norm == pytest.approx(norm.item(), rel=1e-5) and res.grad_norm > cfg.optim.grad_clip
        ours = to_hf(backend.model.state_dict())
        for key, value in hf.state_dict().items():
            torch.testing.assert_close(ours[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_bf16_by_config_computes_in_bf16_and_keeps_fp32_master_weights(mode):
    """precision=bf16 really changes the arithmetic (autocast without FSDP, FSDP2's bf16 parameter policy with
    it): the first loss differs from fp32 by bf16 rounding, not more; the weights the optimizer holds stay fp32."""
    batches = _batches(2)
    with _backend(_step_config("fp32", mode)) as backend:
        fp32 = [backend.train_step(m, False).loss for m in batches]
    with _backend(_step_config("bf16", mode)) as backend:
        bf16 = [backend.train_step(m, False).loss for m in batches]
        dtypes = {p.dtype for group in backend.optimizer.param_groups for p in group["params"]}
    assert dtypes == {torch.float32}
    for a, b in zip(fp32, bf16):
        assert a != b and abs(a - b) < 2e-2
