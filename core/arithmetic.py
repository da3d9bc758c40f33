"""Derived numbers, computed once: world size, data-parallel degree, batches, pipeline stages, heads per rank,
parameter counts and a memory estimate.

Torch-free and dependency-free: the plan, the validator, the checkpoint converter and the NxD launch all call
these functions, so a number the user never types cannot disagree between two stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.config import Accelerator
from train.config import Backend

if TYPE_CHECKING:
    from core.config import JobConfig
    from model.config import ModelConfig, ParallelConfig

# Devices (processes) per node for each accelerator when cluster.devices_per_node is 0.
DEVICES_PER_NODE = {Accelerator.trn1: 32, Accelerator.trn2: 64, Accelerator.cuda: 8}
DEVICE_MEMORY_GB = {Accelerator.trn1: 16.0, Accelerator.trn2: 24.0, Accelerator.cuda: 80.0}


def backend_for(cfg: JobConfig) -> Backend:
    """trn1 runs NxD (XLA); trn2/cuda/cpu run plain torch.distributed (TorchNeuron on trn2)."""
    if cfg.trainer.backend != Backend.auto:
        return cfg.trainer.backend
    return Backend.nxd if cfg.cluster.accelerator == Accelerator.trn1 else Backend.torch


def devices_per_node(cfg: JobConfig) -> int:
    if cfg.cluster.devices_per_node > 0:
        return cfg.cluster.devices_per_node
    if cfg.cluster.accelerator in DEVICES_PER_NODE:
        return DEVICES_PER_NODE[cfg.cluster.accelerator]
    # CPU: one process per rank of the parallel plan, spread over the nodes.
    p = cfg.parallel
    ranks = p.tensor_parallel_degree * p.pipeline_parallel_degree * max(p.data_parallel_degree, 1)
    return max(ranks // max(cfg.cluster.nodes, 1), 1)


def layers_per_stage(num_layers: int, pp: int) -> list[int]:
    """NxD's `create_partitions`: equal layers per stage, the remainder going to the last stages."""
    base, rem = divmod(num_layers, pp)
    return [base + (1 if s >= pp - rem else 0) for s in range(pp)]


def stage_layer_ranges(num_layers: int, pp: int) -> list[range]:
    out, start = [], 0
    for n in layers_per_stage(num_layers, pp):
        out.append(range(start, start + n))
        start += n
    return out


def head_dim(m: ModelConfig) -> int:
    return m.hidden_size // max(m.num_attention_heads, 1)  # total: validation reports heads < 1


def heads_per_rank(m: ModelConfig, tp: int, kv_size_multiplier: int = 1) -> tuple[int, int]:
    """(query heads, key/value heads) held by one tensor-parallel rank (K/V after NxD replication)."""
    return m.num_attention_heads // tp, m.num_key_value_heads * kv_size_multiplier // tp


def parameter_count(m: ModelConfig) -> int:
    h, i, v, d = m.hidden_size, m.intermediate_size, m.vocab_size, head_dim(m)
    attn = h * m.num_attention_heads * d * 2 + h * m.num_key_value_heads * d * 2
    layer = attn + 3 * h * i + 2 * h
    head = 0 if m.tie_word_embeddings else v * h
    return v * h + m.num_hidden_layers * layer + h + head


# Above this many parameters the nxd backend builds the model on the meta device and lets each rank initialise only
# its shards (NxD's `meta_device_init`, as its 70B example; the 8B one does not): a full fp32 copy per process
# (32 per trn1 node) would not fit in host memory. NxD's sequential_move_factor comment: "works for 20B".
NXD_META_INIT_PARAMETERS = 20_000_000_000


def nxd_meta_device_init(m: ModelConfig) -> bool:
    return parameter_count(m) > NXD_META_INIT_PARAMETERS


def nxd_sequence_parallel(p: ParallelConfig, tp: int) -> bool:
    """Whether the nxd backend shards activations over the sequence: parallel.sequence_parallel, at tp > 1 (at tp 1
    there is nothing to split, and NxD warns)."""
    return bool(p.sequence_parallel) and tp > 1


def nxd_params_per_core(m: ModelConfig, tp: int, pp: int, kv_size_multiplier: int) -> int:
    """Most parameter elements one NeuronCore holds under NxD's layout (model/nxd_plan.py, which a test checks this
    against): the fused QKV with K/V replicated kv_size_multiplier times, gate_up, o/down, norms; the embedding on
    the first pipeline stage, final norm and lm_head on the last; the largest stage counts."""
    h, d, i = m.hidden_size, head_dim(m), m.intermediate_size
    qkv = (m.num_attention_heads * d + 2 * m.num_key_value_heads * d * kv_size_multiplier) // tp * h
    layer = qkv + h * (m.num_attention_heads * d // tp) + 2 * i // tp * h + h * (i // tp) + 2 * h
    vocab = m.vocab_size // tp * h
    stages = layers_per_stage(m.num_hidden_layers, pp)
    per_stage = [n * layer for n in stages]
    per_stage[0] += vocab
    per_stage[-1] += h + vocab
    return max(per_stage)


@dataclass(frozen=True)
class NeuronCoreMemory:
    """The NxD backend's memory per NeuronCore, GB (1e9 bytes) as the issue states them: bf16 weights, fp32
    gradients (fp32 accumulation), fp32 master weights + two Adam moments sharded over dp (ZeRO-1), and an
    activation estimate (stated in `activation_rule`)."""

    params: int
    weights_gb: float
    grads_gb: float
    optimizer_gb: float
    activations_gb: float
    activation_rule: str
    capacity_gib: float

    @property
    def state_gb(self) -> float:
        return self.weights_gb + self.grads_gb + self.optimizer_gb

    @property
    def total_gb(self) -> float:
        return self.state_gb + self.activations_gb

    @property
    def fits(self) -> bool:
        return self.total_gb * 1e9 <= self.capacity_gib * 2**30

    def describe(self) -> str:
        return (
            f"{self.params:,} params: weights {self.weights_gb:.3f} + grads {self.grads_gb:.3f} + optimizer "
            f"{self.optimizer_gb:.3f} = {self.state_gb:.3f} GB, + activations ~{self.activations_gb:.3f} GB "
            f"({self.activation_rule}) = {self.total_gb:.3f} GB of {self.capacity_gib:.0f} GiB"
        )


def activation_bytes_per_layer(cfg: JobConfig, tp: int) -> tuple[float, str]:
    """Per layer and micro-batch, bf16 (Korthikanti et al. 2022, 'Reducing Activation Recomputation'): s b h x
    34/tp with sequence parallelism and selective recomputation, (10 + 24/tp) with selective only, plus
    5 a s / (h tp) without recomputation; 2 s b h (the layer input) with full recomputation."""
    p, m = cfg.parallel, cfg.model
    s, b, h, a = cfg.data.seq_len, cfg.trainer.micro_batch_size, m.hidden_size, m.num_attention_heads
    sbh = s * b * h
    mode = p.activation_checkpointing
    if mode == "full":
        return 2 * sbh, "full recomputation: 2sbh per layer"
    if mode == "selective":
        if nxd_sequence_parallel(p, tp):
            return 34 * sbh / tp, "selective recomputation + sequence parallelism: 34sbh/tp per layer"
        return sbh * (10 + 24 / tp), "selective recomputation: sbh(10 + 24/tp) per layer"
    return sbh * (10 + 24 / tp + 5 * a * s / (h * tp)), "no recomputation: sbh(10 + 24/tp + 5as/(h tp)) per layer"


def neuron_core_memory(cfg: JobConfig, tp: int, pp: int, dp: int, micro_batches: int) -> NeuronCoreMemory:
    m, p = cfg.model, cfg.parallel
    n = nxd_params_per_core(m, tp, pp, p.kv_size_multiplier)
    opt_bytes = 12 / max(dp, 1) if p.zero1 else 12
    per_layer, rule = activation_bytes_per_layer(cfg, tp)
    # 1F1B: the first stage holds up to pp micro-batches in flight, each its stage's layers.
    in_flight = min(pp, max(micro_batches, 1)) if pp > 1 else 1
    layers = max(layers_per_stage(m.num_hidden_layers, pp))
    acts = per_layer * layers * in_flight
    rule += f" x {layers} layers x {in_flight} micro-batch(es) in flight"
    capacity = cfg.cluster.device_memory_gb or DEVICE_MEMORY_GB.get(cfg.cluster.accelerator, 16.0)
    return NeuronCoreMemory(n, n * 2 / 1e9, n * 4 / 1e9, n * opt_bytes / 1e9, acts / 1e9, rule, capacity)


@dataclass(frozen=True)
class Derived:
    backend: Backend
    nodes: int
    devices_per_node: int
    world_size: int
    tensor_parallel: int
    pipeline_parallel: int
    data_parallel: int
    # Samples per data-parallel replica per optimizer step (= global batch / dp).
    batch_per_replica: int
    micro_batch_size: int
    # Micro-batches per optimizer step per replica: pipeline micro-batches under PP, accumulation steps otherwise.
    micro_batches: int
    grad_accum_steps: int
    tokens_per_step: int
    layers_per_stage: tuple[int, ...]
    q_heads_per_rank: int
    kv_heads_per_rank: int
    parameters: int
    parameters_per_device: int
    # Weights + gradients + optimizer state per device (activations excluded), GiB.
    state_gb_per_device: float
    device_memory_gb: float
    # The nxd backend's per-NeuronCore estimate (None on the torch backend).
    neuron_core: NeuronCoreMemory | None = None

    def as_rows(self) -> list[tuple[str, str]]:
        return [
            ("backend", self.backend.value),
            ("world size", f"{self.nodes} nodes x {self.devices_per_node} devices = {self.world_size}"),
            (
                "parallelism",
                f"tp {self.tensor_parallel} x pp {self.pipeline_parallel} x dp {self.data_parallel}",
            ),
            (
                "batch",
                f"global {self.batch_per_replica * self.data_parallel} = dp {self.data_parallel} x "
                f"{self.micro_batches} micro-batches x {self.micro_batch_size}",
            ),
            ("grad accumulation", str(self.grad_accum_steps)),
            ("tokens per step", f"{self.tokens_per_step:,}"),
            ("layers per pipeline stage", ", ".join(map(str, self.layers_per_stage))),
            ("heads per tp rank", f"{self.q_heads_per_rank} q / {self.kv_heads_per_rank} kv"),
            ("parameters", f"{self.parameters:,} ({_human(self.parameters)})"),
            ("parameters per device", f"{self.parameters_per_device:,}"),
            (
                "memory per device",
                f"{self.state_gb_per_device:.1f} GiB weights+grads+optimizer"
                + (f" of {self.device_memory_gb:.0f} GiB" if self.device_memory_gb else "")
                + " (activations excluded)",
            ),
            *([("memory per NeuronCore", self.neuron_core.describe())] if self.neuron_core else []),
        ]


def _safe_div(a: int, b: int) -> int:
    return a // b if b > 0 else 0


def derive(cfg: JobConfig) -> Derived:
    """Total function: never raises on inconsistent input (validation reports that); zeros mark the undefined."""
    p, t, m = cfg.parallel, cfg.trainer, cfg.model
    backend = backend_for(cfg)
    dpn = devices_per_node(cfg)
    world = cfg.cluster.nodes * dpn
    tp, pp = max(p.tensor_parallel_degree, 1), max(p.pipeline_parallel_degree, 1)
    dp = p.data_parallel_degree if p.data_parallel_degree > 0 else _safe_div(world, tp * pp)
    per_replica = _safe_div(t.global_batch_size, dp)
    micro = _safe_div(per_replica, t.micro_batch_size)
    kvm = p.kv_size_multiplier if backend == Backend.nxd else 1
    q_heads, kv_heads = heads_per_rank(m, tp, kvm)
    params = parameter_count(m)
    per_device = params // (tp * pp)
    if backend == Backend.nxd and p.zero1:
        # bf16 weights, fp32 gradient accumulation; fp32 master weights + Adam moments sharded over dp.
        bytes_per_param = 2 + 4 + 12 / max(dp, 1)
    elif p.data_parallel_mode.value == "fsdp":
        bytes_per_param = 16 / max(dp, 1)
    else:
        bytes_per_param = 16  # fp32 weights, grads, Adam exp_avg and exp_avg_sq
    return Derived(
        backend=backend,
        nodes=cfg.cluster.nodes,
        devices_per_node=dpn,
        world_size=world,
        tensor_parallel=tp,
        pipeline_parallel=pp,
        data_parallel=dp,
        batch_per_replica=per_replica,
        micro_batch_size=t.micro_batch_size,
        micro_batches=micro,
        grad_accum_steps=1 if pp > 1 else micro,
        tokens_per_step=t.global_batch_size * cfg.data.seq_len,
        layers_per_stage=tuple(layers_per_stage(m.num_hidden_layers, pp)),
        q_heads_per_rank=q_heads,
        kv_heads_per_rank=kv_heads,
        parameters=params,
        parameters_per_device=per_device,
        state_gb_per_device=per_device * bytes_per_param / 2**30,
        device_memory_gb=cfg.cluster.device_memory_gb or DEVICE_MEMORY_GB.get(cfg.cluster.accelerator, 0.0),
        neuron_core=_neuron_core(cfg, backend, tp, pp, dp, micro),
    )


def _neuron_core(cfg: JobConfig, backend: Backend, tp: int, pp: int, dp: int, micro: int) -> NeuronCoreMemory | None:
    m = cfg.model
    if backend != Backend.nxd or dp < 1 or m.num_attention_heads % tp or m.vocab_size % tp:
        return None
    return neuron_core_memory(cfg, tp, pp, dp, micro)


def _human(n: int) -> str:
    """70.55 B, 8.03 B, 4.2 M: the scale people quote model sizes in."""
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"
