"""The `nxd` backend: neuronx-distributed (NxD) on trn1 (XLA), or in NxD's own CPU mode (cluster.accelerator=cpu:
NXD_CPU_MODE=1, eager CPU tensors, gloo), where the tests run it against the torch backend.

Written against NxD's trainer API as its Llama example uses it: `neuronx_distributed_config` from our config
(`nxd_config_dict`), `initialize_parallel_model` with NxD's parallel layers at the model's seams
(model/parallelize_nxd.py, driven by model/nxd_plan.py), `NxDPPModel` settings for pp > 1,
`initialize_parallel_optimizer` (ZeRO-1, fp32 master weights and gradient accumulation under bf16), NxD's gradient
clipping, and checkpoints through `nxd.save_checkpoint` / `load_checkpoint` (xser), whose `<root>/step_N/` folders
and `done` markers are NxD's own: `NxDCheckpoints` keeps the loop's one policy (latest = newest complete, keep_last,
resume) over them. Initial weights: the same seeded full draw as the torch backend (sliced per rank by the
converter's layout, checkpoint/nxd_layout.py), NxD's meta-device init for large models, or the `convert` stage's
shards (`<checkpoints>/pretrained_weight`).

Importing this module needs neither NxD nor torch-xla; `setup()` says to install the `neuron` extra when NxD is
absent or is the package index's placeholder. Loss and gradient norm are returned as device tensors: the loop
reads them at its log interval only (a read is a host sync on XLA).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from checkpoint import steps
from core.config import Accelerator
from core.nxd_args import nxd_config
from model.config import Init
from train.backend import StepResult
from train.config import Precision
from train.job import TrainJob
from train.optim import build_scheduler, param_groups

INSTALL_HINT = (
    "Install the `neuron` extra on the trn1 nodes (pip install -e '.[neuron]' with AWS's Neuron pip repository "
    "as extra index; see the README section 'Trainium / HyperPod'), or run the torch backend "
    "(trainer.backend=torch, cluster.accelerator=trn2|cuda|cpu)."
)


class NxDUnavailable(ImportError):
    pass


def import_nxd() -> Any:
    """neuronx_distributed, or NxDUnavailable naming the `neuron` extra (absent, placeholder, or broken stack)."""
    try:
        import neuronx_distributed as nxd
        from neuronx_distributed import trainer  # noqa: F401  (the placeholder package has no trainer)
    except Exception as exc:  # ImportError, or the placeholder's own error at import
        raise NxDUnavailable(
            f"trainer.backend=nxd needs neuronx-distributed (NxD) with torch-xla, which do not import here "
            f"({type(exc).__name__}: {exc}). {INSTALL_HINT}"
        ) from None
    return nxd


def nxd_config_dict(job: TrainJob) -> dict[str, Any]:
    """The keyword arguments of `neuronx_distributed_config` for this job (core/nxd_args.py:nxd_config, which the
    plan prints from too)."""
    return nxd_config(job.model, job.parallel, job.trainer, job.optim, job.derived)


class NxDBackend:
    def __init__(self, job: TrainJob):
        self.job = job
        self.derived = job.derived
        self.rank, self.world_size, self.local_rank = 0, 1, 0
        self.dp_rank, self.dp_size, self.tp_rank, self.pp_rank = 0, 1, 0, 0
        self.scheduler: torch.optim.lr_scheduler.LRScheduler
        self._owns_pg = False
        self.checkpoints = NxDCheckpoints(self)

    # -- setup ---------------------------------------------------------------------------------------------
    def setup(self) -> None:
        job, d = self.job, self.derived
        if job.accelerator == Accelerator.cpu:
            # NxD's own CPU mode (eager CPU tensors, gloo): how its tests and ours run without Trainium.
            os.environ.setdefault("NXD_CPU_MODE", "1")
        nxd = import_nxd()
        from neuronx_distributed.parallel_layers import parallel_state as ps
        from neuronx_distributed.utils import cpu_mode, get_device

        self.cpu_mode = cpu_mode()
        if job.trainer.num_threads > 0:
            torch.set_num_threads(job.trainer.num_threads)
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        needed = d.tensor_parallel * d.pipeline_parallel * d.data_parallel
        if self.world_size != needed:
            raise ValueError(
                f"This training job has {self.world_size} process(es) (WORLD_SIZE), but the parallel plan needs "
                f"tp {d.tensor_parallel} x pp {d.pipeline_parallel} x dp {d.data_parallel} = {needed}. Launch it "
                "through the launcher (torchrun per node), or change parallel.* to match the process count."
            )
        if not dist.is_initialized():
            if self.cpu_mode:
                backend = "gloo"
            else:
                import torch_xla.distributed.xla_backend  # noqa: F401  (registers the "xla" process group)

                backend = "xla"
            if "MASTER_ADDR" in os.environ:
                dist.init_process_group(backend)
            else:
                dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
            self._owns_pg = True
        # Host-side flags (the stop request) go over gloo, never through the device graph.
        self.control = None if self.cpu_mode or self.world_size == 1 else dist.new_group(backend="gloo")
        self.nxd_config = nxd.trainer.neuronx_distributed_config(**nxd_config_dict(job))
        self.device = get_device()
        self.dp_rank, self.dp_size = ps.get_data_parallel_rank(), ps.get_data_parallel_size()
        self.tp_rank = ps.get_tensor_model_parallel_rank()
        self.pp_rank = ps.get_pipeline_model_parallel_rank()
        self.last_stage = self.pp_rank == d.pipeline_parallel - 1
        random.seed(job.trainer.seed)
        torch.manual_seed(job.trainer.seed)

    # -- model ---------------------------------------------------------------------------------------------
    def _dtype(self) -> torch.dtype:
        bf16 = Precision(self.job.trainer.precision) == Precision.bf16
        return torch.bfloat16 if bf16 and not self.cpu_mode else torch.float32

    def _model_fn(self, resuming: bool):
        from model import parallelize_nxd as pn

        job, p = self.job, self.job.parallel
        sp = self.nxd_config["sequence_parallel"]
        nxd_plan = pn.plan_for(
            job.model, self.derived.tensor_parallel, p.kv_size_multiplier, p.qkv_linear, p.fuse_qkv, sp
        )
        meta = self.nxd_config["model_init_config"]["meta_device_init"]

        def model_fn():
            model = pn.build(job.model, nxd_plan, dtype=self._dtype(), device=torch.device("meta") if meta else None)
            if not meta and not resuming and job.model.init != Init.pretrained:
                model.load_state_dict(pn.from_nxd_names(self._seeded_rank_state()), strict=True)
            return model

        return model_fn

    def _layout(self) -> Any:
        from checkpoint.nxd_layout import Arch, Layout

        m, p = self.job.model, self.job.parallel
        arch = Arch(
            m.vocab_size,
            m.hidden_size,
            m.intermediate_size,
            m.num_hidden_layers,
            m.num_attention_heads,
            m.num_key_value_heads,
            m.tie_word_embeddings,
        )
        return arch, Layout(self.derived.tensor_parallel, 1, p.kv_size_multiplier, p.qkv_linear, p.fuse_qkv)

    def _seeded_rank_state(self) -> dict[str, torch.Tensor]:
        """This TP rank's tensors (NxD names) of the torch backend's seeded full initialisation, laid out by the
        converter's own plan: same weights as `trainer.backend=torch`, same layout as converted HF weights."""
        from checkpoint.hf_adapter import to_hf
        from checkpoint.nxd_layout import rank_plan
        from model import llama3

        full = llama3.build(self.job.model, device="meta")
        full.to_empty(device="cpu")
        full.init_weights(self.job.trainer.seed)
        hf = to_hf(full.state_dict())
        arch, layout = self._layout()
        return {rt.key: assemble(rt, hf) for rt in rank_plan(arch, layout, self.tp_rank, 0)}

    def build(self, resuming: bool) -> None:
        from neuronx_distributed.trainer import initialize_parallel_model, initialize_parallel_optimizer

        from model import parallelize_nxd as pn
        from model.llama3 import TransformerBlock

        job, o = self.job, self.job.optim
        nc = self.nxd_config
        if nc["activation_checkpoint_config"] == "selective":
            # NxD's example recomputes attention's core and the MLP (its CoreAttention / LlamaMLP).
            from model.llama3 import FeedForward

            nc["activation_checkpoint_config"] = FeedForward
        if nc["model_init_config"]["meta_device_init"]:
            nc["model_init_config"]["param_init_fn"] = init_nxd_weights
        if nc["pipeline_parallel_size"] > 1:
            nc["pipeline_config"]["transformer_layer_cls"] = TransformerBlock
            nc["pipeline_config"]["leaf_module_cls"] = ["RMSNorm", "VocabParallelLoss", "Rotary"]
        self.model = initialize_parallel_model(nc, self._model_fn(resuming))
        pn.mark_weight_qkv(self.model)
        if job.model.init == Init.pretrained and not resuming:
            # The convert stage's shards; the optimizer (and ZeRO-1's fp32 master copies) is made after this,
            # from the loaded weights, which is what NxD's example gets by calling init_zero() after loading.
            self.checkpoints.load_model(self._pretrained_folder())
        self.optimizer = initialize_parallel_optimizer(
            nc,
            torch.optim.AdamW,
            param_groups(self.model, o.weight_decay),
            lr=o.lr,
            betas=(o.beta1, o.beta2),
            eps=o.eps,
            weight_decay=o.weight_decay,
        )
        self.scheduler = build_scheduler(self.optimizer, o, job.trainer.max_steps)

    def _pretrained_folder(self) -> Path:
        if self.job.converted_dir is None:
            raise ValueError("model.init=pretrained on the nxd backend needs the convert stage's output folder")
        # <run_dir>/checkpoints/pretrained_weight: the convert stage's output, where NxD's trainer loads it.
        return self.job.converted_dir

    # -- steps ---------------------------------------------------------------------------------------------
    def _reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean over data-parallel replicas of a per-replica scalar that the last pipeline stage holds (every TP
        rank of it the same): one all-reduce over the world, zeros elsewhere."""
        d = self.derived
        v = value.detach().float() / (d.data_parallel * d.tensor_parallel)
        if not self.last_stage:
            v = torch.zeros_like(v)
        return _all_reduce_sum(v, self.cpu_mode)

    def _stop_flag(self, requested: bool) -> bool:
        if self.world_size == 1:
            return requested
        flag = torch.tensor([float(requested)])
        dist.all_reduce(flag, group=self.control)
        return bool(flag.item() > 0)

    def train_step(self, micro_batches: list[torch.Tensor], stop_requested: bool) -> StepResult:
        from model.parallelize_nxd import shifted_labels

        self.model.train()
        if self.derived.pipeline_parallel > 1:
            ids = torch.cat(micro_batches).to(self.device)
            loss = self.model.run_train(input_ids=ids, labels=shifted_labels(ids))
            mean = loss if loss is not None else torch.zeros((), device=self.device)
        else:
            n = len(micro_batches)
            total = torch.zeros((), device=self.device)
            for ids in micro_batches:
                ids = ids.to(self.device)
                loss = self.model(ids, shifted_labels(ids))
                (loss / n).backward()
                total = total + loss.detach()
            mean = total / n
        self.optimizer.step()  # NxD: DP all-reduce (or ZeRO-1 reduce-scatter), global-norm clipping, AdamW
        grad_norm = self.optimizer.grad_norm
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return StepResult(self._reduce_mean(mean), grad_norm, self._stop_flag(stop_requested))

    @torch.no_grad()
    def eval_loss(self, batches: list[torch.Tensor]) -> tuple[float, int]:
        from model.parallelize_nxd import shifted_labels

        self.model.eval()
        total = torch.zeros((), device=self.device)
        count = 0
        if self.derived.pipeline_parallel > 1:
            # NxDPPModel splits its input into num_microbatches: feed it one replica batch at a time.
            k = self.derived.micro_batches
            batches = [torch.cat(batches[i : i + k]) for i in range(0, len(batches) - k + 1, k)]
        for ids in batches:
            ids = ids.to(self.device)
            if self.derived.pipeline_parallel > 1:
                loss = self.model.run_eval(input_ids=ids, labels=shifted_labels(ids))
                loss = loss if loss is not None else torch.zeros((), device=self.device)
            else:
                loss = self.model(ids, shifted_labels(ids))
            total = total + loss.detach().float() * ids.shape[0]
            count += ids.shape[0]
        loss_sum = float(self._reduce_mean(total))
        blocks = count * self.derived.data_parallel
        return (loss_sum * self.derived.data_parallel / blocks if blocks else float("nan")), blocks

    # -- checkpoint files (NxD writes them; see NxDCheckpoints) ---------------------------------------------
    def save_shards(self, folder: Path) -> list[Path]:
        raise NotImplementedError("the nxd backend saves through NxDCheckpoints (nxd.save_checkpoint)")

    def load_shards(self, folder: Path) -> None:
        raise NotImplementedError("the nxd backend loads through NxDCheckpoints (nxd.load_checkpoint)")

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier(group=self.control)

    def teardown(self) -> None:
        if self._owns_pg and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_pg = False


def _all_reduce_sum(v: torch.Tensor, cpu_mode: bool) -> torch.Tensor:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return v
    if cpu_mode:
        dist.all_reduce(v)
        return v
    import torch_xla.core.xla_model as xm

    return xm.all_reduce(xm.REDUCE_SUM, v)


def assemble(rt: Any, hf: dict[str, torch.Tensor]) -> torch.Tensor:
    """One rank tensor of checkpoint/nxd_layout.py's plan from full HF tensors (the converter's rule, in torch)."""
    parts = []
    for pc in rt.pieces:
        t = hf[pc.hf_key]
        if pc.dim == -1:
            parts.append(t)
        elif pc.dim == 0:
            parts += [t[a:b] for a, b in pc.ranges]
        else:
            parts.append(torch.cat([t[:, a:b] for a, b in pc.ranges], dim=1))
    out = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
    assert tuple(out.shape) == tuple(rt.shape), (rt.key, tuple(out.shape), rt.shape)
    return out.contiguous().clone()


def init_nxd_weights(module: torch.nn.Module, device: torch.device) -> None:
    """NxD's meta-device `param_init_fn` (as its Llama example's `init_weights`): norms 1, NxD layers their own
    per-shard initialisation, the fused QKV weight re-marked as tensor-parallel afterwards."""
    from neuronx_distributed.modules.qkv_linear import GQAQKVColumnParallelLinear
    from neuronx_distributed.parallel_layers import layers

    from model.llama3 import RMSNorm
    from model.parallelize_nxd import mark_weight_qkv

    if isinstance(module, RMSNorm):
        module.weight.data.fill_(1.0)
    elif isinstance(module, (layers.ParallelEmbedding, layers.ColumnParallelLinear, layers.RowParallelLinear)):
        module.init_weight_cpu()
    elif isinstance(module, GQAQKVColumnParallelLinear):
        module.initialize_weight_biases()
        mark_weight_qkv(module)


class NxDCheckpoints:
    """The loop's checkpoint policy over NxD's own storage: `nxd.save_checkpoint(root, "step_N", ...)` writes
    `<root>/step_N/{model,optim}/dp_rank_XX_tp_rank_YY_pp_rank_ZZ.pt` (xser) and its `done` marker; latest = the
    newest step_N with it (checkpoint/steps.py), keep_last prunes older complete ones after a save completes, and
    a folder without `done` (a killed save) is never loaded and is removed at the next start. Our temp + rename
    does not wrap it: NxD's async save writes `done` after the fact. Same functions as checkpoint.train_state."""

    def __init__(self, backend: NxDBackend):
        self.backend = backend

    @staticmethod
    def clean_stale(root: Path) -> None:
        for p in root.iterdir() if root.is_dir() else ():
            if steps.STEP_RE.match(p.name) and p.is_dir() and not any((p / m).exists() for m in steps.DONE_MARKERS):
                shutil.rmtree(p, ignore_errors=True)

    @staticmethod
    def latest(root: Path) -> Path | None:
        return steps.latest(root)

    def save(
        self, root: Path, step: int, *, io: Any, compat: dict[str, Any], state: dict[str, Any], keep_last: int
    ) -> Path:
        import neuronx_distributed as nxd

        from model.parallelize_nxd import to_nxd_names

        b = self.backend
        user = {"step": step, "layout": compat, **state, "rng": {"python": random.getstate()}}
        model_state = to_nxd_names(b.model.state_dict())
        nxd.trainer.save_checkpoint(
            str(root), f"step_{step}", model=model_state, optimizer=b.optimizer, user_content=user, use_xser=True
        )
        b.barrier()
        if b.rank == 0 and keep_last > 0:
            for _, old in steps.complete_steps(root)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        b.barrier()
        return steps.step_dir(root, step)

    def load(self, folder: Path, *, io: Any, compat: dict[str, Any]) -> dict[str, Any]:
        import neuronx_distributed as nxd

        # The compatibility record first (user content only): a mismatch is reported before any weight is touched.
        user = nxd.trainer.load_checkpoint(str(folder.parent), tag=folder.name)
        if user is None or user.get("layout") != compat:
            saved = None if user is None else user.get("layout")
            raise ValueError(
                f"The checkpoint {folder} was written for another model or layout ({saved}) than this run "
                f"({compat}). Start a new run_dir for this configuration."
            )
        # Model weights before the optimizer: ZeRO-1 keeps its own fp32 copies of the parameters (its shards),
        # made from the parameters by init_zero(), and its step writes them back into the model. The checkpoint
        # holds no such copies (use_master_weights_in_ckpt is off), so they must be re-made from the loaded
        # weights, as NxD's example does after loading pretrained weights; then the optimizer state (AdamW's
        # moments) is loaded onto those shards. Loaded the other way round, the shards stay those of the fresh
        # build and the first step after resume overwrites the loaded weights with them.
        self.load_model(folder)
        if self.backend.nxd_config["optimizer_config"]["zero_one_enabled"]:
            self.backend.optimizer.optimizer.init_zero()
        nxd.trainer.load_checkpoint(str(folder.parent), tag=folder.name, optimizer=self.backend.optimizer)
        random.setstate(user["rng"]["python"])
        return user

    def load_model(self, folder: Path) -> None:
        import neuronx_distributed as nxd

        from model.parallelize_nxd import from_nxd_names, mark_weight_qkv

        holder: dict[str, Any] = {}
        nxd.trainer.load_checkpoint(str(folder.parent), tag=folder.name, model=holder)
        self.backend.model.load_state_dict(from_nxd_names(holder), strict=True)
        mark_weight_qkv(self.backend.model)
