"""Every check of a composed config, before anything is written or queued, reporting all problems at once.

Each problem is one paragraph naming the key, the bad value, where the value came from (a group option, the
recipe, or the command line), the rule, and a fix. Torch-free: only the standard library and the schema.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path

from core import paths
from core.arithmetic import derive
from core.config import Accelerator, ExecutorKind
from core.marker import is_complete
from core.stages import SPECS, Stage, applicable, needs_download, selected
from data.config import DataSource
from launcher.compose import Composed
from model.config import Init
from train.config import Backend


@dataclass
class Problem:
    key: str
    value: object
    rule: str
    fix: str

    def render(self, composed: Composed) -> str:
        return f"{self.key}={_show(self.value)} (from {composed.source(self.key)}): {self.rule} Fix: {self.fix}"


def _show(v: object) -> str:
    if hasattr(v, "value"):
        return str(v.value)
    if isinstance(v, list):
        return "[" + ",".join(_show(x) for x in v) + "]"
    return str(v)


def _divisors(n: int, limit: int = 64) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def validate(composed: Composed) -> list[str]:
    cfg = composed.cfg
    d = derive(cfg)
    problems: list[Problem] = []
    add = problems.append
    m, p, t, o, c, data = cfg.model, cfg.parallel, cfg.trainer, cfg.optim, cfg.cluster, cfg.data
    tp, pp = p.tensor_parallel_degree, p.pipeline_parallel_degree

    # --- model architecture
    if m.hidden_size % m.num_attention_heads:
        add(
            Problem(
                "model.hidden_size",
                m.hidden_size,
                f"must be divisible by model.num_attention_heads ({m.num_attention_heads}) to give the head dim.",
                f"use a multiple of {m.num_attention_heads}, e.g. {m.num_attention_heads * 64}.",
            )
        )
    if m.num_key_value_heads <= 0 or m.num_attention_heads % max(m.num_key_value_heads, 1):
        add(
            Problem(
                "model.num_key_value_heads",
                m.num_key_value_heads,
                f"must divide model.num_attention_heads ({m.num_attention_heads}) (grouped-query attention).",
                f"pick one of {_divisors(m.num_attention_heads)}.",
            )
        )
    if m.rope_scaling.factor < 0:
        add(
            Problem(
                "model.rope_scaling.factor",
                m.rope_scaling.factor,
                "must be 0 (no scaling, Llama 3.0) or positive (Llama 3.1: 8.0).",
                "set 0 or 8.0.",
            )
        )
    if m.init == Init.pretrained and not m.pretrained_path:
        add(
            Problem(
                "model.init",
                m.init,
                "pretrained needs model.pretrained_path (a hub id or a local HF folder).",
                "set model.pretrained_path=meta-llama/Meta-Llama-3-8B (or a folder), or model.init=scratch.",
            )
        )
    if m.init == Init.pretrained and m.pretrained_path and not paths.is_hub_id(m.pretrained_path):
        path = Path(os.path.expanduser(m.pretrained_path))
        if not (path / "config.json").is_file():
            add(
                Problem(
                    "model.pretrained_path",
                    m.pretrained_path,
                    f"is neither a hub id (org/name) nor a folder with config.json ({path} "
                    f"{'has no config.json' if path.exists() else 'does not exist'}).",
                    "point it at a Hugging Face model folder (config.json + *.safetensors) or use a hub id.",
                )
            )

    # --- parallel layout
    for key, val in (("parallel.tensor_parallel_degree", tp), ("parallel.pipeline_parallel_degree", pp)):
        if val < 1:
            add(Problem(key, val, "must be at least 1.", f"set {key}=1."))
    if p.data_parallel_degree == 0 or p.data_parallel_degree < -1:
        add(
            Problem(
                "parallel.data_parallel_degree",
                p.data_parallel_degree,
                "must be -1 (derived from the world size) or a positive number.",
                "set parallel.data_parallel_degree=-1.",
            )
        )
    if p.kv_size_multiplier < 1:
        add(
            Problem(
                "parallel.kv_size_multiplier",
                p.kv_size_multiplier,
                "must be at least 1.",
                "set parallel.kv_size_multiplier=1.",
            )
        )
    if p.activation_checkpointing not in ("none", "selective", "full"):
        add(
            Problem(
                "parallel.activation_checkpointing",
                p.activation_checkpointing,
                "must be one of none, selective, full.",
                "set parallel.activation_checkpointing=selective.",
            )
        )
    if tp >= 1 and m.num_attention_heads % tp:
        add(
            Problem(
                "parallel.tensor_parallel_degree",
                tp,
                f"must divide model.num_attention_heads ({m.num_attention_heads}, model={m.name}) so every "
                f"rank holds whole query heads.",
                f"pick one of {_divisors(m.num_attention_heads)}.",
            )
        )
    if d.backend == Backend.nxd and tp >= 1 and p.kv_size_multiplier >= 1:
        if tp % p.kv_size_multiplier:
            add(
                Problem(
                    "parallel.kv_size_multiplier",
                    p.kv_size_multiplier,
                    f"must divide parallel.tensor_parallel_degree ({tp}) (NxD GQAQKVColumnParallelLinear).",
                    f"pick one of {_divisors(tp)}.",
                )
            )
        elif p.qkv_linear and m.num_key_value_heads * p.kv_size_multiplier != tp:
            want = tp // m.num_key_value_heads if tp % m.num_key_value_heads == 0 else None
            add(
                Problem(
                    "parallel.kv_size_multiplier",
                    p.kv_size_multiplier,
                    f"model.num_key_value_heads ({m.num_key_value_heads}) x kv_size_multiplier must equal "
                    f"parallel.tensor_parallel_degree ({tp}) so every rank holds exactly one KV head "
                    f"(what NxD's converter and GQAQKVColumnParallelLinear need): "
                    f"{m.num_key_value_heads} x {p.kv_size_multiplier} = "
                    f"{m.num_key_value_heads * p.kv_size_multiplier} != {tp}.",
                    f"set parallel.kv_size_multiplier={want}."
                    if want
                    else f"use a tensor_parallel_degree that is a multiple of {m.num_key_value_heads}.",
                )
            )
    if d.backend == Backend.torch:
        if tp >= 1 and m.num_key_value_heads % tp:
            add(
                Problem(
                    "parallel.tensor_parallel_degree",
                    tp,
                    f"must divide model.num_key_value_heads ({m.num_key_value_heads}) on the torch backend, "
                    f"which shards K/V heads without replication.",
                    f"pick one of {_divisors(m.num_key_value_heads)}, or run on trn1 (NxD replicates K/V).",
                )
            )
        if pp > 1:
            add(
                Problem(
                    "parallel.pipeline_parallel_degree",
                    pp,
                    "pipeline parallelism is not available on the torch backend yet (only on NxD, trn1).",
                    "set parallel.pipeline_parallel_degree=1, or cluster.accelerator=trn1.",
                )
            )
        if p.kv_size_multiplier > 1 and c.accelerator != Accelerator.trn1:
            add(
                Problem(
                    "parallel.kv_size_multiplier",
                    p.kv_size_multiplier,
                    "K/V replication is an NxD feature; the torch backend does not use it.",
                    "set parallel.kv_size_multiplier=1 (or use cluster.accelerator=trn1).",
                )
            )
    if d.backend == Backend.nxd and c.accelerator != Accelerator.trn1:
        add(
            Problem(
                "trainer.backend",
                cfg.trainer.backend,
                f"the nxd backend runs only on trn1 (XLA), not on cluster.accelerator={c.accelerator.value}.",
                "set trainer.backend=auto (torch on cpu/cuda/trn2).",
            )
        )
    if pp >= 1 and m.num_hidden_layers % pp:
        add(
            Problem(
                "parallel.pipeline_parallel_degree",
                pp,
                f"must divide model.num_hidden_layers ({m.num_hidden_layers}) so every stage gets the same "
                f"number of layers.",
                f"pick one of {_divisors(m.num_hidden_layers)}.",
            )
        )

    # --- cluster and world size
    if c.nodes < 1:
        add(Problem("cluster.nodes", c.nodes, "must be at least 1.", "set cluster.nodes=1."))
    if c.executor == ExecutorKind.local and c.nodes > 1:
        add(
            Problem(
                "cluster.nodes",
                c.nodes,
                "the local executor runs on this machine only (one node).",
                "set cluster.nodes=1, or use cluster=slurm / cluster=hyperpod.",
            )
        )
    if c.devices_per_node < 0:
        add(
            Problem(
                "cluster.devices_per_node",
                c.devices_per_node,
                "must be 0 (from the accelerator) or positive.",
                "set cluster.devices_per_node=0.",
            )
        )
    if c.auto_resume and c.executor != ExecutorKind.slurm:
        add(
            Problem(
                "cluster.auto_resume",
                c.auto_resume,
                "auto-resume is a HyperPod Slurm option (srun "
                "--auto-resume=1); it has no meaning for the local executor.",
                "set cluster.auto_resume=false.",
            )
        )
    if tp >= 1 and pp >= 1 and c.nodes >= 1 and d.world_size > 0:
        if d.world_size % (tp * pp):
            need = tp * pp
            add(
                Problem(
                    "cluster.nodes",
                    c.nodes,
                    f"tp ({tp}) x pp ({pp}) = {need} must divide the world size: {c.nodes} nodes x "
                    f"{d.devices_per_node} devices per node = {d.world_size}.",
                    f"use a node count that makes the world a multiple of {need}, e.g. cluster.nodes="
                    f"{max(1, -(-need // d.devices_per_node))}.",
                )
            )
        elif p.data_parallel_degree > 0 and tp * pp * p.data_parallel_degree != d.world_size:
            add(
                Problem(
                    "parallel.data_parallel_degree",
                    p.data_parallel_degree,
                    f"tp ({tp}) x pp ({pp}) x dp ({p.data_parallel_degree}) = "
                    f"{tp * pp * p.data_parallel_degree} != world size {d.world_size} ({c.nodes} nodes x "
                    f"{d.devices_per_node} devices).",
                    f"set parallel.data_parallel_degree=-1 (derives {d.world_size // (tp * pp)}).",
                )
            )
        elif d.data_parallel < 1:
            add(
                Problem(
                    "cluster.nodes",
                    c.nodes,
                    f"the world size {d.world_size} is smaller than tp x pp = {tp * pp}.",
                    f"set cluster.nodes to at least {-(-tp * pp // d.devices_per_node)}.",
                )
            )

    # --- batch, steps, optimizer
    if t.micro_batch_size < 1:
        add(
            Problem(
                "trainer.micro_batch_size",
                t.micro_batch_size,
                "must be at least 1.",
                "set trainer.micro_batch_size=1.",
            )
        )
    if t.global_batch_size < 1:
        add(
            Problem(
                "trainer.global_batch_size",
                t.global_batch_size,
                "must be at least 1.",
                "set trainer.global_batch_size to dp x micro-batch x accumulation.",
            )
        )
    elif (
        t.micro_batch_size >= 1
        and d.data_parallel >= 1
        and t.global_batch_size % (d.data_parallel * t.micro_batch_size)
    ):
        unit = d.data_parallel * t.micro_batch_size
        nearest = max(unit, t.global_batch_size // unit * unit)
        add(
            Problem(
                "trainer.global_batch_size",
                t.global_batch_size,
                f"must be divisible by dp ({d.data_parallel}) x micro_batch_size ({t.micro_batch_size}) = {unit}.",
                f"use a multiple of {unit}, e.g. trainer.global_batch_size={nearest}.",
            )
        )
    if t.max_steps < 1:
        add(Problem("trainer.max_steps", t.max_steps, "must be positive.", "set trainer.max_steps=1000."))
    if t.steps_this_run == 0 or t.steps_this_run < -1:
        add(
            Problem(
                "trainer.steps_this_run",
                t.steps_this_run,
                "must be -1 (run to max_steps) or positive.",
                "set trainer.steps_this_run=-1.",
            )
        )
    for key, val in (
        ("trainer.checkpoint_interval", t.checkpoint_interval),
        ("trainer.eval_interval", t.eval_interval),
        ("trainer.eval_batches", t.eval_batches),
    ):
        if val < 0:
            add(Problem(key, val, "must be 0 (off) or positive.", f"set {key}=0."))
    if t.log_interval < 1:
        add(Problem("trainer.log_interval", t.log_interval, "must be at least 1.", "set trainer.log_interval=1."))
    if t.keep_last == 0 or t.keep_last < -1:
        add(
            Problem(
                "trainer.keep_last",
                t.keep_last,
                "must be -1 (keep all) or at least 1.",
                "set trainer.keep_last=2.",
            )
        )
    if not o.lr > 0:
        add(Problem("optim.lr", o.lr, "the learning rate must be positive.", "set e.g. optim.lr=3e-4."))
    elif not 0 <= o.min_lr <= o.lr:
        add(
            Problem(
                "optim.min_lr",
                o.min_lr,
                f"must be between 0 and optim.lr ({o.lr}).",
                f"set optim.min_lr={o.lr / 10:g}.",
            )
        )
    if o.warmup_steps < 0 or (t.max_steps > 0 and o.warmup_steps > t.max_steps):
        add(
            Problem(
                "optim.warmup_steps",
                o.warmup_steps,
                f"must be between 0 and trainer.max_steps ({t.max_steps}).",
                f"set optim.warmup_steps={min(max(t.max_steps // 10, 0), 2000)}.",
            )
        )
    for key, val in (("optim.beta1", o.beta1), ("optim.beta2", o.beta2)):
        if not 0 <= val < 1:
            add(Problem(key, val, "Adam betas must be in [0, 1).", f"set {key}=0.9."))
    if o.grad_clip < 0:
        add(Problem("optim.grad_clip", o.grad_clip, "must be 0 (off) or positive.", "set optim.grad_clip=1.0."))

    # --- data
    if data.seq_len < 2:
        add(
            Problem(
                "data.seq_len",
                data.seq_len,
                "must be at least 2 (a block predicts its next tokens).",
                "set data.seq_len=2048.",
            )
        )
    elif data.seq_len > m.max_position_embeddings:
        add(
            Problem(
                "data.seq_len",
                data.seq_len,
                f"exceeds model.max_position_embeddings ({m.max_position_embeddings}, model={m.name}).",
                f"set data.seq_len={m.max_position_embeddings} or less.",
            )
        )
    if not 0 <= data.val_fraction < 1:
        add(Problem("data.val_fraction", data.val_fraction, "must be in [0, 1).", "set data.val_fraction=0.01."))
    if data.sample_documents < 0:
        add(
            Problem(
                "data.sample_documents",
                data.sample_documents,
                "is how many of the sample corpus's documents to use and cannot be negative.",
                "set data.sample_documents=0 (all of them) or a positive count such as 100.",
            )
        )
    if data.num_proc < 0:
        add(Problem("data.num_proc", data.num_proc, "must be 0 (all cores) or positive.", "set data.num_proc=0."))
    if data.source == DataSource.files:
        if not data.paths:
            add(
                Problem(
                    "data.paths",
                    data.paths,
                    "data=files needs at least one file or glob.",
                    "pass 'data.paths=[\"corpus/*.txt\"]' (quote it for the shell).",
                )
            )
        for pattern in data.paths:
            if not glob.glob(os.path.expanduser(pattern), recursive=True):
                add(
                    Problem(
                        "data.paths",
                        pattern,
                        "matches no file.",
                        "check the path; globs are expanded by the launcher, so quote them in the shell.",
                    )
                )
    if data.source == DataSource.hub and not data.hub_dataset:
        add(
            Problem(
                "data.hub_dataset",
                data.hub_dataset,
                "data source hub needs a dataset repo id.",
                "set data.hub_dataset=<org/name>, or use data=files.",
            )
        )
    _check_tokenizer(cfg, add)

    # --- stages
    for s in cfg.stages:
        if s not in applicable(cfg):
            add(
                Problem(
                    "stages",
                    cfg.stages,
                    f"stage {s.value} does not apply to this config "
                    f"(it applies: {', '.join(x.value for x in applicable(cfg))}).",
                    f"drop {s.value} from stages, or leave stages=[] to run every stage that applies.",
                )
            )
    if cfg.stages and not problems:
        run_dir = resolve_run_dir(composed)
        chosen = set(cfg.stages)
        for s in cfg.stages:
            for need in SPECS[s].needs:
                if need in chosen or need not in applicable(cfg):
                    continue
                done, why = is_complete(need, cfg, run_dir)
                if not done and not (need == Stage.download and not needs_download(cfg)):
                    add(
                        Problem(
                            "stages",
                            cfg.stages,
                            f"stage {s.value} reads the output of stage {need.value} "
                            f"({paths.final_dir(need, cfg, run_dir)}), which is missing: {why}.",
                            f"add {need.value} to stages (stages=[{need.value},{s.value}]) or leave "
                            f"stages=[] to run everything that applies.",
                        )
                    )
    nxd_jobs = [s.value for s in selected(cfg) if s in (Stage.compile, Stage.train)]
    if d.backend == Backend.nxd and not cfg.dry_run and nxd_jobs:
        add(
            Problem(
                "cluster.accelerator",
                c.accelerator,
                "running the nxd backend (trn1: neuron_parallel_compile and NxD training) is the next step of the "
                "roadmap; this version plans it (and converts checkpoints for it) but does not run "
                f"{' or '.join(nxd_jobs)}.",
                "add dry_run=true to print the plan, run stages=[data] or stages=[convert] on their own, or use "
                "cluster.accelerator=trn2 (the torch backend through TorchNeuron), cuda or cpu.",
            )
        )
    return [pr.render(composed) for pr in problems]


def _check_tokenizer(cfg, add) -> None:
    tok = cfg.data.tokenizer
    if tok == "sample" or paths.is_hub_id(tok):
        return
    path = Path(os.path.expanduser(tok))
    if not (path / "tokenizer.json").is_file():
        add(
            Problem(
                "data.tokenizer",
                tok,
                f"is neither 'sample', a hub id, nor a folder holding tokenizer.json ({path} "
                f"{'has no tokenizer.json' if path.exists() else 'does not exist'}).",
                "point it at a folder saved with tokenizer.save_pretrained(), or use a hub id.",
            )
        )
        return
    size = tokenizer_vocab_size(path)
    if size > cfg.model.vocab_size:
        add(
            Problem(
                "data.tokenizer",
                tok,
                f"its vocabulary ({size} tokens) does not fit model.vocab_size "
                f"({cfg.model.vocab_size}, model={cfg.model.name}).",
                "use the model's own tokenizer, or a model with a larger vocabulary.",
            )
        )


def tokenizer_vocab_size(folder: Path) -> int:
    """Vocabulary size from tokenizer.json without importing tokenizers (keeps the launcher light)."""
    spec = json.loads((folder / "tokenizer.json").read_text())
    ids = list(spec.get("model", {}).get("vocab", {}).values())
    ids += [t["id"] for t in spec.get("added_tokens", [])]
    return max(ids) + 1 if ids else 0


def resolve_run_dir(composed: Composed) -> Path:
    cfg = composed.cfg
    if cfg.run_dir:
        return Path(os.path.expanduser(cfg.run_dir))
    ch = composed.choices
    parts = (
        ch.get("model", cfg.model.name),
        ch.get("parallel", cfg.parallel.name),
        ch.get("cluster", cfg.cluster.name),
    )
    name = "-".join(parts)
    return Path(os.path.expanduser(cfg.cluster.runs_dir)) / paths.slug(name)
