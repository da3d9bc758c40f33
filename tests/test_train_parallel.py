"""Data and tensor parallelism on CPU with torchrun and gloo: the same 20-step loss curve for dp=2, tp=2 and
dp=2 x tp=2 as for one process, for the same global batch; each TP rank holds 1/tp of each sharded weight.
The dp=2 x tp=2 runs stop after step 10 and resume (sharded DTensor / DDP / FSDP2 state loaded back), so their
curve also proves multi-rank resume."""

from __future__ import annotations

import pytest
import torch

from model.config import DataParallelMode
from tests.helpers.training import run_job, small_config, tb_scalars

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def _run(prepared, tmp_path, dp: int, tp: int, mode: str = "ddp"):
    """20 steps; with 4 ranks as two runs of 10 (`trainer.steps_this_run=10`, then the same command again)."""
    halves = dp * tp == 4
    cfg = small_config(prepared, steps_this_run=10 if halves else -1)
    cfg.parallel.data_parallel_degree, cfg.parallel.tensor_parallel_degree = dp, tp
    cfg.parallel.data_parallel_mode = DataParallelMode(mode)
    run_dir = tmp_path / f"dp{dp}-tp{tp}-{mode}"
    for _ in range(2 if halves else 1):
        proc = run_job(run_dir, cfg, procs=dp * tp, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    if halves:
        assert f"resumed from {run_dir / 'checkpoints' / 'step_10'} (step 10" in proc.stdout
    return run_dir


def _curve(run_dir, tag="train/loss") -> list[float]:
    values = tb_scalars(run_dir / "tensorboard", tag)
    assert [s for s, _ in values] == list(range(1, 21))
    return [v for _, v in values]


@pytest.mark.parametrize(
    "layouts", [[(2, 1, "ddp"), (1, 2, "ddp"), (2, 2, "ddp")], [(2, 2, "fsdp")]], ids=["ddp", "fsdp"]
)
def test_loss_curves_agree_across_layouts(prepared, tmp_path, layouts):
    ref = _run(prepared, tmp_path, 1, 1)
    ref_loss, ref_norm = _curve(ref), _curve(ref, "train/grad_norm")
    assert ref_loss[-1] < ref_loss[0] - 0.3
    for dp, tp, mode in layouts:
        run_dir = _run(prepared, tmp_path, dp, tp, mode)
        torch.testing.assert_close(_curve(run_dir), ref_loss, rtol=1e-5, atol=1e-5, msg=f"dp{dp} tp{tp} {mode}")
        torch.testing.assert_close(_curve(run_dir, "train/grad_norm"), ref_norm, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(_curve_val(run_dir), _curve_val(ref), rtol=1e-5, atol=1e-5)
        _check_shards(run_dir, ref, dp, tp, mode)


def _curve_val(run_dir) -> list[float]:
    return [v for _, v in tb_scalars(run_dir / "tensorboard", "val/loss")]


def _check_shards(run_dir, ref, dp: int, tp: int, mode: str) -> None:
    """Each TP rank's checkpoint file holds exactly 1/tp of every sharded weight (1/(tp*dp) under FSDP)."""
    name = "dp_rank_{:02d}_tp_rank_{:02d}_pp_rank_00.pt"
    full = torch.load(ref / "checkpoints" / "step_20" / "model" / name.format(0, 0))
    step = run_dir / "checkpoints" / "step_20" / "model"
    files = sorted(p.name for p in step.iterdir())
    dps = range(dp) if mode == "fsdp" else range(1)
    assert files == sorted(name.format(d, t) for d in dps for t in range(tp))
    shard = {k.removeprefix("module."): v for k, v in torch.load(step / name.format(0, tp - 1)).items()}
    assert set(shard) == set(full)
    for key, value in full.items():
        sharded_by_tp = tp > 1 and "norm" not in key
        expect = value.numel() // (tp if sharded_by_tp else 1)
        if mode == "fsdp":
            expect //= dp
        assert shard[key].numel() == expect, key
