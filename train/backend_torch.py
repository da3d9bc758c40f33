"""The `torch` backend: standard torch.distributed only, device and process-group backend from config.

cpu -> gloo, cuda -> nccl, trn2 -> TorchNeuron's "neuron" device and process group. Nothing else here depends
on the device: the same code path is what the CPU tests run with 2-4 gloo processes.

Checkpoint files hold each rank's *local* tensors (a TP shard, an FSDP shard, or the whole tensor), written
only by the ranks whose copy is unique (under DDP or without data parallelism only data-parallel rank 0
writes model and optimizer), and copied back in place on load. That works the same for plain tensors, DTensors
and DDP-wrapped TP shards, and costs one file per rank; the layout check in checkpoint/train_state.py guarantees the
loading layout is the saving one.
"""

from __future__ import annotations

import os
import random
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from checkpoint.steps import rank_file_name
from core.config import Accelerator
from model.config import DataParallelMode
from train.backend import StepResult
from train.config import Precision
from train.job import TrainJob
from train.optim import build_optimizer, build_scheduler

DEVICE = {
    Accelerator.cpu: ("cpu", "gloo"),
    Accelerator.cuda: ("cuda", "nccl"),
    Accelerator.trn2: ("neuron", "neuron"),
    Accelerator.trn1: ("neuron", "neuron"),
}


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _owned(t: torch.Tensor) -> torch.Tensor:
    """A copy that torch.save writes alone (a shard can be a view into a larger buffer)."""
    t = _local(t).detach()
    return t.clone() if t.untyped_storage().nbytes() != t.numel() * t.element_size() else t


def _to_saveable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return _owned(value).cpu()
    if isinstance(value, dict):
        return {k: _to_saveable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_saveable(v) for v in value)
    return value


class TorchBackend:
    def __init__(self, job: TrainJob):
        self.job = job
        self.derived = job.derived
        self.device_type, self.pg_backend = DEVICE[job.accelerator]
        self.rank, self.world_size, self.local_rank = 0, 1, 0
        self.dp_rank, self.dp_size, self.tp_rank = 0, 1, 0
        self.model: nn.Module
        self.optimizer: torch.optim.Optimizer
        self.scheduler: torch.optim.lr_scheduler.LRScheduler
        self._owns_pg = False

    # -- setup ---------------------------------------------------------------------------------------------
    def setup(self) -> None:
        t = self.job.trainer
        if t.num_threads > 0:
            torch.set_num_threads(t.num_threads)
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        d = self.derived
        needed = d.tensor_parallel * d.pipeline_parallel * d.data_parallel
        if self.world_size != needed:
            raise ValueError(
                f"This training job has {self.world_size} process(es) (WORLD_SIZE), but the parallel plan needs "
                f"tp {d.tensor_parallel} x pp {d.pipeline_parallel} x dp {d.data_parallel} = {needed}. Launch it "
                f"through the launcher (which starts torchrun --nproc_per_node={needed}), or change "
                "parallel.tensor_parallel_degree / parallel.data_parallel_degree to match the process count."
            )
        if self.device_type != "cpu":
            torch.get_device_module(self.device_type).set_device(self.local_rank)
        self.device = (
            torch.device(self.device_type, self.local_rank) if self.device_type != "cpu" else torch.device("cpu")
        )
        if not dist.is_initialized():
            if "MASTER_ADDR" in os.environ:
                dist.init_process_group(self.pg_backend, timeout=timedelta(seconds=t.collective_timeout_s))
            else:
                # One process without torchrun: an in-memory store, no port to pick.
                dist.init_process_group(self.pg_backend, store=dist.HashStore(), rank=0, world_size=1)
            self._owns_pg = True
        from model.parallelize_torch import build_mesh

        self.mesh = build_mesh(d.data_parallel, d.tensor_parallel, self.device_type)
        self.dp_rank, self.dp_size = self.mesh["dp"].get_local_rank(), self.mesh["dp"].size()
        self.tp_rank = self.mesh["tp"].get_local_rank()
        # Identical on every rank: nothing random may differ between replicas (data order is seeded apart).
        random.seed(t.seed)
        torch.manual_seed(t.seed)

    def build(self, resuming: bool) -> None:
        from model import llama3
        from model.parallelize_torch import parallelize

        job = self.job
        model = llama3.build(job.model, device="meta")
        model.to_empty(device=self.device)
        # Same seed on every rank, full weights everywhere, then TP/FSDP slice them (resume overwrites them).
        model.init_weights(job.trainer.seed)
        if job.pretrained_dir is not None and not resuming:
            from checkpoint.hf_load import load_hf

            load_hf(model, job.pretrained_dir, job.model)
        self.full_numel = {n: p.numel() for n, p in model.named_parameters()}
        self.model = parallelize(
            model, mesh=self.mesh, parallel_cfg=job.parallel, bf16=Precision(job.trainer.precision) == Precision.bf16
        )
        self.fsdp = job.parallel.data_parallel_mode == DataParallelMode.fsdp
        bf16 = Precision(job.trainer.precision) == Precision.bf16
        # FSDP's MixedPrecisionPolicy casts parameters itself; otherwise bf16 means autocast around forward.
        self.autocast = bf16 and not self.fsdp
        self._named = self._capture_tensors()
        self.optimizer = build_optimizer(self.model, job.optim)
        self.scheduler = build_scheduler(self.optimizer, job.optim, job.trainer.max_steps)
        self._replicated = self._replica_weights()

    def _capture_tensors(self) -> dict[str, torch.Tensor]:
        """Parameters and persistent buffers by name, taken once before the first forward. Under DDP + TP,
        torch's DTensor-to-local transform re-installs the DTensors as plain attributes in every forward, so
        after it the TP shards are missing from named_parameters() and state_dict(); these references are
        the tensors DDP and the optimizer actually hold."""
        from checkpoint.model_keys import model_key

        # Keyed by the model's own names (no DDP `module.` prefix): checkpoints and export read them as such.
        out: dict[str, torch.Tensor] = {model_key(k): v for k, v in self.model.named_parameters()}
        non_persistent = {
            model_key(f"{m}.{b}" if m else b)
            for m, mod in self.model.named_modules()
            for b in getattr(mod, "_non_persistent_buffers_set", ())
        }
        out.update((model_key(k), v) for k, v in self.model.named_buffers() if model_key(k) not in non_persistent)
        return out

    def _replica_weights(self) -> list[tuple[torch.Tensor, float]]:
        """For the global grad norm: each plain-tensor parameter with 1 / (ranks holding the same values).
        DTensor gradients carry their own placements (which can differ from the parameter's: the TP embedding's
        gradient is replicated), so they are weighed per step in `_grad_sq_norm`."""
        out: list[tuple[torch.Tensor, float]] = []
        for name, p in self._named.items():
            if not isinstance(p, nn.Parameter):
                continue
            # A plain tensor smaller than the model's is a TP shard handed to DDP as a local tensor.
            sharded = p.numel() < self.full_numel.get(name, p.numel())
            out.append((p, 1.0 / (self.dp_size if sharded else self.world_size)))
        return out

    # -- steps ---------------------------------------------------------------------------------------------
    def _forward_loss(self, ids: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        from model.llama3 import loss_fn

        ctx = torch.autocast(self.device_type, dtype=torch.bfloat16) if self.autocast else nullcontext()
        with ctx:
            logits = (model or self.model)(ids)
        return loss_fn(logits, ids)

    def _sync_grads(self, enabled: bool):
        model: Any = self.model  # FSDP2 and DDP add these methods to the module
        if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
            model.set_requires_gradient_sync(enabled)
            return nullcontext()
        if not enabled and hasattr(model, "no_sync"):  # DDP
            return model.no_sync()
        return nullcontext()

    def train_step(self, micro_batches: list[torch.Tensor], stop_requested: bool) -> StepResult:
        self.model.train()
        n = len(micro_batches)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float32)
        for i, ids in enumerate(micro_batches):
            ids = ids.to(self.device, non_blocking=True)
            with self._sync_grads(i == n - 1):
                loss = self._forward_loss(ids)
                (loss / n).backward()
            loss_sum += loss.detach()
        sq = self._grad_sq_norm()
        # One all-reduce per step carries the loss, the grad norm and the stop flag.
        packed = torch.stack(
            [loss_sum / n / self.world_size, sq, torch.tensor(float(stop_requested), device=self.device)]
        )
        dist.all_reduce(packed)
        loss_v, sq_v, stop = packed.tolist()
        grad_norm = sq_v**0.5
        if not (_finite(loss_v) and _finite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            return StepResult(loss_v, grad_norm, stop > 0)
        clip = self.job.optim.grad_clip
        if clip > 0:
            coef = min(1.0, clip / (grad_norm + 1e-6))
            if coef < 1.0:
                with torch.no_grad():
                    # One fused multiply over every local gradient, as torch's clip_grad_norm_ does.
                    torch._foreach_mul_([_local(p.grad) for p, _ in self._replicated if p.grad is not None], coef)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return StepResult(loss_v, grad_norm, stop > 0)

    def _grad_sq_norm(self) -> torch.Tensor:
        from torch.distributed.tensor import DTensor, Replicate

        grads, weights = [], []
        for p, weight in self._replicated:
            g = p.grad
            if g is None:
                continue
            if isinstance(g, DTensor):
                copies = self.world_size // g.device_mesh.size()
                for axis, placement in enumerate(g.placements):
                    if isinstance(placement, Replicate):
                        copies *= g.device_mesh.size(axis)
                weight = 1.0 / copies
            grads.append(_local(g))
            weights.append(weight)
        if not grads:
            return torch.zeros((), device=self.device, dtype=torch.float32)
        with torch.no_grad():
            # One fused norm kernel over all local gradients (clip_grad_norm_'s path), then the weighted sum.
            norms = torch.stack([n.float() for n in torch._foreach_norm(grads)])
            return (norms.pow(2) * torch.tensor(weights, device=norms.device, dtype=torch.float32)).sum()

    @torch.no_grad()
    def eval_loss(self, batches: list[torch.Tensor]) -> tuple[float, int]:
        """Collective: mean next-token loss over every rank's held-out blocks, and how many blocks that is.

        Ranks can hold different numbers of micro-batches (fewer held-out blocks than ranks, or a remainder):
        every rank runs as many forwards as the busiest one (FSDP and TP forwards are collectives), the missing
        ones on a padding batch of weight 0, and the mean is one weighted all-reduce."""
        from torch.nn.parallel import DistributedDataParallel

        self.model.eval()
        # Not through DDP: its forward prepares a gradient reduction that a no-grad forward never finishes
        # (the next training step then fails under DDP + TP). The module inside computes the same loss.
        model = self.model.module if isinstance(self.model, DistributedDataParallel) else self.model
        mine = torch.tensor([len(batches)], device=self.device, dtype=torch.int64)
        dist.all_reduce(mine, op=dist.ReduceOp.MAX)
        rounds = int(mine.item())
        pad = batches[0][:1] if batches else torch.zeros(1, self.job.seq_len, dtype=torch.int64)
        total = torch.zeros(2, device=self.device, dtype=torch.float64)
        for i in range(rounds):
            ids = (batches[i] if i < len(batches) else pad).to(self.device)
            loss = self._forward_loss(ids, model).double()
            if i < len(batches):
                total[0] += loss * ids.shape[0]
                total[1] += ids.shape[0]
        if model is not self.model:
            self._reinstall_parameters(model)
        dist.all_reduce(total)
        loss_sum, count = total.tolist()
        # Every TP rank of a replica counted the same blocks: the ratio is unaffected, the count is not.
        blocks = round(count / self.derived.tensor_parallel)
        return (loss_sum / count if count else float("nan")), blocks

    def _reinstall_parameters(self, module: nn.Module) -> None:
        """Under DDP + TP, each forward leaves fresh Parameter objects on the module (torch's DTensor-to-local
        hook); a no-grad forward's ones are cut off from the tensors DDP reduces and the optimizer steps, so
        the next training step would fail. Put back the captured ones (same storage, same values)."""
        for name, t in self._named.items():
            if not isinstance(t, nn.Parameter):
                continue
            parent, _, attr = name.rpartition(".")
            owner = module.get_submodule(parent) if parent else module
            if getattr(owner, attr, None) is not t:
                delattr(owner, attr)
                setattr(owner, attr, t)

    # -- checkpoint files ----------------------------------------------------------------------------------
    def _tensors(self) -> dict[str, torch.Tensor]:
        return self._named

    def _shard_name(self) -> str:
        return rank_file_name(self.dp_rank if self.fsdp else 0, self.tp_rank, 0)

    def _writes_shards(self) -> bool:
        return self.fsdp or self.dp_rank == 0

    def save_shards(self, folder: Path) -> list[Path]:
        written = []
        if self._writes_shards():
            name = self._shard_name()
            model_state = {k: _owned(v).cpu() for k, v in self._tensors().items()}
            opt = self.optimizer.state_dict()
            for sub, obj in (("model", model_state), ("optim", _to_saveable(opt))):
                path = folder / sub / name
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(obj, path)
                written.append(path)
        rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
        if self.device_type != "cpu":
            rng["device"] = torch.get_device_module(self.device_type).get_rng_state()
        path = folder / "rng" / f"rank_{self.rank:05d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(rng, path)
        written.append(path)
        return written

    def load_shards(self, folder: Path) -> None:
        name = self._shard_name()
        model_file, optim_file = folder / "model" / name, folder / "optim" / name
        from checkpoint.model_keys import model_keys

        saved = model_keys(_load(model_file))  # also the `module.`-prefixed files written before names were fixed
        current = self._tensors()
        if set(saved) != set(current):
            raise ValueError(
                f"The checkpoint file {model_file} holds different tensors than this model "
                f"(missing: {sorted(set(current) - set(saved))[:5]}, unexpected: "
                f"{sorted(set(saved) - set(current))[:5]}). Start a new run_dir for this model."
            )
        with torch.no_grad():
            for k, t in current.items():
                _copy(_local(t), saved[k], model_file, k)
        _init_optimizer_state(self.optimizer)
        saved_opt = _load(optim_file)
        cur = self.optimizer.state_dict()
        if len(saved_opt["param_groups"]) != len(cur["param_groups"]) or set(saved_opt["state"]) != set(cur["state"]):
            raise ValueError(
                f"The checkpoint file {optim_file} does not match this optimizer's parameters. "
                "Start a new run_dir for this model."
            )
        with torch.no_grad():
            for idx, state in cur["state"].items():
                for key, t in state.items():
                    _copy(_local(t), saved_opt["state"][idx][key], optim_file, f"state[{idx}].{key}")
        for group, sg in zip(self.optimizer.param_groups, saved_opt["param_groups"]):
            group.update({k: v for k, v in sg.items() if k != "params"})
        rng = _load(folder / "rng" / f"rank_{self.rank:05d}.pt")
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        if "device" in rng:
            torch.get_device_module(self.device_type).set_rng_state(rng["device"])

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def teardown(self) -> None:
        if self._owns_pg and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_pg = False


def _finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file; verify() normally catches this first
        raise ValueError(
            f"The checkpoint file {path} cannot be read ({type(exc).__name__}: {exc}). Delete its "
            f"step folder {path.parent.parent} to resume from the checkpoint before it."
        ) from None


def _copy(dst: torch.Tensor, src: Any, file: Path, key: str) -> None:
    if not isinstance(src, torch.Tensor) or src.shape != dst.shape:
        shape = tuple(src.shape) if isinstance(src, torch.Tensor) else type(src).__name__
        raise ValueError(
            f"The checkpoint file {file} has {key} of shape {shape}, this model expects "
            f"{tuple(dst.shape)}. It was made with another model or layout; start a new run_dir."
        )
    dst.copy_(src)


def _init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create the optimizer's state tensors (AdamW makes them lazily) so a checkpoint can be copied into them:
    one step with zero gradients and lr 0 changes no parameter (Adam's update is 0 / (0 + eps) * 0)."""
    if optimizer.state:
        return
    lrs = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = 0.0
        for p in g["params"]:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for g, lr in zip(optimizer.param_groups, lrs):
        g["lr"] = lr
