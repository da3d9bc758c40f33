"""Tensor and data parallelism of the torch backend on CPU/gloo, with real torchrun processes.

Each test launches this very file under `torchrun --standalone` (a free port every time); `__main__` below is
the per-rank worker. The reference is the unsharded model built from the same seed in every rank.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Small but with every dimension divisible by tp=2; 2 layers keep it to seconds on 2 oversubscribed cores.
ARCH = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def torchrun(nproc: int, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    proc = subprocess.run([*cmd, __file__, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout


@pytest.mark.distributed
def test_tp2_matches_unsharded_and_holds_half_of_each_weight(tmp_path):
    out = torchrun(2, "layouts", "1", "2", str(tmp_path))
    assert "OK dp=1 tp=2 ddp" in out and "OK dp=1 tp=2 fsdp" in out


@pytest.mark.distributed
@pytest.mark.slow
def test_tp2_dp2_matches_unsharded_with_ddp_and_fsdp(tmp_path):
    out = torchrun(4, "layouts", "2", "2", str(tmp_path))
    assert "OK dp=2 tp=2 ddp" in out and "OK dp=2 tp=2 fsdp" in out


@pytest.mark.distributed
def test_load_and_save_hf_with_tp_sharded_parameters(tmp_path):
    out = torchrun(2, "hf", str(tmp_path))
    assert "OK hf" in out
    assert (tmp_path / "export" / "model.safetensors").is_file()


# ----------------------------------------------------------------------------------------------- worker


def _setup():
    import torch.distributed as dist

    from model.config import ModelConfig

    dist.init_process_group("gloo")
    return ModelConfig(**ARCH)


def _teardown():
    import torch.distributed as dist

    # gloo's worker threads can still hold finished FSDP2/DTensor work objects; if the interpreter finalises
    # them the process sometimes aborts ("terminate called without an active exception", roughly 1 run in
    # 10; pytorch/pytorch#179291). Synchronise, destroy the groups, then leave without finalisation.
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


SHARDED = ("wq", "wk", "wv", "wo", "w1", "w2", "w3", "tok_embeddings", "output")


def _tp_dim(name: str) -> int | None:
    """The dimension TP shards a parameter on (None: replicated): rows for column-wise, columns for row-wise."""
    if not any(name.endswith(f"{s}.weight") for s in SHARDED):
        return None
    return 1 if name.endswith(("wo.weight", "w2.weight")) else 0


def _local_view(full, name: str, tp: int, tp_rank: int):
    dim = _tp_dim(name)
    return full if dim is None else full.chunk(tp, dim=dim)[tp_rank]


def _local(t):
    return t.to_local() if hasattr(t, "to_local") else t


def _check_local_shards(model, ref, mesh, mode: str) -> None:
    """Every TP-sharded weight holds 1/tp of the full tensor on each TP rank (FSDP shards that 1/dp further)."""
    from torch.distributed.tensor import DTensor, Shard

    tp, dp = mesh["tp"].size(), mesh["dp"].size()
    full = dict(ref.named_parameters())
    sharded = 0
    for name, p in model.named_parameters():
        dim = _tp_dim(name)
        local = p.to_local() if isinstance(p, DTensor) else p  # DDP exposes TP's local shards as plain tensors
        if isinstance(p, DTensor) and dim is not None:
            assert p.placements[p.device_mesh.mesh_dim_names.index("tp")] == Shard(dim), (name, p.placements)
        want = _local_view(full[name], name, tp, mesh["tp"].get_local_rank()).shape
        if mode == "fsdp":
            assert local.numel() * dp == want.numel(), (name, tuple(local.shape), tuple(want))
        else:
            assert local.shape == want, (name, tuple(local.shape), tuple(want))
        sharded += dim is not None
    assert sharded == 7 * ref.cfg.num_hidden_layers + 2, sharded


def worker_layouts(dp: int, tp: int, folder: str) -> None:
    import copy

    import torch
    import torch.distributed as dist
    from safetensors.torch import load_file

    from checkpoint.hf_adapter import to_hf
    from checkpoint.hf_load import save_hf
    from model.config import ParallelConfig
    from model.llama3 import build, loss_fn
    from model.parallelize_torch import build_mesh, parallelize

    cfg = _setup()
    mesh = build_mesh(dp, tp)
    ref = build(cfg)
    ref.init_weights(seed=0)
    ids = torch.randint(0, cfg.vocab_size, (2 * dp, 16), generator=torch.Generator().manual_seed(1))
    ref_logits = ref(ids)
    ref_loss = loss_fn(ref_logits, ids)
    ref_loss.backward()
    mine = ids.chunk(dp)[mesh["dp"].get_local_rank()]
    for mode in ("ddp", "fsdp"):
        model = copy.deepcopy(ref)
        model.zero_grad(set_to_none=True)
        pcfg = ParallelConfig(tensor_parallel_degree=tp, data_parallel_degree=dp, data_parallel_mode=mode)
        trained = parallelize(model, mesh=mesh, parallel_cfg=pcfg)
        _check_local_shards(model, ref, mesh, mode)
        # DDP + TP re-installs DTensor views in every forward; the optimizer and the checkpoint keep the tensors
        # taken before it (as train/backend_torch.py does).
        named = dict(model.named_parameters())
        logits = trained(mine)
        diff = (logits - ref_logits.chunk(dp)[mesh["dp"].get_local_rank()]).abs().max().item()
        assert diff < 1e-5, (mode, diff)
        loss = loss_fn(logits, mine)
        loss.backward()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        assert abs(mean.item() / (dp * tp) - ref_loss.item()) < 1e-5
        # After DP's gradient averaging every shard's gradient equals the unsharded gradient's slice.
        ref_params = dict(ref.named_parameters())  # by name: DDP's TP transform re-registers parameters
        for name, p in named.items():
            r = ref_params[name]
            # Gradients (hence optimizer state) are sharded like their parameters, the embedding included.
            assert _local(p.grad).shape == _local(p).shape, (mode, name, _local(p.grad).shape, _local(p).shape)
            if hasattr(p.grad, "full_tensor"):
                g, want = p.grad.full_tensor(), r.grad
            else:
                g, want = p.grad, _local_view(r.grad, name, tp, mesh["tp"].get_local_rank())
            assert torch.allclose(g, want, atol=1e-5), (mode, name, (g - want).abs().max().item())
        # Export gathers every layout back to full HF tensors (rank 0 writes).
        save_hf(named if mode == "ddp" else trained, cfg, Path(folder) / mode)
        dist.barrier()
        if dist.get_rank() == 0:
            saved = load_file(str(Path(folder) / mode / "model.safetensors"))
            assert all(torch.equal(saved[k], v) for k, v in to_hf(ref.state_dict()).items())
        if dist.get_rank() == 0:
            print(f"OK dp={dp} tp={tp} {mode}", flush=True)
    _teardown()


def worker_hf(folder: str) -> None:
    import torch
    import torch.distributed as dist

    from checkpoint.hf_load import load_hf, save_hf
    from model.config import ParallelConfig
    from model.llama3 import build
    from model.parallelize_torch import build_mesh, parallelize

    cfg = _setup()
    src = Path(folder) / "src"
    if dist.get_rank() == 0:
        ref = build(cfg)
        ref.init_weights(seed=3)
        save_hf(ref, cfg, src, max_shard_bytes=100_000)
    dist.barrier()
    ref = build(cfg)
    load_hf(ref, src)
    model = build(cfg)  # other random weights: the load must overwrite every shard
    pcfg = ParallelConfig(tensor_parallel_degree=2, data_parallel_degree=1)
    model = parallelize(model, mesh=build_mesh(1, 2), parallel_cfg=pcfg)
    load_hf(model, src)
    ids = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    assert (model(ids) - ref(ids)).abs().max().item() < 1e-5
    summary = save_hf(model, cfg, Path(folder) / "export")
    assert summary["written"] == (dist.get_rank() == 0)
    dist.barrier()
    again = build(cfg)
    load_hf(again, Path(folder) / "export")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ref.state_dict().values()))
    if dist.get_rank() == 0:
        print("OK hf", flush=True)
    _teardown()


if __name__ == "__main__":
    if sys.argv[1] == "layouts":
        worker_layouts(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        worker_hf(sys.argv[2])
