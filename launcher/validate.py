"""Every check of a composed config, before anything is written or queued, reporting all problems at once.

Each problem is one paragraph naming the key, the bad value, where the value came from (a group option, the
recipe, or the command line), the rule, and a fix. Simple ranges are the table `RANGES` (plus the data stage's
own, `data.rules.RANGES`); every other rule belongs to the library that enforces it at run time (model/rules.py,
checkpoint/nxd_layout.py, checkpoint/hf_folder.py, data/sources.py, data/rules.py), and this module only maps
the library's problems to config keys, so a user reads the same sentence at plan time and at run time. One
function per section. Torch-free: only the standard library and the libraries' torch-free rule modules.
"""

from __future__ import annotations

import glob
import operator
import os
from pathlib import Path
from typing import TYPE_CHECKING

from core import paths
from core.arithmetic import Derived, backend_for, derive, nxd_sequence_parallel
from core.config import Accelerator, ExecutorKind, JobConfig
from core.marker import is_complete
from core.problems import Problem, Range, describe
from core.stages import SPECS, Stage, applicable, needs_download, selected
from data import rules as data_rules
from data.config import DataSource
from launcher.compose import Composed
from model import rules as model_rules
from model.config import Init
from train.config import Backend

if TYPE_CHECKING:
    from checkpoint.nxd_layout import Layout


def _count(key: str, example: int) -> Range:
    return Range(key, at_least=1, fix=f"set {key}={example}.")


def _off_or_positive(key: str, meaning: str, fix: str) -> Range:
    return Range(key, above=0, special=(0, meaning), fix=fix)


RANGES: tuple[Range, ...] = (
    _count("model.vocab_size", 128256),
    _count("model.hidden_size", 4096),
    _count("model.intermediate_size", 14336),
    _count("model.num_hidden_layers", 32),
    _count("model.num_attention_heads", 32),
    _count("model.max_position_embeddings", 8192),
    Range(
        "model.rope_scaling.factor",
        at_least=0,
        why="0: no scaling, Llama 3.0; Llama 3.1: 8.0",
        fix="set 0 or 8.0.",
    ),
    _count("parallel.tensor_parallel_degree", 1),
    _count("parallel.pipeline_parallel_degree", 1),
    _count("parallel.kv_size_multiplier", 1),
    Range(
        "parallel.data_parallel_degree",
        at_least=1,
        special=(-1, "derived from the world size"),
        fix="set parallel.data_parallel_degree=-1.",
    ),
    _count("cluster.nodes", 1),
    Range(
        "cluster.devices_per_node",
        at_least=1,
        special=(0, "from the accelerator"),
        fix="set cluster.devices_per_node=0.",
    ),
    _off_or_positive("cluster.device_memory_gb", "the accelerator's", "set cluster.device_memory_gb=0."),
    *(
        _off_or_positive(f"cluster.resources.{stage}.{field}", meaning, f"set cluster.resources.{stage}.{field}=0.")
        for stage in ("download", "data", "convert", "compile", "train", "export")
        for field, meaning in (("time_min", "the partition's default"), ("cpus", "a whole node"), ("mem_gb", "none"))
    ),
    Range("cluster.signal_delay_s", at_least=0, fix="set cluster.signal_delay_s=120."),
    Range("cluster.max_requeues", at_least=0, fix="set cluster.max_requeues=3."),
    _count("trainer.micro_batch_size", 1),
    Range(
        "trainer.global_batch_size",
        at_least=1,
        fix="set trainer.global_batch_size to dp x micro-batch x accumulation.",
    ),
    _count("trainer.max_steps", 1000),
    Range("trainer.steps_this_run", at_least=1, special=(-1, "run to max_steps"), fix="set trainer.steps_this_run=-1."),
    _off_or_positive("trainer.checkpoint_interval", "off", "set trainer.checkpoint_interval=0."),
    _off_or_positive("trainer.eval_interval", "off", "set trainer.eval_interval=0."),
    _off_or_positive("trainer.eval_batches", "off", "set trainer.eval_batches=0."),
    _count("trainer.log_interval", 1),
    Range("trainer.keep_last", at_least=1, special=(-1, "keep all"), fix="set trainer.keep_last=2."),
    _off_or_positive("trainer.num_threads", "torch's default", "set trainer.num_threads=0."),
    Range("optim.lr", above=0, why="the peak learning rate", fix="set e.g. optim.lr=3e-4."),
    Range("optim.beta1", at_least=0, below=1, why="an Adam beta", fix="set optim.beta1=0.9."),
    Range("optim.beta2", at_least=0, below=1, why="an Adam beta", fix="set optim.beta2=0.95."),
    Range("optim.eps", above=0, fix="set optim.eps=1e-8."),
    Range("optim.weight_decay", at_least=0, fix="set optim.weight_decay=0.01."),
    _off_or_positive("optim.grad_clip", "off", "set optim.grad_clip=1.0."),
    *data_rules.RANGES,
)
# NxD layout fields (checkpoint.nxd_layout) -> config keys; the architecture fields are model.<field>.
NXD_KEYS = {
    "tp": "parallel.tensor_parallel_degree",
    "pp": "parallel.pipeline_parallel_degree",
    "kv_size_multiplier": "parallel.kv_size_multiplier",
    "qkv_linear": "parallel.qkv_linear",
    "hw_backend": "cluster.accelerator",
}


def nxd_key(field: str) -> str:
    return NXD_KEYS.get(field, f"model.{field}")


def validate(composed: Composed) -> list[str]:
    """Every problem of the composed config, one paragraph each (empty: the config is good)."""
    return [describe(p, composed.source(p.key)) for p in find_problems(composed)]


def find_problems(composed: Composed) -> list[Problem]:
    """Every problem of the composed config, section by section."""
    cfg = composed.cfg
    problems = device_problems(cfg)
    d = derive(cfg)
    if problems:
        # No device here: check the rest against the plan's own process count, not a guessed 8 per node.
        from dataclasses import replace

        p = cfg.parallel
        ranks = p.tensor_parallel_degree * p.pipeline_parallel_degree * max(p.data_parallel_degree, 1)
        d = derive(replace(cfg, cluster=replace(cfg.cluster, devices_per_node=max(ranks, 1))))
    problems += range_problems(cfg)
    bad = {p.key for p in problems}
    problems += model_problems(cfg, bad)
    problems += parallelism_problems(cfg, d, bad)
    problems += world_problems(cfg, d, bad)
    problems += schedule_problems(cfg, d, bad)
    problems += data_problems(cfg, bad)
    return problems + stage_problems(composed, d, not problems)


def device_problems(cfg: JobConfig) -> list[Problem]:
    """A local run that trains needs its accelerator on this machine; records the machine's device count."""
    c = cfg.cluster
    if c.executor != ExecutorKind.local or c.accelerator == Accelerator.cpu or Stage.train not in selected(cfg):
        return []
    if cfg.dry_run:
        return []  # nothing runs: a local plan of another machine's accelerator may be printed anywhere
    if backend_for(cfg) == Backend.nxd and c.accelerator != Accelerator.trn1:
        return []  # parallelism_problems says the nxd backend does not run there
    count, why = local_devices(c.accelerator)
    if count == 0:
        return [
            Problem(
                "cluster.accelerator",
                c.accelerator,
                f"a local run trains on this machine, which has no usable {c.accelerator.value} device: {why}.",
                "set cluster.accelerator=cpu to train on this machine's CPU, run on a machine with the "
                "device, or plan it for a cluster (cluster=slurm ... dry_run=true).",
            )
        ]
    if count > 0 and c.devices_per_node == 0:
        c.devices_per_node = count  # the machine's count, recorded in config.yaml for every stage
    return []


def range_problems(cfg: JobConfig) -> list[Problem]:
    return [p for r in RANGES for p in r.problems(operator.attrgetter(r.key)(cfg))]


def model_problems(cfg: JobConfig, bad: set[str]) -> list[Problem]:
    """Architecture (the model's own rules) and where its weights start."""
    m = cfg.model
    out: list[Problem] = []
    if "model.num_attention_heads" not in bad:
        out += [
            Problem(*p)
            for p in model_rules.architecture_problems(m.hidden_size, m.num_attention_heads, m.num_key_value_heads)
        ]
    if m.init != Init.pretrained:
        return out
    if not m.pretrained_path:
        out.append(
            Problem(
                "model.init",
                m.init,
                "pretrained needs model.pretrained_path (a hub id or a local HF folder).",
                "set model.pretrained_path=meta-llama/Meta-Llama-3-8B (or a folder), or model.init=scratch.",
            )
        )
    elif not paths.is_hub_id(m.pretrained_path) and not out:
        from checkpoint.hf_folder import folder_problems

        out += folder_problems(Path(os.path.expanduser(m.pretrained_path)), m)
    return out


def parallelism_problems(cfg: JobConfig, d: Derived, bad: set[str]) -> list[Problem]:
    """How the model is split: NxD's layout rules on trn1, the torch backend's parallelisation rules elsewhere."""
    m, p, c = cfg.model, cfg.parallel, cfg.cluster
    out = [Problem(*x) for x in model_rules.activation_checkpointing_problems(p.activation_checkpointing)]
    if bad & (set(NXD_KEYS.values()) | {r.key for r in RANGES if r.key.startswith("model.")}):
        return out
    if model_rules.architecture_problems(m.hidden_size, m.num_attention_heads, m.num_key_value_heads):
        return out
    if d.backend == Backend.nxd:
        from checkpoint.nxd_layout import Arch
        from checkpoint.nxd_layout import layout_problems as nxd_layout_problems

        out += nxd_layout_problems(Arch.from_model(m), nxd_layout(cfg), nxd_key)
        # After the layout rules (a bad tp is one problem, not two) and only for a sequence the model takes.
        seq = cfg.data.seq_len
        if not out and nxd_sequence_parallel(p, d.tensor_parallel) and 0 < seq <= m.max_position_embeddings:
            out += [Problem(*x) for x in model_rules.sequence_parallel_problems(seq, d.tensor_parallel)]
        if c.accelerator not in (Accelerator.trn1, Accelerator.cpu):
            out.append(
                Problem(
                    "trainer.backend",
                    cfg.trainer.backend,
                    f"the nxd backend runs on trn1 (XLA) or in NxD's CPU mode (cpu), not on cluster.accelerator="
                    f"{c.accelerator.value}.",
                    "set trainer.backend=auto (torch on cuda/trn2).",
                )
            )
        mem = d.neuron_core
        if not out and c.accelerator == Accelerator.trn1 and mem is not None and not mem.fits:
            out.append(
                Problem(
                    "parallel.tensor_parallel_degree",
                    p.tensor_parallel_degree,
                    f"the estimate per NeuronCore does not fit: {mem.describe()}.",
                    "raise parallel.pipeline_parallel_degree or cluster.nodes (more dp shards ZeRO-1's optimizer "
                    "state), set parallel.activation_checkpointing=full, or lower data.seq_len / "
                    "trainer.micro_batch_size.",
                )
            )
        return out
    out += [Problem(*x) for x in model_rules.torch_tp_problems(m, p.tensor_parallel_degree)]
    out += [Problem(*x) for x in model_rules.torch_pipeline_problems(p.pipeline_parallel_degree)]
    if p.kv_size_multiplier > 1 and c.accelerator != Accelerator.trn1:
        out.append(
            Problem(
                "parallel.kv_size_multiplier",
                p.kv_size_multiplier,
                "K/V replication is an NxD feature; the torch backend does not use it.",
                "set parallel.kv_size_multiplier=1 (or use cluster.accelerator=trn1).",
            )
        )
    return out


def nxd_layout(cfg: JobConfig) -> Layout:
    """The layout the convert stage parses from core.nxd_args.convert_args (a test checks they agree), built
    without the converter's argument parser so the plan stays fast."""
    from checkpoint.nxd_layout import Layout

    p = cfg.parallel
    return Layout(p.tensor_parallel_degree, p.pipeline_parallel_degree, p.kv_size_multiplier, p.qkv_linear, p.fuse_qkv)


def world_problems(cfg: JobConfig, d: Derived, bad: set[str]) -> list[Problem]:
    """Where the job runs, and whether tp x pp x dp fills the world (nodes x devices per node)."""
    c, p = cfg.cluster, cfg.parallel
    tp, pp = p.tensor_parallel_degree, p.pipeline_parallel_degree
    out: list[Problem] = []
    if c.executor == ExecutorKind.local and c.nodes > 1:
        out.append(
            Problem(
                "cluster.nodes",
                c.nodes,
                "the local executor runs on this machine only (one node).",
                "set cluster.nodes=1, or use cluster=slurm / cluster=hyperpod.",
            )
        )
    if c.auto_resume and c.executor != ExecutorKind.slurm:
        out.append(
            Problem(
                "cluster.auto_resume",
                c.auto_resume,
                "auto-resume is a HyperPod Slurm option (srun --auto-resume=1); it has no meaning for the local "
                "executor.",
                "set cluster.auto_resume=false.",
            )
        )
    degrees = {"parallel.tensor_parallel_degree", "parallel.pipeline_parallel_degree", "cluster.nodes"}
    if bad & degrees or d.world_size <= 0:
        return out
    need = tp * pp
    if d.world_size % need:
        out.append(
            Problem(
                "cluster.nodes",
                c.nodes,
                f"tp ({tp}) x pp ({pp}) = {need} must divide the world size: {c.nodes} nodes x "
                f"{d.devices_per_node} devices per node = {d.world_size}.",
                f"use a node count that makes the world a multiple of {need}, e.g. cluster.nodes="
                f"{max(1, -(-need // d.devices_per_node))}.",
            )
        )
    elif p.data_parallel_degree > 0 and need * p.data_parallel_degree != d.world_size:
        out.append(
            Problem(
                "parallel.data_parallel_degree",
                p.data_parallel_degree,
                f"tp ({tp}) x pp ({pp}) x dp ({p.data_parallel_degree}) = {need * p.data_parallel_degree} != "
                f"world size {d.world_size} ({c.nodes} nodes x {d.devices_per_node} devices).",
                f"set parallel.data_parallel_degree=-1 (derives {d.world_size // need}).",
            )
        )
    elif d.data_parallel < 1:
        out.append(
            Problem(
                "cluster.nodes",
                c.nodes,
                f"the world size {d.world_size} is smaller than tp x pp = {need}.",
                f"set cluster.nodes to at least {-(-need // d.devices_per_node)}.",
            )
        )
    return out


def schedule_problems(cfg: JobConfig, d: Derived, bad: set[str]) -> list[Problem]:
    """Batch, steps and optimizer rules that relate two keys (single-key ranges are in RANGES)."""
    t, o = cfg.trainer, cfg.optim
    out: list[Problem] = []
    batch_keys = {"trainer.global_batch_size", "trainer.micro_batch_size"}
    if not bad & batch_keys and d.data_parallel >= 1 and t.global_batch_size % (d.data_parallel * t.micro_batch_size):
        unit = d.data_parallel * t.micro_batch_size
        nearest = max(unit, t.global_batch_size // unit * unit)
        out.append(
            Problem(
                "trainer.global_batch_size",
                t.global_batch_size,
                f"must be divisible by dp ({d.data_parallel}) x micro_batch_size ({t.micro_batch_size}) = {unit}.",
                f"use a multiple of {unit}, e.g. trainer.global_batch_size={nearest}.",
            )
        )
    if "optim.lr" not in bad and not 0 <= o.min_lr <= o.lr:
        out.append(
            Problem(
                "optim.min_lr",
                o.min_lr,
                f"must be between 0 and optim.lr ({o.lr}).",
                f"set optim.min_lr={o.lr / 10:g}.",
            )
        )
    if o.warmup_steps < 0 or ("trainer.max_steps" not in bad and o.warmup_steps > t.max_steps):
        out.append(
            Problem(
                "optim.warmup_steps",
                o.warmup_steps,
                f"must be between 0 and trainer.max_steps ({t.max_steps}).",
                f"set optim.warmup_steps={min(max(t.max_steps // 10, 0), 2000)}.",
            )
        )
    return out


def data_problems(cfg: JobConfig, bad: set[str]) -> list[Problem]:
    """The corpus and the tokenizer: what the data stage would refuse, found before it runs."""
    data, m = cfg.data, cfg.model
    out: list[Problem] = []
    if not bad & {"data.seq_len", "model.max_position_embeddings"} and data.seq_len > m.max_position_embeddings:
        out.append(
            Problem(
                "data.seq_len",
                data.seq_len,
                f"exceeds model.max_position_embeddings ({m.max_position_embeddings}, model={m.name}).",
                f"set data.seq_len={m.max_position_embeddings} or less.",
            )
        )
    if data.source == DataSource.files:
        from data.sources import resolve

        out += resolve(data.paths)[1]
    if data.source == DataSource.hub and not data.hub_dataset:
        out.append(
            Problem(
                "data.hub_dataset",
                data.hub_dataset,
                "data source hub needs a dataset repo id.",
                "set data.hub_dataset=<org/name>, or use data=files.",
            )
        )
    tokenizer, byte_level = tokenizer_problems(cfg)
    out += tokenizer
    if not out and not bad & {r.key for r in data_rules.RANGES}:
        out += data_rules.split_problems(data, byte_level)
    return out


def tokenizer_problems(cfg: JobConfig) -> tuple[list[Problem], bool]:
    """Problems of data.tokenizer, and whether it is a known byte-level BPE (the split estimate needs one)."""
    tok = cfg.data.tokenizer
    if tok == "sample":
        return [], True
    if paths.is_hub_id(tok):
        return [], False
    path = Path(os.path.expanduser(tok))
    if not (path / "tokenizer.json").is_file():
        state = "has no tokenizer.json" if path.exists() else "does not exist"
        return [
            Problem(
                "data.tokenizer",
                tok,
                f"is neither 'sample', a hub id, nor a folder holding tokenizer.json ({path} {state}).",
                "point it at a folder saved with tokenizer.save_pretrained(), or use a hub id.",
            )
        ], False
    facts = data_rules.tokenizer_facts(path)
    if facts.vocab_size > cfg.model.vocab_size:
        return [
            Problem(
                "data.tokenizer",
                tok,
                f"its vocabulary ({facts.vocab_size} tokens) does not fit model.vocab_size "
                f"({cfg.model.vocab_size}, model={cfg.model.name}).",
                "use the model's own tokenizer, or a model with a larger vocabulary.",
            )
        ], facts.byte_level
    return [], facts.byte_level


def stage_problems(composed: Composed, d: Derived, config_ok: bool) -> list[Problem]:
    """The stages asked for: they apply, their inputs exist (checked only for a good config), they can run here."""
    cfg = composed.cfg
    out: list[Problem] = []
    can = applicable(cfg)
    for stage in cfg.stages:
        if stage not in can:
            out.append(
                Problem(
                    "stages",
                    cfg.stages,
                    f"stage {stage.value} does not apply to this config "
                    f"(it applies: {', '.join(x.value for x in can)}).",
                    f"drop {stage.value} from stages, or leave stages=[] to run every stage that applies.",
                )
            )
    if cfg.stages and config_ok and not out:
        out += _missing_inputs(cfg, resolve_run_dir(composed))
    return out


def local_devices(accelerator: Accelerator) -> tuple[int, str]:
    """(devices of this kind on this machine, how that was found); -1 = present, count from the accelerator's
    table. Never imports torch in this process: CUDA is asked of torch in a short subprocess, and only when a
    driver is there at all (no nvidia-smi and no /dev/nvidia* device means no GPU, without starting anything)."""
    import shutil
    import subprocess
    import sys

    if accelerator == Accelerator.cuda:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None and visible.strip() in ("", "-1"):
            return 0, f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
        smi, nodes = shutil.which("nvidia-smi"), glob.glob("/dev/nvidia[0-9]*")
        if not smi and not nodes:
            return 0, "there is no NVIDIA driver (no nvidia-smi on PATH, no /dev/nvidia* device)"
        code = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0, torch.version.cuda)"
        try:
            r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return 0, f"asking torch for its GPUs failed ({exc})"
        try:
            count_text, cuda_version = r.stdout.split()[-2:]
            count = int(count_text)
        except ValueError:
            tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
            return 0, f"torch in {sys.executable} could not be asked for its GPUs ({tail})"
        if cuda_version == "None":
            return 0, f"the torch of {sys.executable} is a CPU-only build"
        if count == 0:
            return 0, f"torch finds no usable GPU ({len(nodes)} /dev/nvidia* device file(s); check the driver)"
        return count, f"{count} GPU(s) visible to torch"
    if accelerator in (Accelerator.trn1, Accelerator.trn2):
        if not glob.glob("/dev/neuron[0-9]*"):
            return 0, "there is no Neuron device (no /dev/neuron*)"
        return -1, "Neuron devices present"
    return -1, ""


def _missing_inputs(cfg: JobConfig, run_dir: Path) -> list[Problem]:
    """A chosen stage whose input stage is neither chosen nor complete on disk."""
    out: list[Problem] = []
    chosen, can = set(cfg.stages), applicable(cfg)
    for stage in cfg.stages:
        for need in SPECS[stage].needs:
            if need in chosen or need not in can or (need == Stage.download and not needs_download(cfg)):
                continue
            done, why = is_complete(need, cfg, run_dir)
            if not done:
                out.append(
                    Problem(
                        "stages",
                        cfg.stages,
                        f"stage {stage.value} reads the output of stage {need.value} "
                        f"({paths.final_dir(need, cfg, run_dir)}), which is missing: {why}.",
                        f"add {need.value} to stages (stages=[{need.value},{stage.value}]) or leave "
                        f"stages=[] to run everything that applies.",
                    )
                )
    return out


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
