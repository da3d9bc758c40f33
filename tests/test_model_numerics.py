"""Our Llama 3 against transformers' LlamaForCausalLM with the same weights: logits, loss, RoPE scaling, init."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from checkpoint.hf_adapter import from_hf, to_hf_config
from model.config import ModelConfig, RopeScaling
from model.llama3 import Llama3, build, loss_fn, rope_inv_freq

TINY = ModelConfig()
# Llama 3.1's real rope_scaling numbers on a small model; head_dim 32 spans wavelengths from 6 to ~1e6, so
# the low band is divided by 8, the middle band interpolated and the high band kept.
ROPE31 = ModelConfig(
    name="small-rope31",
    vocab_size=512,
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=16384,
    rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0),
)
TIED = dataclasses.replace(TINY, name="tiny-tied", tie_word_embeddings=True, num_hidden_layers=2)


def hf_model(cfg: ModelConfig, seed: int = 0) -> LlamaForCausalLM:
    """A transformers Llama with random weights everywhere (norms too, so a mis-mapped norm shows)."""
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(LlamaConfig(**to_hf_config(cfg), attn_implementation="sdpa")).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.05 * torch.randn_like(p))
    return hf


def ours_from(hf: LlamaForCausalLM, cfg: ModelConfig) -> Llama3:
    m = build(cfg)
    m.load_state_dict(from_hf(hf.state_dict()), strict=True)
    return m.eval()


@pytest.mark.parametrize("cfg", [TINY, ROPE31, TIED], ids=lambda c: c.name)
def test_logits_and_loss_match_transformers(cfg):
    hf = hf_model(cfg)
    ours = ours_from(hf, cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 96), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(input_ids=ids, labels=ids)
        logits = ours(ids)
    assert logits.dtype == torch.float32 and logits.shape == (2, 96, cfg.vocab_size)
    assert (logits - ref.logits).abs().max().item() < 1e-5
    assert abs(loss_fn(logits, ids).item() - ref.loss.item()) < 1e-6


def test_rope31_scaling_changes_frequencies_and_logits():
    scaled = rope_inv_freq(ROPE31)
    plain_cfg = dataclasses.replace(ROPE31, rope_scaling=RopeScaling())
    plain = rope_inv_freq(plain_cfg)
    hf = hf_model(ROPE31)
    assert torch.equal(scaled, hf.model.rotary_emb.inv_freq)
    assert not torch.allclose(scaled, plain)
    assert torch.equal(scaled[:2], plain[:2])  # the high-frequency band is untouched
    assert torch.allclose(scaled[-1], plain[-1] / 8)  # the lowest frequency is divided by factor
    # And the forward really uses it: the same weights without scaling give other logits.
    ids = torch.randint(0, ROPE31.vocab_size, (1, 256), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = ours_from(hf, ROPE31)(ids)
        b = ours_from(hf, plain_cfg)(ids)
    assert (a - b).abs().max().item() > 1e-3


def test_loss_is_next_token_mean():
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    manual = -torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).mean()
    assert torch.allclose(loss_fn(logits, ids), manual, atol=1e-6)


def test_init_weights_seeded_and_meta_device():
    a, b = build(TINY), build(TINY)
    a.init_weights(seed=7)
    torch.manual_seed(123)  # the seeded draw must not depend on the global RNG
    b.init_weights(seed=7)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    assert torch.equal(a.norm.weight, torch.ones(TINY.hidden_size))
    std = a.layers["0"].attention.wq.weight.std().item()
    assert abs(std - TINY.initializer_range) < 0.002
    meta = build(TINY, device="meta")
    assert meta.output.weight.is_meta
    meta.to_empty(device="cpu")
    meta.init_weights(seed=7)
    assert torch.equal(meta.rope_inv_freq, rope_inv_freq(TINY))
    assert torch.equal(meta.layers["3"].feed_forward.w2.weight, a.layers["3"].feed_forward.w2.weight)


def test_tied_embeddings_share_one_tensor():
    m = build(TIED)
    assert m.output.weight is m.tok_embeddings.weight
    assert "output.weight" in m.state_dict()


def test_bf16_model_returns_float32_logits():
    m = build(TINY).to(torch.bfloat16)
    out = m(torch.randint(0, TINY.vocab_size, (1, 8)))
    assert out.dtype == torch.float32


def test_bad_head_config_is_a_clear_error():
    base = dataclasses.replace(TINY, hidden_size=192, num_attention_heads=6, num_key_value_heads=2)
    with pytest.raises(ValueError, match=r"model\.num_key_value_heads=4: must divide model\.num_attention_heads \(6\)"):
        build(dataclasses.replace(base, num_key_value_heads=4))
    with pytest.raises(ValueError, match=r"model\.hidden_size=200: must be divisible by model\.num_attention_heads"):
        build(dataclasses.replace(base, hidden_size=200))
