"""The job's configuration: every owner's section composed into one `JobConfig`, plus where jobs run.

The sections live with their owners (model/config.py, data/config.py, train/config.py); the cluster section is
here because every stage reads it (devices, cache folder). Hydra registration lives next to composition
(launcher/compose.py), so importing this module loads no Hydra or OmegaConf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from core.stages import Stage
from data.config import DataConfig
from model.config import ModelConfig, ParallelConfig
from train.config import OptimConfig, TrainerConfig


class Accelerator(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
    trn1 = "trn1"
    trn2 = "trn2"


class ExecutorKind(str, Enum):
    local = "local"
    slurm = "slurm"


@dataclass(kw_only=True)
class NeuronConfig:
    """The per-node environment of nxd (trn1) jobs; defaults are NxD's Llama example scripts' values
    (launcher/nxd_env.py; 0 or "" = the example's value for this layout: its 70B TP x PP or its 8B TP + ZeRO-1)."""

    # Neuron compile cache shared by every node and run ("" = <cluster.cache_dir>/neuron-compile-cache).
    compile_cache: str = ""
    # NEURON_CC_FLAGS besides --cache_dir.
    cc_flags: str = "--model-type=transformer"
    # NEURON_RT_ASYNC_EXEC_MAX_INFLIGHT_REQUESTS (0 = 7 with pipeline parallelism, else 3).
    async_exec_max_inflight_requests: int = 0
    # MALLOC_ARENA_MAX, host OOM mitigation (0 = 128 with pipeline parallelism, else 64).
    malloc_arena_max: int = 0
    # NEURON_FUSE_SOFTMAX.
    fuse_softmax: bool = True
    # FI_PROVIDER=efa, FI_EFA_USE_DEVICE_RDMA=1, FI_EFA_FORK_SAFE=1 (EFA between trn1 nodes).
    efa: bool = True
    # torchrun rendezvous port on the first node (NxD's scripts: 44000).
    master_port: int = 44000
    # Before torchrun, each node adds master_port to net.ipv4.ip_local_reserved_ports (as NxD's scripts do, so that
    # no outgoing connection takes it first): with passwordless sudo (`sudo -n`), skipped when already reserved;
    # without sudo it warns and the job goes on (launcher/nxd_env.py:reserve_port_command). false: no sysctl.
    reserve_port: bool = True
    # Extra variables (win over the above).
    env: dict[str, str] = field(default_factory=dict)


@dataclass(kw_only=True)
class StageResources:
    # Slurm --time in minutes (0 = the partition's default).
    time_min: int = 60
    # CPUs of the stage's task on each node; 0 = the whole node (--exclusive, every core, --mem=0).
    cpus: int = 1
    # GB of host memory per node (0 = Slurm's default share; with cpus=0 the whole node).
    mem_gb: int = 0


@dataclass(kw_only=True)
class Resources:
    """Per-stage Slurm resources. compile and train always get cluster.nodes nodes with one task per node."""

    download: StageResources = field(default_factory=lambda: StageResources(time_min=60, cpus=1))
    # Tokenize and pack: one node, all its cores.
    data: StageResources = field(default_factory=lambda: StageResources(time_min=240, cpus=0))
    # HF -> NxD shards: one high-memory node (set mem_gb to ask for a size instead of a whole node).
    convert: StageResources = field(default_factory=lambda: StageResources(time_min=240, cpus=0))
    compile: StageResources = field(default_factory=lambda: StageResources(time_min=240, cpus=0))
    # Timeouts are routine: training checkpoints on the USR2 before the limit and requeues itself.
    train: StageResources = field(default_factory=lambda: StageResources(time_min=24 * 60, cpus=0))
    export: StageResources = field(default_factory=lambda: StageResources(time_min=120, cpus=2))


@dataclass(kw_only=True)
class ClusterConfig:
    # The option name (conf/cluster/<name>.yaml); names the default run folder.
    name: str = "local"
    executor: ExecutorKind = ExecutorKind.local
    accelerator: Accelerator = Accelerator.cpu
    nodes: int = 1
    # 0 = from the accelerator: trn1 32 NeuronCores, trn2 64, cuda 8, cpu the process count of the parallel plan.
    devices_per_node: int = 0
    # GiB per device, for the plan's memory estimate; 0 = the accelerator's (trn1 NeuronCore: 16).
    device_memory_gb: float = 0.0
    # Slurm partition and account ("" = the cluster's defaults).
    partition: str = ""
    account: str = ""
    # HyperPod only: `srun --auto-resume=1` on multi-node jobs restarts them on a healthy node after a fault.
    auto_resume: bool = False
    # Requeues in a row without progress (no newer checkpoint) before a Slurm job gives up; a failure at the same
    # training step as the previous failure stops at once. Preemptions and timeouts that made progress reset it.
    max_requeues: int = 3
    # Slurm sends SIGUSR2 this many seconds before a job's time limit: training checkpoints and requeues itself.
    signal_delay_s: int = 120
    # Resources and time limit of each stage's Slurm job (cluster.resources.train.time_min=...).
    resources: Resources = field(default_factory=lambda: Resources())
    # The jobs' Python: "" = this checkout's interpreter; else an interpreter path or a venv folder.
    python: str = ""
    # Pyxis/Enroot image for every job's srun (`--container-image`), and `--container-mounts` ("" = none).
    container_image: str = ""
    container_mounts: str = ""
    # Extra sbatch options of every job (`["--qos=high", "--hold"]`: one `#SBATCH` line each), and srun options.
    sbatch_options: list[str] = field(default_factory=list)
    srun_options: list[str] = field(default_factory=list)
    # Root of run folders (`run_dir` default: <runs_dir>/<model>-<parallel>-<cluster>).
    runs_dir: str = "runs"
    # Shared cache for prepared datasets, tokenizers and downloads; must be visible to every node.
    cache_dir: str = "${oc.env:TRAINIUM_LAUNCHER_CACHE,${oc.env:HOME}/.cache/trainium-launcher}"
    # Shell lines run at the start of every job (activate a venv, load modules).
    setup: list[str] = field(default_factory=list)
    # Environment variables of every job.
    env: dict[str, str] = field(default_factory=dict)
    # trn1 / NxD jobs only: Neuron runtime, compiler and EFA settings.
    neuron: NeuronConfig = field(default_factory=NeuronConfig)


@dataclass(kw_only=True)
class JobConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    # Empty: <cluster.runs_dir>/<model>-<parallel>-<cluster> (multirun points get a subfolder each).
    run_dir: str = ""
    # Validate and print the plan; create and submit nothing.
    dry_run: bool = False
    # Stages to run; empty = every stage that applies to this config (core/stages.py).
    stages: list[Stage] = field(default_factory=list)
    # Rebuild stage outputs even when their marker says they are complete and match.
    force: bool = False
