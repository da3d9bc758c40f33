"""Typed configuration schema: one dataclass per Hydra group, registered in the ConfigStore.

Every YAML under conf/<group>/ extends its schema (`defaults: [/schema/<group>/base@_here_, _self_]`), so a
misspelt key in a YAML file or on the command line is a composition error instead of a silently kept value.
The schemas live in their own `schema/` group so `--help` lists only the real options (tiny, llama3_70b, ...).

Torch-free by design: the launcher, the converter and the plan import this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore


class Init(str, Enum):
    scratch = "scratch"
    pretrained = "pretrained"


class Accelerator(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
    trn1 = "trn1"
    trn2 = "trn2"


class Backend(str, Enum):
    """`auto` picks `nxd` on trn1 (XLA, the NxD example's path) and `torch` everywhere else (trn2 via TorchNeuron)."""

    auto = "auto"
    torch = "torch"
    nxd = "nxd"


class ExecutorKind(str, Enum):
    local = "local"
    slurm = "slurm"


class Stage(str, Enum):
    download = "download"
    data = "data"
    convert = "convert"
    compile = "compile"
    train = "train"
    export = "export"


class DataSource(str, Enum):
    sample = "sample"
    files = "files"
    hub = "hub"


class DataFormat(str, Enum):
    compact = "compact"
    nxd = "nxd"


class Schedule(str, Enum):
    cosine = "cosine"
    linear = "linear"
    constant = "constant"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


class DataParallelMode(str, Enum):
    ddp = "ddp"
    fsdp = "fsdp"


@dataclass
class RopeScaling:
    """Llama 3.1 `rope_scaling` (rope_type llama3). factor 0 means no scaling (Llama 3.0)."""

    factor: float = 0.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass
class ModelConfig:
    """Architecture numbers use the Hugging Face config.json names, so files can be checked against it.

    The defaults are the tiny model; every YAML must set every architecture field (a test enforces it),
    otherwise a missing field would silently inherit the tiny value.
    """

    name: str = "tiny"
    vocab_size: int = 2048
    hidden_size: int = 192
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 6
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    bos_token_id: int = 0
    eos_token_id: int = 1
    # Where training starts: random init, or the weights at pretrained_path (hub id or local HF folder).
    init: Init = Init.scratch
    pretrained_path: str = ""


@dataclass
class ParallelConfig:
    name: str = "none"
    tensor_parallel_degree: int = 1
    pipeline_parallel_degree: int = 1
    # -1: derived as world_size / (tp * pp). Set it only for CPU runs, where it sets the process count.
    data_parallel_degree: int = -1
    # NxD GQAQKVColumnParallelLinear: K/V heads are replicated this many times so kv_heads * multiplier == tp.
    kv_size_multiplier: int = 1
    # NxD layout knobs; used by the converter and by the NxD training launch alike (one source of truth).
    qkv_linear: bool = False
    fuse_qkv: bool = True
    zero1: bool = False
    sequence_parallel: bool = False
    # torch backend: DDP, or FSDP2 fully_shard over the data-parallel mesh axis.
    data_parallel_mode: DataParallelMode = DataParallelMode.ddp
    # none | selective | full
    activation_checkpointing: str = "none"


@dataclass
class DataConfig:
    name: str = "sample"
    source: DataSource = DataSource.sample
    # data=files: files or globs (.txt, .jsonl, .parquet). Quote globs with spaces on the command line.
    paths: list[str] = field(default_factory=list)
    text_field: str = "text"
    # data=sample: use only the first N of its 302 documents (0: all, as the tiny recipe does).
    sample_documents: int = 0
    # data=hub: a `datasets` repo id with its config and a pinned revision.
    hub_dataset: str = ""
    hub_config: str = ""
    hub_revision: str = "main"
    # "sample" = the BPE tokenizer trained locally on the sample corpus; else a local folder or a hub id.
    tokenizer: str = "sample"
    seq_len: int = 256
    # compact: one int32 `input_ids` column; nxd: input_ids/attention_mask/labels exactly as NxD's get_dataset.py.
    format: DataFormat = DataFormat.compact
    val_fraction: float = 0.01
    append_eos: bool = False
    # 0 = all cores.
    num_proc: int = 0
    # Empty: <cluster.cache_dir>/datasets/<name>-<hash of the settings it depends on>, shared by runs.
    output_dir: str = ""


@dataclass
class ClusterConfig:
    name: str = "local"
    executor: ExecutorKind = ExecutorKind.local
    accelerator: Accelerator = Accelerator.cpu
    # EC2 instance type, for the plan and the memory estimate.
    instance_type: str = ""
    nodes: int = 1
    # 0 = from the accelerator: trn1 32 NeuronCores, trn2 64, cuda 8, cpu the process count of the parallel plan.
    devices_per_node: int = 0
    # Device memory per device in GiB, for the plan's memory estimate (trn1 NeuronCore: 16).
    device_memory_gb: float = 0.0
    partition: str = ""
    account: str = ""
    exclusive: bool = False
    # Slurm time limit in minutes (0: the partition's default).
    time_limit_min: int = 0
    cpus_per_task: int = 0
    # 0: no --mem; Slurm's --mem=0 (whole node) is requested with exclusive.
    mem_gb: int = 0
    # HyperPod only: `srun --auto-resume=1` restarts the job on a healthy node after a hardware fault.
    auto_resume: bool = False
    # Cap on consecutive requeues after preemption or timeout before the training job gives up.
    max_requeues: int = 3
    # Root of run folders (`run_dir` default: <runs_dir>/<model>-<parallel>-<cluster>).
    runs_dir: str = "runs"
    # Shared cache for prepared datasets, tokenizers and downloads; must be visible to every node.
    cache_dir: str = "${oc.env:TRAINIUM_LAUNCHER_CACHE,${oc.env:HOME}/.cache/trainium-launcher}"
    # Shell lines run at the start of every job (activate a venv, load modules).
    setup: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class OptimConfig:
    lr: float = 4e-3
    min_lr: float = 4e-4
    warmup_steps: int = 20
    schedule: Schedule = Schedule.cosine
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    # Applied to weights; norms and biases never decay (the value is really used, unlike NxD's 70B script).
    weight_decay: float = 0.01
    grad_clip: float = 1.0


@dataclass
class TrainerConfig:
    max_steps: int = 200
    # Stop after this many steps in this run (with a checkpoint) without changing the schedule; -1 = all.
    steps_this_run: int = -1
    global_batch_size: int = 16
    micro_batch_size: int = 8
    seed: int = 1234
    # 0 disables periodic checkpoints; a final one is always written.
    checkpoint_interval: int = 100
    # Completed step_N checkpoints to keep (-1: all).
    keep_last: int = 2
    eval_interval: int = 100
    eval_batches: int = 4
    log_interval: int = 10
    precision: Precision = Precision.fp32
    backend: Backend = Backend.auto
    # Intra-op threads per training process (0: torch's default).
    num_threads: int = 0
    # Seeded (trainer.seed, epoch), resumable shuffling of the training blocks; off, as in NxD's examples.
    shuffle: bool = False
    # Process-group timeout (seconds): a collective that some rank never joins raises after this long.
    collective_timeout_s: int = 1800
    # Watchdog (train/watchdog.py): a rank that makes no progress (step, evaluation, checkpoint) for this long
    # prints where it is stuck and exits with code 124, recording the stage as failed; 0 disables it.
    stall_timeout_s: int = 1800


@dataclass
class JobConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    # Name of the recipe preset that set the training hyper-parameters (informational).
    recipe: str = "tiny"
    # Empty: <cluster.runs_dir>/<model>-<parallel>-<cluster> (multirun points get a subfolder each).
    run_dir: str = ""
    # Validate and print the plan; create and submit nothing.
    dry_run: bool = False
    # Stages to run; empty = every stage that applies to this config (see launcher/stages.py).
    stages: list[Stage] = field(default_factory=list)
    # Rebuild stage outputs even when their marker says they are complete and match.
    force: bool = False


GROUPS: dict[str, type] = {
    "model": ModelConfig,
    "parallel": ParallelConfig,
    "data": DataConfig,
    "cluster": ClusterConfig,
}


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=JobConfig)
    for group, node in GROUPS.items():
        cs.store(group=f"schema/{group}", name="base", node=node, package=group)


def as_plain(obj: Any) -> Any:
    """Dataclass tree -> JSON-able dict with enum values as strings (for markers and fingerprints)."""
    from dataclasses import fields, is_dataclass

    if is_dataclass(obj):
        return {f.name: as_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, dict):
        return {k: as_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_plain(v) for v in obj]
    return obj
