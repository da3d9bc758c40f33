"""The nxd backend (train/backend_nxd.py) executed for real: NxD's own code in its CPU mode (NXD_CPU_MODE=1, gloo,
torchrun), through the project's train stage (`python -m launcher.job RUN train`), against the torch backend at
world 1 on the same data, seed and schedule. Runs where a real NxD is importable (tests/helpers/nxd_available.py:
NXD_SRC or an installed NxD, with torch-xla beside torch 2.9); skipped with the reason elsewhere (CI).

The Neuron-only imports are stubbed and NxD's three CPU-mode gaps patched in the worker processes by the test
harness (tests/helpers/nxd_site/sitecustomize.py, NXD_TEST_STUBS=1), never by the backend.

Tolerance: the logged losses and gradient norms of the first 20 steps agree to 1e-4 (the log's 4 decimals; the
TensorBoard values to rtol 1e-5); resume is exact to the log's precision."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.nxd_available import requires_nxd
from tests.helpers.training import ROOT, losses, small_config, tb_scalars, write_config
from train.config import Backend

pytestmark = [pytest.mark.nxd, requires_nxd, pytest.mark.slow, pytest.mark.distributed]

SITE = ROOT / "tests" / "helpers" / "nxd_site"


def _env() -> dict[str, str]:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "NXD_TEST_STUBS": "1"}
    e["PYTHONPATH"] = os.pathsep.join([str(SITE), str(ROOT), *filter(None, [e.get("PYTHONPATH")])])
    return e


def _run(run_dir: Path, cfg, procs: int) -> subprocess.CompletedProcess:
    write_config(run_dir, cfg)
    cmd = [sys.executable, "-m", "launcher.job", str(run_dir), "train"]
    if procs > 1:
        cmd[1:2] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", "-m"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _cfg(prepared, backend: Backend, tp=1, dp=1, pp=1, sp=False, kvm=1, grad_clip_off=False, **trainer):
    cfg = small_config(prepared, **trainer)
    if grad_clip_off:
        cfg.optim.grad_clip = 0.0
    cfg.trainer.backend = backend
    p = cfg.parallel
    p.tensor_parallel_degree, p.data_parallel_degree, p.pipeline_parallel_degree = tp, dp, pp
    p.sequence_parallel, p.kv_size_multiplier = sp, kvm
    if backend == Backend.nxd:
        p.qkv_linear = True  # GQAQKVColumnParallelLinear with the fused weight_qkv (NxD's default layout)
    return cfg


def _curve(run_dir: Path, tag: str) -> list[float]:
    values = tb_scalars(run_dir / "tensorboard", tag)
    assert [s for s, _ in values] == list(range(1, 21))
    return [v for _, v in values]


@pytest.fixture(scope="module")
def torch_ref(prepared, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("nxd") / "torch-world1"
    _run(run_dir, _cfg(prepared, Backend.torch), 1)
    return run_dir


LAYOUTS = {  # id: (tp, dp, pp, sequence parallel, kv_size_multiplier)
    "world1": (1, 1, 1, False, 1),
    "tp2": (2, 1, 1, False, 1),
    "dp2": (1, 2, 1, False, 1),
    "pp2": (1, 1, 2, False, 1),
    "tp2-pp2": (2, 1, 2, False, 1),
    "tp2-sp": (2, 1, 1, True, 1),
    "tp2-pp2-sp": (2, 1, 2, True, 1),
    "tp2-dp2-sp": (2, 2, 1, True, 1),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_nxd_losses_equal_torch_backend(prepared, torch_ref, tmp_path, layout):
    """Same 20 losses and gradient norms as the torch backend at world 1. At TP 2 the fused weight_qkv is
    sharded: its gradient norm only agrees because the backend marks it tensor-parallel (NxD drops the mark).
    With sequence parallelism (sp) the norms see half a sequence each: their gradients agree only because NxD's
    optimizer all-reduces the weights the model marks `sequence_parallel_enabled`."""
    import torch

    tp, dp, pp, sp, kvm = LAYOUTS[layout]
    run_dir = tmp_path / f"nxd-{layout}"
    _run(run_dir, _cfg(prepared, Backend.nxd, tp, dp, pp, sp, kvm), tp * dp * pp)
    for tag, rtol in (("train/loss", 1e-5), ("train/grad_norm", 1e-4)):
        got, ref = _curve(run_dir, tag), _curve(torch_ref, tag)
        torch.testing.assert_close(got, ref, rtol=rtol, atol=1e-5, msg=f"{tag} differs:\n{got}\n{ref}")
    step = run_dir / "checkpoints" / "step_20"
    assert (step / "done").is_file()  # NxD's own marker: the backend's storage, not our temp + rename
    files = sorted(p.name for p in (step / "model").glob("*_pp_rank_??.pt"))
    assert files == [f"dp_rank_00_tp_rank_{t:02d}_pp_rank_{s:02d}.pt" for t in range(tp) for s in range(pp)]
    # keep_last=2 over NxD's folders
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_15", "step_20"]


def test_nxd_stop_and_resume_is_exact(prepared, torch_ref, tmp_path):
    """TP 2: 10 steps, stop, the same command again resumes from NxD's step_10 checkpoint (model, optimizer,
    scheduler, data position) and logs the uninterrupted run's losses."""
    run_dir = tmp_path / "nxd-resume"
    cfg = _cfg(prepared, Backend.nxd, tp=2, steps_this_run=10)
    first = _run(run_dir, cfg, 2)
    second = _run(run_dir, cfg, 2)
    assert f"resumed from {run_dir / 'checkpoints' / 'step_10'} (step 10" in second.stdout
    ref = losses(_run(tmp_path / "nxd-straight", _cfg(prepared, Backend.nxd, tp=2), 2).stdout)
    got = {**losses(first.stdout), **losses(second.stdout)}
    assert got == ref and len(got) == 20


@pytest.mark.parametrize("sp", [False, True], ids=["nosp", "sp"])
def test_nxd_replicated_kv_heads_train_as_the_unreplicated_model(prepared, tmp_path, sp):
    """kv_size_multiplier 2 at TP 2: each rank holds both K/V heads (as 70B's multiplier 4 at TP 32 gives each
    rank one replica of one head). NxD divides their input gradient by the multiplier and sums their weight
    gradients over the KV-shared group, so the replicas stay equal and the losses are the unreplicated model's.

    With gradient clipping off: NxD's gradient norm counts each replicated K/V gradient once per replica (the
    fused weight_qkv is one tensor-parallel parameter), so at kv multiplier > 1 it is larger than the
    unreplicated model's, and clipping by it is slightly stronger (the plan says so)."""
    import torch

    ref_dir, run_dir = tmp_path / "torch-world1-noclip", tmp_path / "nxd-tp2-kvm2"
    _run(ref_dir, _cfg(prepared, Backend.torch, grad_clip_off=True), 1)
    _run(run_dir, _cfg(prepared, Backend.nxd, tp=2, sp=sp, kvm=2, grad_clip_off=True), 2)
    got, ref = _curve(run_dir, "train/loss"), _curve(ref_dir, "train/loss")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5, msg=lambda m: f"{m}\n{got}\n{ref}")
    norms, ref_norms = _curve(run_dir, "train/grad_norm"), _curve(ref_dir, "train/grad_norm")
    assert all(n > r for n, r in zip(norms, ref_norms)), (norms, ref_norms)
