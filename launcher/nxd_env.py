"""Per-node launch of the nxd (trn1) compile and train stages, as NxD's Llama example scripts launch them: one
Slurm task per node running torchrun with one process per NeuronCore (32 per trn1.32xlarge), node rank and
rendezvous from the allocation, and the example's environment, every value from `cluster.neuron` (defaults: the
example's values). The compile stage runs the same command under `neuron_parallel_compile`.

Plain functions for the Slurm submission path (launcher/plan.py and launcher/slurm_executor.py call them); nothing
here submits. Not copied from the example: its TensorBoard wipe, its fixed weight decay, its fixed port reserved
with sudo (`reserve_port_command`: the configured port, added to the node's list, sudo that never prompts).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from core.arithmetic import derive
from core.config import JobConfig
from core.stages import Stage
from train.config import Precision


def compile_cache(cfg: JobConfig, cache_dir: str | None = None) -> str:
    return cfg.cluster.neuron.compile_cache or f"{cache_dir or cfg.cluster.cache_dir}/neuron-compile-cache"


def nxd_env(cfg: JobConfig, cache_dir: str | None = None) -> dict[str, str]:
    """The environment of every process of an nxd job on trn1 (`cache_dir`: the resolved cluster.cache_dir)."""
    n = cfg.cluster.neuron
    pipeline = cfg.parallel.pipeline_parallel_degree > 1
    env: dict[str, str] = {}
    if n.efa:
        env.update({"FI_EFA_USE_DEVICE_RDMA": "1", "FI_PROVIDER": "efa", "FI_EFA_FORK_SAFE": "1"})
    env.update(
        {
            "NEURON_FUSE_SOFTMAX": "1" if n.fuse_softmax else "0",
            "NEURON_RT_ASYNC_EXEC_MAX_INFLIGHT_REQUESTS": str(
                n.async_exec_max_inflight_requests or (7 if pipeline else 3)
            ),
            "MALLOC_ARENA_MAX": str(n.malloc_arena_max or (128 if pipeline else 64)),
            "NEURON_CC_FLAGS": f"{n.cc_flags} --cache_dir={compile_cache(cfg, cache_dir)}",
            # fp32 master weights and gradient accumulation (ZeRO-1); stochastic rounding off, as the example's
            # --use_gpu_compatible_precision 1 sets it.
            "NEURON_RT_STOCHASTIC_ROUNDING_EN": "0",
        }
    )
    if pipeline:
        # Closes a ~3% ZeRO-1 convergence gap on PT 2.1 (comment in run_llama3_70B_tp_pp.sh).
        env["XLA_DISABLE_FUNCTIONALIZATION"] = "0"
    else:
        # tp_zero1_llama3_8B_hf_pretrain.sh exports the node's NeuronCore count under these four names (the 70B
        # script does not).
        cores = str(derive(cfg).devices_per_node)
        env.update({k: cores for k in ("NEURON_RT_NUM_CORES", "NUM_NEURONCORES", "TPU_NUM_DEVICES")})
        env["TPU_CHIPS_PER_HOST_BOUNDS"] = cores
    if Precision(cfg.trainer.precision) == Precision.bf16:
        # fp32 torch tensors become bf16 on device; ZeRO-1's master weights stay fp32.
        env["XLA_DOWNCAST_BF16"] = "1"
    env.update(n.env)
    return env


RESERVED_PORTS = "/proc/sys/net/ipv4/ip_local_reserved_ports"


def reserve_port_command(port: int) -> str:
    """Bash that keeps the rendezvous port out of the kernel's ephemeral range, as NxD's scripts do (`sysctl -w
    net.ipv4.ip_local_reserved_ports=44000` before torchrun), without their faults: the port is the configured one,
    it is added to the node's reserved list instead of replacing it, it is skipped when already reserved, and
    sudo never prompts (`-n`): a node without passwordless sudo prints a warning and the job goes on (the port is
    then only unlikely, not certain, to be free)."""
    return (
        f"reserved=$(cat {RESERVED_PORTS} 2>/dev/null || true)\n"
        f"if ! tr , '\\n' <<<\"$reserved\" | grep -qx {port}; then\n"
        f'    sudo -n sysctl -q -w net.ipv4.ip_local_reserved_ports="${{reserved:+$reserved,}}{port}" || echo '
        f'"warning: could not reserve port {port} (needs passwordless sudo); cluster.neuron.reserve_port=false '
        f'silences this" >&2\n'
        "fi"
    )


def launch_argv(
    cfg: JobConfig, run_dir: Path | str, stage: Stage, python: str, node_rank: str, master_addr: str
) -> list[str]:
    """What each node runs for an nxd stage on trn1: torchrun, under neuron_parallel_compile for compile. The exec
    line of `node_command`; the plan shows it with placeholders for the node rank and address."""
    d, n = derive(cfg), cfg.cluster.neuron
    return [
        *(["neuron_parallel_compile"] if stage == Stage.compile else []),
        python,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={d.devices_per_node}",
        f"--nnodes={d.nodes}",
        f"--node_rank={node_rank}",
        f"--master_addr={master_addr}",
        f"--master_port={n.master_port}",
        "-m",
        "launcher.job",
        str(run_dir),
        stage.value,
    ]


def node_command(
    cfg: JobConfig, run_dir: Path | str, stage: Stage, python: str = "python", cache_dir: str | None = None
) -> str:
    """The bash each node's Slurm task runs (launcher/slurm_job.py: StageTask.node_script) for an nxd stage on trn1
    (`cache_dir`: the resolved cluster.cache_dir)."""
    n = cfg.cluster.neuron
    lines = [f"export {k}={shlex.quote(v)}" for k, v in nxd_env(cfg, cache_dir).items()]
    lines.append('MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)')
    if n.reserve_port:
        lines.append(reserve_port_command(n.master_port))
    # Every word quoted but the two the shell must expand.
    expand = ('--node_rank="$SLURM_NODEID"', '--master_addr="$MASTER_ADDR"')
    argv = launch_argv(cfg, run_dir, stage, python, '"$SLURM_NODEID"', '"$MASTER_ADDR"')
    lines.append("exec " + " ".join(w if w in expand else shlex.quote(w) for w in argv))
    return "\n".join(lines)
