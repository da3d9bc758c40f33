"""The nxd backend's weights on disk, executed for real in NxD's CPU mode (see tests/test_nxd_backend.py for the
harness), at TP 2 with the fused GQA QKV layer:

- HF safetensors (a random tiny `LlamaForCausalLM`) -> the project's convert stage -> the nxd backend
  (TrainJob.converted_dir) gives transformers' logits;
- training saves with `nxd.save_checkpoint`; the export stage turns that checkpoint into an HF folder that
  transformers loads and that gives the logits of the nxd model loaded from the same checkpoint;
- one set of key names, key for key: the backend's model (under NxD's names), `nxd.save_checkpoint`'s model files,
  the converter's shards and (on the HF side) the export and the original HF folder;
- ZeRO-1 (NxD's NeuronZero1Optimizer) at world 1 on torch-xla's CPU device: its checkpoint saves and loads, and a
  stopped-and-resumed run logs the uninterrupted run's losses, equal as logged (NxDCheckpoints.load re-makes
  ZeRO-1's fp32 shards from the loaded weights before it loads the optimizer state).

Tolerance for logits: 1e-4 absolute (fp32; the sharded matmuls and the vocab-parallel gather reorder sums)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.nxd_available import requires_nxd
from tests.helpers.training import ROOT, losses, small_config, write_config
from train.config import Backend

pytestmark = [pytest.mark.nxd, requires_nxd, pytest.mark.slow, pytest.mark.distributed]

SITE = ROOT / "tests" / "helpers" / "nxd_site"
TP = 2


def _env(**extra: str) -> dict[str, str]:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "NXD_TEST_STUBS": "1", **extra}
    e["PYTHONPATH"] = os.pathsep.join([str(SITE), str(ROOT), *filter(None, [e.get("PYTHONPATH")])])
    return e


def _python(args: list[str], procs: int = 1, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *args]
    if procs > 1:
        cmd[1:1] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
    proc = subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _stage(run_dir: Path, stage: str, procs: int = 1, **env: str) -> subprocess.CompletedProcess:
    return _python(["-m", "launcher.job", str(run_dir), stage], procs, **env)


def _hf_folder(cfg, dest: Path) -> Path:
    """A random tiny LlamaForCausalLM of cfg.model's architecture, saved as safetensors by transformers."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from checkpoint.hf_adapter import to_hf_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**to_hf_config(cfg.model, "float32")))
    model.save_pretrained(dest, safe_serialization=True)
    return dest


def _rank_file_keys(folder: Path) -> dict[str, list[str]]:
    """Key names of each NxD rank file (plain or xser reference file) in a `model/` folder."""
    import torch

    return {
        f.name: sorted(torch.load(f, map_location="cpu", weights_only=False))
        for f in sorted(folder.glob("dp_rank_*_tp_rank_*_pp_rank_??.pt"))
    }


def _hf_keys(folder: Path) -> list[str]:
    from safetensors import safe_open

    keys: list[str] = []
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, "pt") as s:
            keys += list(s.keys())
    return sorted(keys)


def _logits(run_dir: Path, hf_dir: Path, out: Path, step: Path | None = None) -> dict:
    args = ["-m", "tests.helpers.nxd_logits_worker", str(run_dir), str(hf_dir), str(out)]
    _python([*args, *([str(step)] if step else [])], TP)
    return json.loads(out.read_text())


def test_converted_hf_weights_train_save_and_export_with_one_set_of_keys(prepared, tmp_path):
    cfg = small_config(prepared, max_steps=4, checkpoint_interval=4, eval_interval=0)
    cfg.trainer.backend = Backend.nxd
    p = cfg.parallel
    p.tensor_parallel_degree, p.qkv_linear, p.fuse_qkv = TP, True, True
    hf_dir = _hf_folder(cfg, tmp_path / "hf")
    cfg.model.init = "pretrained"
    cfg.model.pretrained_path = str(hf_dir)
    run_dir = tmp_path / "run"
    write_config(run_dir, cfg)

    _stage(run_dir, "convert")
    converted = run_dir / "checkpoints" / "pretrained_weight"
    shard_keys = _rank_file_keys(converted / "model")
    assert sorted(shard_keys) == [f"dp_rank_00_tp_rank_{t:02d}_pp_rank_00.pt" for t in range(TP)]

    # 1. the convert stage's shards in the nxd backend: transformers' logits
    got = _logits(run_dir, hf_dir, tmp_path / "converted.json")
    assert got["max_abs_diff"] < 1e-4 < got["ref_max"], got["max_abs_diff"]
    model_keys = got["keys"]
    assert all(keys == model_keys for keys in shard_keys.values())
    assert "model.layers.0.self_attn.qkv_proj.weight_qkv" in model_keys

    # 2. train from them; nxd.save_checkpoint writes the same keys
    _stage(run_dir, "train", TP)
    step = run_dir / "checkpoints" / "step_4"
    assert (step / "done").is_file()
    saved = _rank_file_keys(step / "model")
    assert sorted(saved) == sorted(shard_keys) and all(keys == model_keys for keys in saved.values())

    # 3. export to HF: transformers loads it (every key, none missing) and gives the nxd model's logits
    _stage(run_dir, "export")
    export = run_dir / "export"
    assert _hf_keys(export) == _hf_keys(hf_dir)
    from transformers import LlamaForCausalLM

    _, info = LlamaForCausalLM.from_pretrained(export, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    got = _logits(run_dir, export, tmp_path / "exported.json", step)
    assert got["max_abs_diff"] < 1e-4 < got["ref_max"], got["max_abs_diff"]
    # the trained weights moved away from the pretrained ones (the export is of step_4, not of the input)
    before = _logits(run_dir, hf_dir, tmp_path / "moved.json", step)
    assert before["max_abs_diff"] > 1e-3


def test_zero1_checkpoint_save_and_load_on_the_xla_cpu_device(prepared, tmp_path):
    """World 1, torch-xla's CPU device (PJRT_DEVICE=CPU, not NxD's CPU mode): NeuronZero1Optimizer's state goes
    through nxd.save_checkpoint / load_checkpoint; 4 steps, stop, resume to 8 == 8 straight steps."""

    def cfg(**trainer):
        c = small_config(prepared, max_steps=8, checkpoint_interval=4, eval_interval=0, **trainer)
        c.trainer.backend = Backend.nxd
        c.cluster.accelerator = "trn1"
        c.cluster.devices_per_node = 1
        c.parallel.zero1, c.parallel.qkv_linear = True, True
        return c

    xla = {"PJRT_DEVICE": "CPU", "NXD_CPU_MODE": "0"}
    run_dir = tmp_path / "zero1"
    write_config(run_dir, cfg(steps_this_run=4))
    first = _stage(run_dir, "train", **xla)
    optim = sorted(p.name for p in (run_dir / "checkpoints" / "step_4" / "optim").glob("*_pp_rank_??.pt"))
    assert optim == ["dp_rank_00_tp_rank_00_pp_rank_00.pt"]
    second = _stage(run_dir, "train", **xla)
    assert f"resumed from {run_dir / 'checkpoints' / 'step_4'} (step 4" in second.stdout
    straight = tmp_path / "zero1-straight"
    write_config(straight, cfg())
    ref = losses(_stage(straight, "train", **xla).stdout)
    got = {**losses(first.stdout), **losses(second.stdout)}
    assert got == ref and len(got) == 8
