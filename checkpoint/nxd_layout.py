"""NxD's per-rank layout of a Llama checkpoint as data: which HF rows/columns each `tp_rank`/`pp_rank` file holds.

One plan serves both directions. HF -> NxD reads each rank tensor's pieces from the HF tensors; NxD -> HF
scatters the same pieces back. The rules are those of NxD's `checkpoint_converter.py` (`--convert_from_full_state`)
and of the runtime layers that load its output (facts in shared/reference/nxd-llama-example.md section 3):

- embed_tokens / lm_head: vocab rows split over tp; embedding on pp rank 0, norm + lm_head on the last pp rank.
- qkv_linear (GQAQKVColumnParallelLinear, trn1): K/V heads tiled `kv_size_multiplier` times (K0..K7, K0..K7, ...)
  and split over tp; each rank gets the Q heads of its K/V head's group, so Q rows (and o_proj columns) are
  regrouped. Stored as `qkv_proj.weight_q/_k/_v`, or fused per rank as `qkv_proj.weight_qkv` = [q_r; k_r; v_r].
- without qkv_linear: natural dim-0 splits of q/k/v (MHA + fuse_qkv: per rank [q_r; k_r; v_r] in
  `qkv_proj.weight`, NxD's `--coalesce_qkv` layout that its stride-3 `qkv_proj` loads).
- gate_up_proj: per rank [gate_r; up_r]; o_proj and down_proj split on dim 1; norms replicated.
- layers: contiguous blocks per pipeline rank, as NxD's `create_partitions` (core.arithmetic).

Key order within a rank file follows NxD's: HF module order, gate_up at the gate position, fused qkv (and the
coalesced MHA qkv) appended after everything else, in layer order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.arithmetic import stage_layer_ranges
from core.problems import Problem, divisors, raise_if
from model.rules import architecture_problems

if TYPE_CHECKING:
    from model.config import ModelConfig

from model.names import nxd_leaf

# NxD's names of its fused tensors, from the one names table (model/names.py).
QKV_FUSED = nxd_leaf("layers.{}.attention.qkv.weight_qkv")
QKV_SEPARATE = tuple(nxd_leaf(f"layers.{{}}.attention.qkv.weight_{x}") for x in "qkv")
GATE_UP = nxd_leaf("layers.{}.feed_forward.gate_up.weight")

HW_BACKENDS = ("trn1",)
LAYER_KEYS = (
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
)


@dataclass(frozen=True)
class Arch:
    """The config.json numbers the layout depends on."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool = False

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any], where: str = "config.json") -> Arch:
        missing = [
            f
            for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
            if f not in hf
        ]
        if missing:
            raise ValueError(
                f"{where} lacks {', '.join(missing)}: it is not a Llama config.json; pass the "
                "config.json of the model being converted (--config)."
            )
        hd = hf.get("head_dim")
        if hd is not None and int(hd) * int(hf["num_attention_heads"]) != int(hf["hidden_size"]):
            raise ValueError(
                f"{where} has head_dim {hd}, but hidden_size {hf['hidden_size']} / num_attention_heads "
                f"{hf['num_attention_heads']} is {int(hf['hidden_size']) / int(hf['num_attention_heads']):g}: "
                "NxD's Llama layout needs head_dim x num_attention_heads == hidden_size. Pass the config.json "
                "that belongs to these weights (--config)."
            )
        return cls(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_hidden_layers=int(hf["num_hidden_layers"]),
            num_attention_heads=int(hf["num_attention_heads"]),
            num_key_value_heads=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )

    @classmethod
    def from_model(cls, m: ModelConfig) -> Arch:
        """The numbers of a configured model (what its config.json will say)."""
        return cls(
            vocab_size=m.vocab_size,
            hidden_size=m.hidden_size,
            intermediate_size=m.intermediate_size,
            num_hidden_layers=m.num_hidden_layers,
            num_attention_heads=m.num_attention_heads,
            num_key_value_heads=m.num_key_value_heads,
            tie_word_embeddings=m.tie_word_embeddings,
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def hf_shape(self, key: str) -> tuple[int, ...]:
        h, i, v, d = self.hidden_size, self.intermediate_size, self.vocab_size, self.head_dim
        leaf = key.split(".", 3)[-1] if key.startswith("model.layers.") else key
        return {
            "model.embed_tokens.weight": (v, h),
            "lm_head.weight": (v, h),
            "model.norm.weight": (h,),
            "self_attn.q_proj.weight": (self.num_attention_heads * d, h),
            "self_attn.k_proj.weight": (self.num_key_value_heads * d, h),
            "self_attn.v_proj.weight": (self.num_key_value_heads * d, h),
            "self_attn.o_proj.weight": (h, self.num_attention_heads * d),
            "mlp.gate_proj.weight": (i, h),
            "mlp.up_proj.weight": (i, h),
            "mlp.down_proj.weight": (h, i),
            "input_layernorm.weight": (h,),
            "post_attention_layernorm.weight": (h,),
        }[leaf]


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int = 1
    kv_size_multiplier: int = 1
    qkv_linear: bool = True
    fuse_qkv: bool = True
    hw_backend: str = "trn1"

    def describe(self) -> str:
        return (
            f"tp {self.tp} x pp {self.pp}, kv_size_multiplier {self.kv_size_multiplier}, qkv_linear "
            f"{int(self.qkv_linear)}, fuse_qkv {int(self.fuse_qkv)}, hw_backend {self.hw_backend}"
        )


@dataclass(frozen=True)
class RowPiece:
    """Rows (dim 0) or columns (dim 1) `ranges` of one HF tensor, concatenated along `dim`; dim -1 = whole."""

    hf_key: str
    dim: int
    ranges: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class RankTensor:
    """One tensor of a rank file: its pieces concatenated along dim 0."""

    key: str
    shape: tuple[int, ...]
    pieces: tuple[RowPiece, ...]
    # NxD saves the regrouped o_proj as the transpose of a row-major [q_rows, hidden] block: strides (1, rows).
    column_major: bool = False

    @property
    def stride(self) -> tuple[int, ...]:
        if self.column_major:
            return (1, self.shape[0])
        out, n = [], 1
        for size in reversed(self.shape):
            out.append(n)
            n *= size
        return tuple(reversed(out))


def hf_keys(arch: Arch) -> list[str]:
    """HF weight names in `LlamaForCausalLM.state_dict()` order (what NxD's converter iterates)."""
    keys = ["model.embed_tokens.weight"]
    for li in range(arch.num_hidden_layers):
        keys += [f"model.layers.{li}.{k}" for k in LAYER_KEYS]
    return [*keys, "model.norm.weight", "lm_head.weight"]


# The converter's words for the layout fields (its flags); config.json fields keep their own names.
CONVERTER_NAMES = {
    "tp": "--tp_size",
    "pp": "--pp_size",
    "kv_size_multiplier": "--kv_size_multiplier",
    "qkv_linear": "--qkv_linear",
    "hw_backend": "--hw_backend",
}


def converter_name(field: str) -> str:
    return CONVERTER_NAMES.get(field, field)


def layout_problems(arch: Arch, layout: Layout, name: Callable[[str], str] = converter_name) -> list[Problem]:
    """Every rule the layout breaks for this model (NxD's converter and GQAQKVColumnParallelLinear), each once.

    `name` maps an `Arch`/`Layout` field to the caller's key: the converter's flags by default; the launcher maps
    them to config keys (launcher/validate.py) and reports the same sentences at plan time.
    """
    a, lo = arch, layout
    hq, hkv, kvm, tp, pp = a.num_attention_heads, a.num_key_value_heads, lo.kv_size_multiplier, lo.tp, lo.pp
    low = [Problem(name(f), v, "must be at least 1.", f"set {name(f)}=1.") for f, v in _degrees(lo) if v < 1]
    if low:
        return low
    out: list[Problem] = []
    if lo.hw_backend not in HW_BACKENDS:
        out.append(
            Problem(
                name("hw_backend"),
                lo.hw_backend,
                f"is not supported (only {', '.join(HW_BACKENDS)}: NxD's trn2 converter tiles K/V while the trn2 "
                "runtime interleaves them, an unverified layout).",
                f"set {name('hw_backend')}=trn1.",
            )
        )
    out += [Problem(*p) for p in architecture_problems(a.hidden_size, hq, hkv, name)]
    sizes = {"num_attention_heads": hq, "vocab_size": a.vocab_size, "intermediate_size": a.intermediate_size}
    bad = [f"{name(f)} ({n})" for f, n in sizes.items() if n % tp]
    if bad:
        fits = [d for d in divisors(hq) if all(n % d == 0 for n in sizes.values())]
        out.append(
            Problem(
                name("tp"),
                tp,
                f"must divide {', '.join(bad)} so every rank holds whole query heads and equal slices.",
                f"pick one of {fits}.",
            )
        )
    if a.num_hidden_layers % pp:
        out.append(
            Problem(
                name("pp"),
                pp,
                f"must divide {name('num_hidden_layers')} ({a.num_hidden_layers}) so every stage gets the same "
                "number of layers.",
                f"pick one of {divisors(a.num_hidden_layers)}.",
            )
        )
    if hq % max(hkv, 1) == 0 and hkv >= 1:
        out += _kv_problems(hkv, kvm, tp, lo.qkv_linear, name)
    return out


def _degrees(lo: Layout) -> tuple[tuple[str, int], ...]:
    return (("tp", lo.tp), ("pp", lo.pp), ("kv_size_multiplier", lo.kv_size_multiplier))


def _kv_problems(hkv: int, kvm: int, tp: int, qkv_linear: bool, name: Callable[[str], str]) -> list[Problem]:
    """How K/V heads reach the tp ranks: replicated kv_size_multiplier times by GQAQKVColumnParallelLinear
    (qkv_linear), which asserts tp % kvm == 0, or split as they are (every rank needs whole K/V heads)."""
    kv, mult, deg = name("num_key_value_heads"), name("kv_size_multiplier"), name("tp")
    if not qkv_linear:
        if kvm != 1:
            return [
                Problem(
                    mult,
                    kvm,
                    "K/V replication is a GQAQKVColumnParallelLinear feature: it needs qkv_linear.",
                    f"set {name('qkv_linear')}=1, or {mult}=1.",
                )
            ]
        if hkv % tp:
            return [
                Problem(
                    deg,
                    tp,
                    f"must divide {kv} ({hkv}) without qkv_linear (K/V heads are split, not replicated).",
                    f"set {name('qkv_linear')}=1 (K/V replication), or pick {deg} from {divisors(hkv)}.",
                )
            ]
        return []
    if tp % kvm:
        return [
            Problem(
                mult,
                kvm,
                f"must divide {deg} ({tp}) (NxD GQAQKVColumnParallelLinear).",
                f"pick one of {divisors(tp)}.",
            )
        ]
    if (kvm > 1 and hkv * kvm != tp) or (kvm == 1 and hkv % tp):
        fix = (
            f"set {mult}={tp // hkv}."
            if tp % hkv == 0
            else f"use a {deg} that is a multiple of {kv} ({hkv}) or divides it."
        )
        return [
            Problem(
                mult,
                kvm,
                f"{kv} ({hkv}) x {mult} must equal {deg} ({tp}) so every rank holds exactly one KV head (what "
                f"NxD's converter and GQAQKVColumnParallelLinear need), or the K/V heads must split over tp "
                f"unreplicated: {hkv} x {kvm} = {hkv * kvm} != {tp}.",
                fix,
            )
        ]
    return []


def check(arch: Arch, layout: Layout) -> None:
    """Raise one ValueError naming every rule the layout breaks for this model, in the converter's words."""
    raise_if(
        layout_problems(arch, layout),
        intro=f"Cannot lay out this model ({arch.num_attention_heads} heads, {arch.num_key_value_heads} KV heads, "
        f"{arch.num_hidden_layers} layers, vocab {arch.vocab_size}) as NxD {layout.describe()}: ",
    )


def _runs(indices: list[int], size: int) -> tuple[tuple[int, int], ...]:
    """Index list (heads) -> merged [start, stop) ranges of rows of `size` each."""
    out: list[list[int]] = []
    for i in indices:
        if out and out[-1][1] == i * size:
            out[-1][1] += size
        else:
            out.append([i * size, (i + 1) * size])
    return tuple((a, b) for a, b in out)


def rank_heads(arch: Arch, layout: Layout, tp_rank: int) -> tuple[list[int], list[int]]:
    """(Q heads, K/V heads) of a tensor-parallel rank, in the rank's row order.

    The K/V heads, tiled kvm times, are split contiguously over tp; tiled slot p is KV head p % Hkv, copy
    p // Hkv, and serves the copy's share of that head's Q group. With tp == Hkv * kvm this is NxD's trn1 rule
    (rank r = i * Hkv + j gets Q block (tp / Hkv) * j + i); with kvm 1 it is the natural contiguous split.
    """
    hq, hkv = arch.num_attention_heads, arch.num_key_value_heads
    kvm = layout.kv_size_multiplier if layout.qkv_linear else 1
    slots = hkv * kvm // layout.tp
    share = hq // (hkv * kvm)
    q, kv = [], []
    for p in range(tp_rank * slots, (tp_rank + 1) * slots):
        j, m = p % hkv, p // hkv
        kv.append(j)
        q += [j * (hq // hkv) + m * share + s for s in range(share)]
    return q, kv


def _layer_tensors(arch: Arch, layout: Layout, li: int, r: int) -> tuple[list[RankTensor], list[RankTensor]]:
    """(tensors in HF position, tensors NxD appends at the end) of layer `li` on tp rank `r`."""
    h, d, tp = arch.hidden_size, arch.head_dim, layout.tp
    p = f"model.layers.{li}."
    q_heads, kv_heads = rank_heads(arch, layout, r)
    q = RowPiece(p + "self_attn.q_proj.weight", 0, _runs(q_heads, d))
    k = RowPiece(p + "self_attn.k_proj.weight", 0, _runs(kv_heads, d))
    v = RowPiece(p + "self_attn.v_proj.weight", 0, _runs(kv_heads, d))
    qn, kvn = len(q_heads) * d, len(kv_heads) * d
    inter = arch.intermediate_size // tp
    rows = (r * inter, (r + 1) * inter)
    o = RankTensor(
        p + "self_attn.o_proj.weight",
        (h, qn),
        (RowPiece(p + "self_attn.o_proj.weight", 1, q.ranges),),
        column_major=layout.qkv_linear,
    )
    mlp = [
        RankTensor(
            p + GATE_UP,
            (2 * inter, h),
            (RowPiece(p + "mlp.gate_proj.weight", 0, (rows,)), RowPiece(p + "mlp.up_proj.weight", 0, (rows,))),
        ),
        RankTensor(p + "mlp.down_proj.weight", (h, inter), (RowPiece(p + "mlp.down_proj.weight", 1, (rows,)),)),
        *(
            RankTensor(p + n, (h,), (RowPiece(p + n, -1),))
            for n in ("input_layernorm.weight", "post_attention_layernorm.weight")
        ),
    ]
    fused = (q, k, v)
    if layout.qkv_linear:
        if layout.fuse_qkv:
            return [o, *mlp], [RankTensor(p + QKV_FUSED, (qn + 2 * kvn, h), fused)]
        separate = [RankTensor(p + n, (rows_, h), (pc,)) for n, rows_, pc in zip(QKV_SEPARATE, (qn, kvn, kvn), fused)]
        return [*separate, o, *mlp], []
    if layout.fuse_qkv and arch.num_attention_heads == arch.num_key_value_heads:
        return [o, *mlp], [RankTensor(p + "self_attn.qkv_proj.weight", (qn + 2 * kvn, h), fused)]
    separate = [RankTensor(pc.hf_key, (rows_, h), (pc,)) for rows_, pc in zip((qn, kvn, kvn), fused)]
    return [*separate, o, *mlp], []


def rank_plan(arch: Arch, layout: Layout, tp_rank: int, pp_rank: int) -> list[RankTensor]:
    """Every tensor of `dp_rank_00_tp_rank_{tp_rank}_pp_rank_{pp_rank}.pt`, in NxD's key order."""
    h, r = arch.hidden_size, tp_rank
    vrows = arch.vocab_size // layout.tp
    vocab = ((r * vrows, (r + 1) * vrows),)
    head: list[RankTensor] = []
    tail: list[RankTensor] = []
    if pp_rank == 0:
        head.append(
            RankTensor("model.embed_tokens.weight", (vrows, h), (RowPiece("model.embed_tokens.weight", 0, vocab),))
        )
    for li in stage_layer_ranges(arch.num_hidden_layers, layout.pp)[pp_rank]:
        inline, appended = _layer_tensors(arch, layout, li, r)
        head += inline
        tail += appended
    if pp_rank == layout.pp - 1:
        head.append(RankTensor("model.norm.weight", (h,), (RowPiece("model.norm.weight", -1),)))
        head.append(RankTensor("lm_head.weight", (vrows, h), (RowPiece("lm_head.weight", 0, vocab),)))
    return head + tail


def rank_file_name(tp_rank: int, pp_rank: int) -> str:
    """NxD's converter writes dp rank 0 only (every dp replica loads it)."""
    from checkpoint.steps import rank_file_name as name

    return name(0, tp_rank, pp_rank)


def piece_rows(piece: RowPiece, rank_shape: tuple[int, ...]) -> int:
    """How many rows of the rank tensor a piece fills."""
    return sum(b - a for a, b in piece.ranges) if piece.dim == 0 else rank_shape[0]
