"""HF -> NxD layout checked against an independent re-derivation of NxD's converter (written here from the
reference's description of `convert_full_state_to_tp`, with full tensors and torch ops, not the streaming
plan), file by file and byte by byte; and per-rank shapes for 70B / 8B at TP 32 without any weights."""

from __future__ import annotations

import re

import pytest
import torch

from checkpoint.convert import to_nxd
from checkpoint.hf_adapter import to_hf_config
from checkpoint.nxd_layout import Arch, Layout, rank_plan
from checkpoint.torch_files import RankFile
from model.config import ModelConfig
from tests.helpers.hf import make_hf
from tests.helpers.nxd_shapes import nxd_rank_shapes


def nxd_reference(
    full: dict[str, torch.Tensor],
    cfg: dict,
    tp: int,
    pp: int,
    kvm: int,
    qkv_linear: bool,
    fuse: bool,
    coalesce: bool = False,
) -> dict[tuple[int, int], dict[str, torch.Tensor]]:
    """NxD's from-full conversion re-derived on whole tensors: permute Q heads by reshaping, tile K/V with
    repeat, narrow + clone per rank, fuse at the end. Mirrors the op sequence so strides match too."""
    hq, hkv, hidden = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    d = hidden // hq
    full = dict(full)
    if coalesce:  # MHA: per-rank [q_r; k_r; v_r] appended under qkv_proj.weight
        for i in range(cfg["num_hidden_layers"]):
            q, k, v = (full.pop(f"model.layers.{i}.self_attn.{n}_proj.weight") for n in "qkv")
            n = hidden // tp
            full[f"model.layers.{i}.self_attn.qkv_proj.weight"] = torch.cat(
                [torch.cat([x[r * n : (r + 1) * n] for x in (q, k, v)]) for r in range(tp)]
            )
    nl = cfg["num_hidden_layers"]
    counts = [nl // pp + (1 if s >= pp - nl % pp else 0) for s in range(pp)]
    cuts = [sum(counts[: s + 1]) - 1 for s in range(pp)]
    out = {}
    for r in range(tp):
        for p in range(pp):
            part: dict[str, torch.Tensor] = {}
            for name, w in full.items():
                if p != 0 and "embed_tokens" in name:
                    continue
                if p != pp - 1 and ("lm_head" in name or "model.norm.weight" in name):
                    continue
                if "layers" in name and min(s for s, c in enumerate(cuts) if int(name.split(".")[2]) <= c) != p:
                    continue
                is_qkv = any(t in name for t in ("q_proj", "k_proj", "v_proj", "qkv_proj"))
                if (is_qkv or "o_proj" in name) and qkv_linear:
                    head, leaf = name.rsplit(".", 2)[0], ".".join(name.rsplit(".", 2)[1:])
                    new = (
                        head
                        + "."
                        + {
                            "q_proj.weight": "qkv_proj.weight_q",
                            "k_proj.weight": "qkv_proj.weight_k",
                            "v_proj.weight": "qkv_proj.weight_v",
                        }.get(leaf, leaf)
                    )
                    if "weight_k" in new or "weight_v" in new:
                        rep = w.repeat(kvm, 1)
                        n = rep.shape[0] // tp
                        part[new] = rep.narrow(0, r * n, n).detach().clone()
                    else:
                        x = torch.transpose(w, 0, 1) if "o_proj" in name else w
                        x = x.reshape(hq, d, -1)
                        cols = x.shape[-1]
                        x = x.reshape(-1, hq // (hkv * kvm), d, cols)
                        idx = torch.arange(0, hkv) * tp // hkv
                        x = torch.cat([x[idx + i] for i in range(tp // hkv)], 0)
                        sel = x[r].reshape(-1, cols)
                        part[new] = (torch.transpose(sel, 0, 1) if "o_proj" in name else sel).detach().clone()
                elif is_qkv or any(t in name for t in ("embed_tokens", "o_proj", "down_proj", "lm_head")):
                    dim = 1 if ("down_proj" in name or "o_proj" in name) else 0
                    n = w.shape[dim] // tp
                    part[name] = w.narrow(dim, r * n, n).detach().clone()
                elif "gate_proj" in name or "up_proj" in name:
                    n = w.shape[0] // tp
                    sl = w.narrow(0, r * n, n).detach().clone()
                    key = name.replace("gate_proj", "gate_up_proj").replace("up_proj", "gate_up_proj")
                    key = key.replace("gate_gate_up_proj", "gate_up_proj")
                    if key in part:
                        part[key] = torch.cat([sl, part[key]] if "gate_proj" in name else [part[key], sl]).clone()
                    else:
                        part[key] = sl
                else:
                    part[name] = w
            if fuse and qkv_linear:
                for i in [
                    int(m) for m in re.findall(r"model\.layers\.(\d+)\.self_attn\.qkv_proj\.weight_q", " ".join(part))
                ]:
                    q, k, v = (part.pop(f"model.layers.{i}.self_attn.qkv_proj.weight_{n}") for n in "qkv")
                    part[f"model.layers.{i}.self_attn.qkv_proj.weight_qkv"] = torch.cat([q, k, v], dim=0)
            out[(r, p)] = part
    return out


CASES = {
    # name: model kwargs, (tp, pp, kvm, qkv_linear, fuse, coalesce)
    "gqa_2q_per_rank_fused_pp2": ({"heads": 16, "kv": 2}, (8, 2, 4, True, True, False)),
    "gqa_1q_per_rank_unfused_pp4": ({"heads": 8, "kv": 2}, (8, 4, 4, True, False, False)),
    "gqa_kvm1_fused": ({"heads": 8, "kv": 4}, (4, 1, 1, True, True, False)),
    "mha_plain": ({"heads": 4, "kv": 4}, (2, 2, 1, False, False, False)),
    "mha_coalesced": ({"heads": 4, "kv": 4}, (4, 1, 1, False, True, True)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rank_files_equal_nxd_byte_for_byte(tmp_path, case):
    kw, (tp, pp, kvm, qkv_linear, fuse, coalesce) = CASES[case]
    model = make_hf(tmp_path / "hf", **kw)
    cfg = model.config.to_dict()
    ref = nxd_reference(model.state_dict(), cfg, tp, pp, kvm, qkv_linear, fuse, coalesce)
    layout = Layout(tp, pp, kvm, qkv_linear, fuse)
    to_nxd(tmp_path / "hf", tmp_path / "out", Arch.from_hf_config(cfg), layout, progress=False)
    (tmp_path / "ref").mkdir()
    for (r, p), part in ref.items():
        name = f"dp_rank_00_tp_rank_{r:02d}_pp_rank_{p:02d}.pt"
        ours = torch.load(tmp_path / "out" / "model" / name, weights_only=True)
        assert list(ours) == list(part), name  # same keys in the same order
        for k, v in part.items():
            assert ours[k].dtype == v.dtype and ours[k].shape == v.shape and ours[k].stride() == v.stride(), k
            assert torch.equal(ours[k], v), k
        torch.save(part, tmp_path / "ref" / name)
        assert (tmp_path / "ref" / name).read_bytes() == (tmp_path / "out" / "model" / name).read_bytes(), name
    assert len(list((tmp_path / "out" / "model").iterdir())) == tp * pp


def test_two_q_heads_per_rank_follow_the_70b_pattern(tmp_path):
    """Rank r = i * Hkv + j holds KV head j and Q heads of block (tp / Hkv) * j + i (reference section 3.3)."""
    model = make_hf(tmp_path / "hf", heads=16, kv=2, layers=2)
    sd = model.state_dict()
    to_nxd(
        tmp_path / "hf",
        tmp_path / "out",
        Arch.from_hf_config(model.config.to_dict()),
        Layout(8, 1, 4, True, True),
        progress=False,
    )
    d = 4
    q, k = sd["model.layers.1.self_attn.q_proj.weight"], sd["model.layers.1.self_attn.k_proj.weight"]
    for r in range(8):
        j, i = r % 2, r // 2
        block = 4 * j + i
        qkv = torch.load(tmp_path / "out" / "model" / f"dp_rank_00_tp_rank_{r:02d}_pp_rank_00.pt")[
            "model.layers.1.self_attn.qkv_proj.weight_qkv"
        ]
        assert qkv.shape == (4 * d, 64)  # 2 Q heads + 1 K + 1 V
        assert torch.equal(qkv[: 2 * d], q[block * 2 * d : (block + 1) * 2 * d])
        assert torch.equal(qkv[2 * d : 3 * d], k[j * d : (j + 1) * d])


def test_xser_layout_holds_the_same_tensors(tmp_path):
    model = make_hf(tmp_path / "hf", heads=8, kv=2, layers=2)
    arch, layout = Arch.from_hf_config(model.config.to_dict()), Layout(8, 2, 4, True, True)
    to_nxd(tmp_path / "hf", tmp_path / "plain", arch, layout, progress=False)
    to_nxd(tmp_path / "hf", tmp_path / "xser", arch, layout, xser=True, progress=False)
    for f in (tmp_path / "plain" / "model").iterdir():
        xs = tmp_path / "xser" / "model" / f.name
        assert (xs.parent / f"{f.name}.tensors" / "tensor_0.pt").is_file()
        assert (xs.parent / f"{f.name}.info.pt").is_file()
        ref_pickle = (xs).read_bytes()
        assert b"torch_xla.utils.serialization" in ref_pickle and b"TensorReference" in ref_pickle
        plain, rf = torch.load(f, weights_only=True), RankFile(xs)
        assert rf.xser and rf.names() == list(plain)
        assert all(torch.equal(rf.get(k), v) for k, v in plain.items())


@pytest.mark.parametrize("size,pp", [("70b", 8), ("8b", 1)])
def test_rank_shapes_match_the_reference_at_tp32(size, pp):
    """Plan shapes (no weights) == tests.helpers.nxd_shapes.nxd_rank_shapes == the reference's table."""
    m = (
        ModelConfig(
            name="70b",
            vocab_size=128256,
            hidden_size=8192,
            intermediate_size=28672,
            num_hidden_layers=80,
            num_attention_heads=64,
            num_key_value_heads=8,
        )
        if size == "70b"
        else ModelConfig(
            name="8b",
            vocab_size=128256,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
        )
    )
    arch = Arch.from_hf_config(to_hf_config(m))
    table = {
        "70b": {
            "qkv_proj.weight_qkv": (512, 8192),
            "o_proj.weight": (8192, 256),
            "gate_up_proj.weight": (1792, 8192),
            "down_proj.weight": (8192, 896),
            "embed_tokens.weight": (4008, 8192),
        },
        "8b": {
            "qkv_proj.weight_qkv": (384, 4096),
            "o_proj.weight": (4096, 128),
            "gate_up_proj.weight": (896, 4096),
            "down_proj.weight": (4096, 448),
            "embed_tokens.weight": (4008, 4096),
        },
    }[size]
    for p in range(pp):
        for r in (0, 17, 31):
            ours = {rt.key: rt.shape for rt in rank_plan(arch, Layout(32, pp, 4, True, True), r, p)}
            assert ours == nxd_rank_shapes(m, 32, pp, 4, True, p)
            for key, shape in ours.items():
                leaf = next((t for t in table if key.endswith(t)), None)
                if leaf:
                    assert shape == table[leaf], key
        if size == "70b":
            assert len([k for k in ours if k.endswith("weight_qkv")]) == 10  # 80 layers / pp 8
