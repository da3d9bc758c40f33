"""The NxD parallelisation of a Llama 3 model, as data (standard library only: no torch, no NxD).

For every module of the model that neuronx-distributed's (NxD's) Llama example builds
(`examples/training/llama/modeling_llama_nxd.py`, NxD "Release 2.29"): which NxD layer class, with which
constructor arguments, which parameters with which full and per-rank shapes, how each is partitioned over the
tensor-parallel (TP) ranks, and on which pipeline (PP) stage it lives. The nxd backend builds its model from this
plan; tests check it against the reference's shape table without NxD being installed.

Constructor arguments are NxD's own (`parallel_layers/layers.py`, `modules/qkv_linear.py`):
- `ParallelEmbedding(num_embeddings, embedding_dim, padding_idx, sequence_parallel_enabled=...)`: vocab-parallel,
  weight [V/tp, H].
- `ColumnParallelLinear(input_size, output_size, bias, gather_output, stride, sequence_parallel_enabled)`: weight
  [out/tp, in], partition dim 0. `gate_up_proj` is one of 2*I outputs with stride 2 (per rank [gate_r; up_r]); the
  MHA fused `qkv_proj` (qkv_linear off, fuse_qkv on, heads == kv heads) is 3*Hq*d with stride 3.
- `RowParallelLinear(input_size, output_size, bias, input_is_parallel, sequence_parallel_enabled)`: weight
  [out, in/tp], partition dim 1.
- `GQAQKVColumnParallelLinear(input_size, output_sizes=[Hq*d, Hkv*d], bias, gather_output, sequence_parallel_enabled,
  kv_size_multiplier, fuse_qkv)`: K/V heads replicated kv_size_multiplier times; fused `weight_qkv`
  [(Hq*d + 2*Hkv*d*kvm)/tp, H], else `weight_q` [Hq*d/tp, H] and `weight_k`/`weight_v` [Hkv*d*kvm/tp, H].
- RMSNorm (the example's own `LlamaRMSNorm`, not an NxD class): weight [H], replicated.
dtype and init_method are the backend's choice and not part of the plan.

Parameter names are the example's (HF names plus NxD's fused ones): `model.embed_tokens.weight`,
`model.layers.<i>.self_attn.qkv_proj.weight_qkv`, `...self_attn.o_proj.weight`, `...mlp.gate_up_proj.weight`,
`...mlp.down_proj.weight`, `...input_layernorm.weight`, `...post_attention_layernorm.weight`, `model.norm.weight`,
`lm_head.weight`. PP stages follow NxD's `pipeline.partition.create_partitions`: layers split evenly, the
remainder going to the last stages; embedding on the first stage, final norm and lm_head on the last.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LAYERS = "neuronx_distributed.parallel_layers.layers"
QKV = "neuronx_distributed.modules.qkv_linear"
CLASS_PATHS = {
    "ParallelEmbedding": f"{LAYERS}.ParallelEmbedding",
    "ColumnParallelLinear": f"{LAYERS}.ColumnParallelLinear",
    "RowParallelLinear": f"{LAYERS}.RowParallelLinear",
    "GQAQKVColumnParallelLinear": f"{QKV}.GQAQKVColumnParallelLinear",
    "RMSNorm": None,  # the model's own norm; replicated
}


@dataclass(frozen=True)
class ParamPlan:
    name: str  # full parameter name in the model
    full_shape: tuple[int, ...]  # the unsharded parameter (fused parameters: the concatenation, K/V replicated)
    rank_shape: tuple[int, ...]  # what each TP rank holds
    partition_dim: int | None  # None: replicated over TP
    stride: int = 1
    kv_replicated: int = 1  # K/V rows are the Hkv heads repeated this many times (GQA kv_size_multiplier)


@dataclass(frozen=True)
class ModulePlan:
    name: str  # module path in the model, e.g. "model.layers.0.self_attn.qkv_proj"
    layer: str  # NxD class name (or "RMSNorm")
    kwargs: dict  # constructor arguments
    params: tuple[ParamPlan, ...]
    pp_stage: int

    @property
    def class_path(self) -> str | None:
        return CLASS_PATHS[self.layer]


@dataclass(frozen=True)
class Llama3Arch:
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    num_hidden_layers: int
    rms_norm_eps: float = 1e-5
    pad_token_id: int | None = None  # the example passes it to ParallelEmbedding as padding_idx

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


LLAMA3_8B = Llama3Arch(4096, 32, 8, 14336, 128256, 32, pad_token_id=0)  # its config.json has pad_token_id 0
LLAMA3_70B = Llama3Arch(8192, 64, 8, 28672, 128256, 80)


@dataclass(frozen=True)
class NxDPlan:
    arch: Llama3Arch
    tp: int
    pp: int
    kv_size_multiplier: int
    fuse_qkv: bool
    qkv_linear: bool
    sequence_parallel: bool
    modules: tuple[ModulePlan, ...] = field(repr=False)

    def module(self, name: str) -> ModulePlan:
        for m in self.modules:
            if m.name == name:
                return m
        raise KeyError(name)

    def params(self) -> dict[str, ParamPlan]:
        return {p.name: p for m in self.modules for p in m.params}

    def rank_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: p.rank_shape for name, p in self.params().items()}

    def stage_layers(self) -> list[list[int]]:
        """Decoder layer indices per PP stage."""
        return _stage_layers(self.arch.num_hidden_layers, self.pp)

    def params_per_rank(self, pp_stage: int) -> int:
        """Parameter elements one rank (NeuronCore) of the given PP stage holds."""
        return sum(_numel(p.rank_shape) for m in self.modules if m.pp_stage == pp_stage for p in m.params)

    def max_params_per_rank(self) -> int:
        return max(self.params_per_rank(s) for s in range(self.pp))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _divide(n: int, d: int, what: str) -> int:
    if n % d:
        raise ValueError(f"{what} ({n}) is not divisible by {d}")
    return n // d


def _stage_layers(layers: int, pp: int) -> list[list[int]]:
    if layers < pp:
        raise ValueError(f"num_hidden_layers ({layers}) must be at least pipeline_parallel_size ({pp})")
    counts = [layers // pp] * pp
    for i in range(-(layers % pp), 0):
        counts[i] += 1
    out, start = [], 0
    for c in counts:
        out.append(list(range(start, start + c)))
        start += c
    return out


def _column(name: str, in_f: int, out_f: int, tp: int, stage: int, sp: bool, stride: int = 1) -> ModulePlan:
    kwargs = {"input_size": in_f, "output_size": out_f, "bias": False, "gather_output": False}
    if stride != 1:
        kwargs["stride"] = stride
    kwargs["sequence_parallel_enabled"] = sp
    rows = _divide(out_f, tp, f"{name} output_size")
    if stride != 1:
        _divide(rows, stride, f"{name} rows per rank")
    param = ParamPlan(f"{name}.weight", (out_f, in_f), (rows, in_f), 0, stride)
    return ModulePlan(name, "ColumnParallelLinear", kwargs, (param,), stage)


def _row(name: str, in_f: int, out_f: int, tp: int, stage: int, sp: bool) -> ModulePlan:
    kwargs = {
        "input_size": in_f,
        "output_size": out_f,
        "bias": False,
        "input_is_parallel": True,
        "sequence_parallel_enabled": sp,
    }
    param = ParamPlan(f"{name}.weight", (out_f, in_f), (out_f, _divide(in_f, tp, f"{name} input_size")), 1)
    return ModulePlan(name, "RowParallelLinear", kwargs, (param,), stage)


def _norm(name: str, arch: Llama3Arch, stage: int, sp: bool) -> ModulePlan:
    kwargs = {"hidden_size": arch.hidden_size, "eps": arch.rms_norm_eps, "sequence_parallel_enabled": sp}
    h = arch.hidden_size
    return ModulePlan(name, "RMSNorm", kwargs, (ParamPlan(f"{name}.weight", (h,), (h,), None),), stage)


def _attention(
    prefix: str, arch: Llama3Arch, tp: int, kvm: int, fuse_qkv: bool, qkv_linear: bool, stage: int, sp: bool
):
    h, d, hq, hkv = arch.hidden_size, arch.head_dim, arch.num_attention_heads, arch.num_key_value_heads
    _divide(hq, tp, "num_attention_heads")
    q_size, kv_size = hq * d, hkv * d
    if qkv_linear:
        if tp % kvm:
            raise ValueError(f"tensor parallel size ({tp}) must be divisible by kv_size_multiplier ({kvm})")
        _divide(hkv * kvm, tp, "num_key_value_heads * kv_size_multiplier (KV heads per rank)")
        q_rows, kv_rows = q_size // tp, kv_size * kvm // tp
        name = f"{prefix}.qkv_proj"
        kwargs = {
            "input_size": h,
            "output_sizes": [q_size, kv_size],
            "bias": False,
            "gather_output": False,
            "sequence_parallel_enabled": sp,
            "kv_size_multiplier": kvm,
            "fuse_qkv": fuse_qkv,
        }
        params: tuple[ParamPlan, ...]
        if fuse_qkv:
            full = q_size + 2 * kv_size * kvm
            params = (ParamPlan(f"{name}.weight_qkv", (full, h), (q_rows + 2 * kv_rows, h), 0, 1, kvm),)
        else:
            params = (
                ParamPlan(f"{name}.weight_q", (q_size, h), (q_rows, h), 0),
                ParamPlan(f"{name}.weight_k", (kv_size * kvm, h), (kv_rows, h), 0, 1, kvm),
                ParamPlan(f"{name}.weight_v", (kv_size * kvm, h), (kv_rows, h), 0, 1, kvm),
            )
        qkv = [ModulePlan(name, "GQAQKVColumnParallelLinear", kwargs, params, stage)]
    else:
        if kvm != 1:
            raise ValueError("kv_size_multiplier needs qkv_linear (GQAQKVColumnParallelLinear)")
        if fuse_qkv and hq == hkv:
            qkv = [_column(f"{prefix}.qkv_proj", h, 3 * q_size, tp, stage, sp, stride=3)]
        else:
            # The example's separate projections: its attention divides the KV heads by tp, so tp <= kv heads.
            _divide(hkv, tp, "num_key_value_heads (without qkv_linear)")
            qkv = [
                _column(f"{prefix}.q_proj", h, q_size, tp, stage, sp),
                _column(f"{prefix}.k_proj", h, kv_size, tp, stage, sp),
                _column(f"{prefix}.v_proj", h, kv_size, tp, stage, sp),
            ]
    return [*qkv, _row(f"{prefix}.o_proj", q_size, h, tp, stage, sp)]


def plan(
    arch: Llama3Arch,
    tp: int,
    pp: int = 1,
    kv_size_multiplier: int = 1,
    fuse_qkv: bool = True,
    qkv_linear: bool = True,
    sequence_parallel: bool = False,
) -> NxDPlan:
    """The plan for `arch` at tensor parallel `tp` and pipeline parallel `pp` (NxD's defaults: fuse_qkv on)."""
    if tp < 1 or pp < 1 or kv_size_multiplier < 1:
        raise ValueError("tp, pp and kv_size_multiplier must be >= 1")
    if arch.head_dim * arch.num_attention_heads != arch.hidden_size:
        raise ValueError("hidden_size must be num_attention_heads * head_dim")
    h, i, v, sp = arch.hidden_size, arch.intermediate_size, arch.vocab_size, sequence_parallel
    stages = _stage_layers(arch.num_hidden_layers, pp)
    last = pp - 1
    emb_kwargs = {
        "num_embeddings": v,
        "embedding_dim": h,
        "padding_idx": arch.pad_token_id,
        "sequence_parallel_enabled": sp,
    }
    embedding = ModulePlan(
        "model.embed_tokens",
        "ParallelEmbedding",
        emb_kwargs,
        (ParamPlan("model.embed_tokens.weight", (v, h), (_divide(v, tp, "vocab_size"), h), 0),),
        0,
    )
    modules = [embedding]
    for stage, layer_ids in enumerate(stages):
        for n in layer_ids:
            p = f"model.layers.{n}"
            modules.append(_norm(f"{p}.input_layernorm", arch, stage, sp))
            modules += _attention(f"{p}.self_attn", arch, tp, kv_size_multiplier, fuse_qkv, qkv_linear, stage, sp)
            modules.append(_norm(f"{p}.post_attention_layernorm", arch, stage, sp))
            modules.append(_column(f"{p}.mlp.gate_up_proj", h, 2 * i, tp, stage, sp, stride=2))
            modules.append(_row(f"{p}.mlp.down_proj", i, h, tp, stage, sp))
    modules.append(_norm("model.norm", arch, last, sp))
    modules.append(_column("lm_head", h, v, tp, last, sp))
    return NxDPlan(arch, tp, pp, kv_size_multiplier, fuse_qkv, qkv_linear, sequence_parallel, tuple(modules))
