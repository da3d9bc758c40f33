"""HF key table, streaming load of HF safetensors folders, save_hf for export, and their errors."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from checkpoint import hf_adapter
from checkpoint.hf_adapter import expected_hf_keys, from_hf, to_hf, to_hf_config
from checkpoint.hf_load import load_hf, save_hf
from model.config import ModelConfig, RopeScaling
from model.llama3 import build

# Pinned, not the schema default (which the lead may retune): 6 query heads on 2 K/V heads.
CFG = ModelConfig(
    hidden_size=192, intermediate_size=512, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2
)
ROPE31 = dataclasses.replace(
    CFG, name="tiny-rope31", max_position_embeddings=16384, rope_scaling=RopeScaling(factor=8.0)
)
IDS = torch.randint(0, CFG.vocab_size, (2, 64), generator=torch.Generator().manual_seed(3))


def hf_model(cfg: ModelConfig) -> LlamaForCausalLM:
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(**to_hf_config(cfg), attn_implementation="sdpa")).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.05 * torch.randn_like(p))
    return hf


@pytest.mark.parametrize("tied", [False, True])
def test_adapter_round_trip_is_bit_exact_and_key_sets_equal(tied):
    cfg = dataclasses.replace(CFG, tie_word_embeddings=tied)
    hf_sd = hf_model(cfg).state_dict()
    ours = from_hf(hf_sd)
    assert set(ours) == set(build(cfg).state_dict())
    back = to_hf(ours)
    assert set(back) == set(hf_sd)
    assert all(torch.equal(back[k], hf_sd[k]) and back[k].dtype == hf_sd[k].dtype for k in hf_sd)
    assert set(to_hf(build(cfg).state_dict())) == set(hf_sd)
    expected = set(hf_sd) - ({"lm_head.weight"} if tied else set())
    assert set(expected_hf_keys(cfg.num_hidden_layers, tied)) == expected


def test_adapter_drops_rotary_buffers_and_names_unknown_keys():
    assert from_hf({"model.layers.0.self_attn.rotary_emb.inv_freq": 1, "model.rotary_emb.inv_freq": 2}) == {}
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj\.bias"):
        from_hf({"model.layers.0.self_attn.q_proj.bias": 0})
    with pytest.raises(ValueError, match=r"layers\.0\.attention\.wq\.bias"):
        to_hf({"layers.0.attention.wq.bias": 0})


def test_adapter_is_torch_free():
    import subprocess

    code = "import sys, checkpoint.hf_adapter; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=hf_adapter.__file__.rsplit("/", 2)[0])


@pytest.mark.parametrize("cfg", [CFG, ROPE31], ids=lambda c: c.name)
def test_streaming_load_of_sharded_save_pretrained_equals_hf(tmp_path, cfg):
    hf = hf_model(cfg)
    hf.save_pretrained(tmp_path, max_shard_size="200KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "model.safetensors.index.json").is_file()
    ours = build(cfg)
    summary = load_hf(ours, tmp_path)
    assert summary["files"] == len(shards)
    with torch.no_grad():
        diff = (ours.eval()(IDS) - hf(input_ids=IDS).logits).abs().max().item()
    assert diff < 1e-5


@pytest.mark.parametrize("tied", [False, True])
def test_save_hf_loads_in_transformers_with_same_logits(tmp_path, tied):
    cfg = dataclasses.replace(ROPE31, tie_word_embeddings=tied)
    ours = build(cfg).eval()
    ours.init_weights(seed=5)
    out = tmp_path / "export"
    summary = save_hf(ours, cfg, out, max_shard_bytes=300_000)
    assert len(summary["files"]) > 1 and (out / "model.safetensors.index.json").is_file()
    assert not list(tmp_path.glob(".export.tmp-*"))
    conf = json.loads((out / "config.json").read_text())
    assert conf["rope_parameters"]["rope_type"] == "llama3" and conf["dtype"] == "float32"
    assert conf["architectures"] == ["LlamaForCausalLM"]
    hf = LlamaForCausalLM.from_pretrained(out).eval()
    assert torch.equal(hf.model.rotary_emb.inv_freq, ours.rope_inv_freq)
    with torch.no_grad():
        assert (hf(input_ids=IDS).logits - ours(IDS)).abs().max().item() < 1e-5
    # And back through our own loader.
    again = build(cfg)
    load_hf(again, out)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ours.state_dict().values()))


def test_save_hf_single_file_bf16_and_no_overwrite(tmp_path):
    sd = build(CFG).state_dict()
    save_hf(sd, CFG, tmp_path / "a", dtype=torch.bfloat16)
    names = ["config.json", "generation_config.json", "model.safetensors"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == names  # no tokenizer folder given: none
    assert json.loads((tmp_path / "a" / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(tmp_path / "a" / "model.safetensors"), "pt") as f:
        assert f.get_tensor("lm_head.weight").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="not empty"):
        save_hf(sd, CFG, tmp_path / "a")


def _single_file(tmp_path, cfg=CFG):
    hf_model(cfg).save_pretrained(tmp_path)
    return tmp_path / "model.safetensors"


def test_config_mismatch_names_every_field(tmp_path):
    _single_file(tmp_path)
    wrong = dataclasses.replace(CFG, hidden_size=128, rope_scaling=RopeScaling(factor=8.0))
    with pytest.raises(ValueError) as e:
        load_hf(build(dataclasses.replace(wrong, hidden_size=192)), tmp_path, wrong)
    msg = str(e.value)
    assert "config.json" in msg and "model.hidden_size=128" in msg and "hidden_size=192" in msg
    assert "rope_scaling.factor=8.0" in msg


def test_missing_and_unexpected_keys_are_named(tmp_path):
    f = _single_file(tmp_path)
    with safe_open(str(f), "pt") as g:
        tensors = {k: g.get_tensor(k) for k in g.keys()}  # noqa: SIM118 (safe_open is not a dict)
    tensors.pop("model.layers.1.mlp.up_proj.weight")
    tensors["model.layers.7.mlp.up_proj.weight"] = torch.zeros(1)
    save_file(tensors, str(f), metadata={"format": "pt"})
    model = build(CFG)
    before = model.layers["0"].attention.wq.weight.clone()
    with pytest.raises(ValueError) as e:
        load_hf(model, tmp_path)
    assert "missing ['model.layers.1.mlp.up_proj.weight']" in str(e.value)
    assert "model.layers.7.mlp.up_proj.weight (in model.safetensors)" in str(e.value)
    # Checked before any copy: the model is untouched.
    assert torch.equal(model.layers["0"].attention.wq.weight, before)


def test_shape_mismatch_is_named(tmp_path):
    f = _single_file(tmp_path)
    with safe_open(str(f), "pt") as g:
        tensors = {k: g.get_tensor(k) for k in g.keys()}  # noqa: SIM118
    tensors["model.norm.weight"] = torch.ones(3)
    save_file(tensors, str(f), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.norm\.weight in .*model\.safetensors has shape \(3,\)"):
        load_hf(build(CFG), tmp_path)


def test_truncated_shard_is_named(tmp_path):
    hf_model(CFG).save_pretrained(tmp_path, max_shard_size="200KB")
    victim = sorted(tmp_path.glob("model-*.safetensors"))[1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match=f"{victim.name} is not a readable safetensors file"):
        load_hf(build(CFG), tmp_path)
    victim.unlink()
    with pytest.raises(ValueError, match=f"names files that do not exist: .*{victim.name}"):
        load_hf(build(CFG), tmp_path)


def test_missing_folder_contents_are_clear(tmp_path):
    with pytest.raises(ValueError, match=r"config\.json does not exist"):
        load_hf(build(CFG), tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(to_hf_config(CFG)))
    with pytest.raises(ValueError, match=r"has no \*\.safetensors"):
        load_hf(build(CFG), tmp_path)
