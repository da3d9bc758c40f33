"""The `export` stage: a real torch-backend checkpoint (tp 2 x dp 2 FSDP, 4 gloo processes) and an NxD-layout
checkpoint, each exported to HF and loaded by transformers, compared with our model / the source weights; both
hold the same set of files (weights, config, generation config, the data stage's tokenizer)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path

import pytest
import torch

from checkpoint.stage_export import run
from core.config import JobConfig
from core.paths import tokenizer_dir
from core.stages import Stage, StageContext
from data.tokenizer import ensure_sample_tokenizer
from model.config import DataParallelMode
from tests.helpers.hf import make_hf
from tests.helpers.training import checkpoint_compatibility
from tests.test_export_usable import EXPORT_FILES
from train.config import Backend


def _cfg(tp: int, dp: int) -> JobConfig:
    cfg = JobConfig()
    cfg.parallel.tensor_parallel_degree, cfg.parallel.data_parallel_degree = tp, dp
    cfg.parallel.data_parallel_mode = DataParallelMode.fsdp
    cfg.trainer.num_threads = 1
    return cfg


def _worker(rank: int, world: int, port: int, run_dir: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    from torch.distributed.tensor import DTensor

    from checkpoint import train_state as ckpt
    from train.backend_torch import TorchBackend
    from train.stage_train import train_job

    cfg = _cfg(2, 2)
    backend = TorchBackend(train_job(cfg, Path(run_dir)))
    backend.setup()
    try:
        backend.build(resuming=False)
        full = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in backend.model.state_dict().items()}
        if rank == 0:
            torch.save({k: v.detach().clone() for k, v in full.items()}, Path(run_dir) / "full.pt")
        compat = checkpoint_compatibility(cfg)
        ckpt.save(Path(run_dir) / "checkpoints", 3, io=backend, compat=compat, state={}, keep_last=2)
    finally:
        backend.teardown()


def _with_sample_tokenizer(cfg: JobConfig, cache: Path) -> JobConfig:
    """Point the cache at a test folder holding the sample tokenizer the data stage would have built."""
    cfg.cluster.cache_dir = str(cache)
    ensure_sample_tokenizer(tokenizer_dir(cfg), cfg.model.vocab_size)
    return cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.slow
def test_torch_backend_checkpoint_exports_to_hf_with_same_logits(tmp_path):
    from transformers import LlamaForCausalLM

    from model.llama3 import build

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.multiprocessing.spawn(_worker, args=(4, _free_port(), str(run_dir)), nprocs=4, join=True)
    assert len(list((run_dir / "checkpoints" / "step_3" / "model").iterdir())) == 4  # one per dp x tp rank
    cfg = _with_sample_tokenizer(_cfg(2, 2), tmp_path / "cache")
    work = run_dir / ".export.tmp"
    work.mkdir()
    summary = run(cfg, StageContext(Stage.export, run_dir, work, run_dir / "export"))
    assert summary["step"] == 3
    full = torch.load(run_dir / "full.pt", weights_only=True)
    ours = build(cfg.model)
    ours.load_state_dict(full)
    hf = LlamaForCausalLM.from_pretrained(work).eval()
    ids = torch.randint(0, cfg.model.vocab_size, (2, 16))
    with torch.no_grad():
        ref, got = ours(ids), hf(ids).logits
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert sorted(p.name for p in work.iterdir()) == EXPORT_FILES
    from checkpoint.hf_adapter import to_hf

    exported = dict(hf.state_dict())
    for k, v in to_hf(full).items():
        assert torch.equal(exported[k], v), k  # merged shards are the exact weights


def test_nxd_backend_checkpoint_exports_bit_exact(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, GenerationConfig

    from checkpoint.convert import to_nxd
    from checkpoint.hf_adapter import to_hf_config
    from checkpoint.nxd_layout import Arch
    from checkpoint.stage_convert import layout_from_cfg

    cfg = JobConfig()
    # 8 heads, 4 KV heads, 4 layers (pinned here: the tiny default may change)
    cfg.model = dataclasses.replace(
        cfg.model, hidden_size=256, intermediate_size=768, num_attention_heads=8, num_key_value_heads=4
    )
    cfg.trainer.backend = Backend.nxd
    p = cfg.parallel
    p.tensor_parallel_degree, p.pipeline_parallel_degree, p.kv_size_multiplier = 8, 2, 2
    p.qkv_linear, p.fuse_qkv = True, True
    _with_sample_tokenizer(cfg, tmp_path / "cache")
    hf = to_hf_config(cfg.model)
    model = make_hf(tmp_path / "hf", heads=8, kv=4, layers=4, hidden=256, inter=768, vocab=2048, dtype=torch.float32)
    assert model.config.num_key_value_heads == hf["num_key_value_heads"]
    step = tmp_path / "run" / "checkpoints" / "step_12"
    to_nxd(tmp_path / "hf", step, Arch.from_hf_config(hf), layout_from_cfg(cfg), xser=True, progress=False)
    (step / "done").write_text("1")
    (tmp_path / "run" / "checkpoints" / "step_20").mkdir()  # incomplete: no marker, must be ignored
    work = tmp_path / "run" / ".export.tmp"
    work.mkdir()
    summary = run(cfg, StageContext(Stage.export, tmp_path / "run", work, tmp_path / "run" / "export"))
    assert summary["step"] == 12
    got = load_file(work / "model.safetensors")
    src = model.state_dict()
    assert sorted(got) == sorted(src)
    assert all(torch.equal(got[k], src[k]) for k in src)
    # The same files as the torch backend's export, usable on their own.
    assert sorted(p.name for p in work.iterdir()) == EXPORT_FILES
    assert json.loads((work / "config.json").read_text())["dtype"] == "float32"  # the tensors' dtype
    tok, gen = AutoTokenizer.from_pretrained(work), GenerationConfig.from_pretrained(work)
    assert (gen.bos_token_id, gen.eos_token_id) == (tok.bos_token_id, tok.eos_token_id) == (0, 1)
