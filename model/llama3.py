"""Llama 3 / 3.1 in plain torch: one definition, nothing about parallelism inside.

Tensor parallelism is applied from outside (`model/parallelize_torch.py`): every projection is its own
`nn.Linear` (wq/wk/wv/wo, w1/w2/w3) and attention infers its local head count from the projection's output
shape (`view(..., -1, head_dim)`), so a column-sharded wq simply yields fewer heads per rank. Two seams let
the nxd backend (model/parallelize_nxd.py) put NxD's fused layers in without another forward: `Attention.qkv`
(a module returning q, k, v; NxD's GQAQKVColumnParallelLinear) and `FeedForward.gate_up` (a module returning
[gate | up]; NxD's stride-2 ColumnParallelLinear). Both are None by default: wq/wk/wv and w1/w3 are used.
A third, `Attention.sequence_first`, is NxD's sequence-parallel layout ([S, B, D] between its layers); everything
else in a block is element-wise or over the last dimension, so it is layout-agnostic.

RoPE uses the Hugging Face rotate-half convention (first half / second half of each head, not interleaved
pairs), so HF weights load without the Q/K permutation that Meta's original checkpoints need.

Shape legend: B batch, S sequence, D hidden, H query heads, K key/value heads, E head dim, V vocab.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model import rules
from model.config import ModelConfig


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies (E/2,), with Llama 3.1 `rope_type: llama3` scaling when rope_scaling.factor > 0.

    Same float32 arithmetic as transformers' `_compute_llama3_parameters`, so logits match it bit for bit in
    the rotary part: low frequencies (wavelength above original_max / low_freq_factor) are divided by factor,
    high ones kept, the band between interpolated smoothly.
    """
    dim = cfg.hidden_size // cfg.num_attention_heads
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    rs = cfg.rope_scaling
    if rs.factor == 0:
        return inv_freq
    old_len = rs.original_max_position_embeddings
    low_freq_wavelen = old_len / rs.low_freq_factor
    high_freq_wavelen = old_len / rs.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rs.factor, inv_freq)
    smooth = (old_len / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 whatever the activation dtype, as HF does (bf16 variance loses too much).
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        d, e = cfg.hidden_size, self.head_dim
        self.wq = nn.Linear(d, cfg.num_attention_heads * e, bias=False)
        self.wk = nn.Linear(d, cfg.num_key_value_heads * e, bias=False)
        self.wv = nn.Linear(d, cfg.num_key_value_heads * e, bias=False)
        self.wo = nn.Linear(cfg.num_attention_heads * e, d, bias=False)
        # The projection seam: a module x -> (q, k, v) used instead of wq/wk/wv when set (the nxd backend puts
        # NxD's fused GQAQKVColumnParallelLinear here and deletes wq/wk/wv). None: today's three projections.
        self.qkv: nn.Module | None = None
        # The layout seam: True under NxD's sequence parallelism, whose projections take and give sequence-first
        # tensors ([S/tp, B, D] in, [S, B, .] out of qkv; [S, B, .] into wo). False: batch-first, as everywhere else.
        self.sequence_first = False

    def project_qkv(self, x_BSD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.qkv is not None:
            return self.qkv(x_BSD)
        return self.wq(x_BSD), self.wk(x_BSD), self.wv(x_BSD)

    def forward(self, x_BSD: torch.Tensor, cos_SE: torch.Tensor, sin_SE: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project_qkv(x_BSD)
        e = self.head_dim
        # -1: the local head count (all heads unsharded, heads/tp under ColwiseParallel or NxD's layers).
        if self.sequence_first:
            s, b = q.shape[:2]
            q_BHSE, k_BKSE, v_BKSE = (t.reshape(s, b, -1, e).permute(1, 2, 0, 3) for t in (q, k, v))
        else:
            b, s = q.shape[:2]
            q_BHSE, k_BKSE, v_BKSE = (t.view(b, s, -1, e).transpose(1, 2) for t in (q, k, v))
        cos, sin = cos_SE.to(q_BHSE.dtype), sin_SE.to(q_BHSE.dtype)
        q_BHSE = q_BHSE * cos + rotate_half(q_BHSE) * sin
        k_BKSE = k_BKSE * cos + rotate_half(k_BKSE) * sin
        # GQA inside SDPA (standard since torch 2.5; the math fallback every device has repeats K/V itself):
        # no repeated K/V tensors in memory and no reduction of their gradients in backward, as HF's sdpa path.
        # Local heads decide (NxD replicates K/V heads kv_size_multiplier times, so the local ratio can be smaller).
        gqa = q_BHSE.shape[1] != k_BKSE.shape[1]
        o_BHSE = F.scaled_dot_product_attention(q_BHSE, k_BKSE, v_BKSE, is_causal=True, enable_gqa=gqa)
        if self.sequence_first:
            return self.wo(o_BHSE.permute(2, 0, 1, 3).reshape(s, b, -1))
        return self.wo(o_BHSE.transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x); w1 = HF gate_proj, w3 = up_proj, w2 = down_proj."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.w2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.w3 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        # The projection seam: a module x -> [gate | up] (last dim) used instead of w1/w3 when set (the nxd
        # backend's stride-2 ColumnParallelLinear, per rank [gate_r; up_r]). None: today's two projections.
        self.gate_up: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None:
            gate, up = self.gate_up(x).chunk(2, dim=-1)
        else:
            gate, up = self.w1(x), self.w3(x)
        return self.w2(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin)
        return h + self.feed_forward(self.ffn_norm(h))


class Llama3(nn.Module):
    """Decoder-only Llama 3. `layers` is a ModuleDict keyed "0".."L-1" so a pipeline stage can delete layers
    (and set tok_embeddings / norm / output to None) while keeping the global names of the rest."""

    rope_inv_freq: torch.Tensor  # a buffer (register_buffer below), declared for the type checker

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings: nn.Embedding | None = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleDict({str(i): TransformerBlock(cfg) for i in range(cfg.num_hidden_layers)})
        self.norm: RMSNorm | None = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.output: nn.Linear | None = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # Not persistent: derived from the config, never part of a checkpoint (HF drops it too).
        self.register_buffer("rope_inv_freq", rope_inv_freq(cfg), persistent=False)

    def rope(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(seq_len, device=device, dtype=torch.float32)
        freqs_SE2 = pos[:, None] * self.rope_inv_freq.to(device=device, dtype=torch.float32)[None, :]
        emb_SE = torch.cat((freqs_SE2, freqs_SE2), dim=-1)
        return emb_SE.cos(), emb_SE.sin()

    def rope_for(self, h_BSD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) for the sequence of h; a seam: NxD's pipeline tracer needs it computed by one leaf module."""
        return self.rope(h_BSD.shape[1], h_BSD.device)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (B, S) int64 -> float32 logits (B, S, V).

        A pipeline stage without embeddings takes the previous stage's hidden states (B, S, D) instead and,
        without an output head, returns hidden states."""
        h = self.tok_embeddings(input_ids) if self.tok_embeddings is not None else input_ids
        cos, sin = self.rope_for(h)
        for layer in self.layers.values():
            h = layer(h, cos, sin)
        if self.norm is not None:
            h = self.norm(h)
        return self.output(h).float() if self.output is not None else h

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Every matrix ~ normal(0, initializer_range), norms 1 (as HF `_init_weights`); recomputes the RoPE
        buffer, so a model built on the meta device and materialised with `to_empty` is complete after this.

        With a seed the draw uses its own generator in parameter order, so the same seed gives the same
        weights whatever the global RNG state. Call it on the full model, before parallelising."""
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.rope_inv_freq.device).manual_seed(seed)
        std = self.cfg.initializer_range
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, mean=0.0, std=std, generator=gen)
        self.rope_inv_freq.copy_(rope_inv_freq(self.cfg).to(self.rope_inv_freq.device))


def build(cfg: ModelConfig, device: str | torch.device = "cpu") -> Llama3:
    """Model on `device`, initialised by `init_weights()` (unseeded; call `init_weights(seed)` for a seeded
    draw). On "meta" nothing is initialised: `to_empty(device=...)` then `init_weights` after sharding."""
    rules.raise_if(rules.architecture_problems(cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads))
    with torch.device(device):
        model = Llama3(cfg)
    if torch.device(device).type != "meta":
        model.init_weights()
    return model


IGNORE = -100


def loss_fn(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross entropy, mean over the B * (S - 1) predicted tokens: logits at position t predict
    input_ids[t + 1], exactly what HF `LlamaForCausalLM(labels=input_ids)` computes.

    The labels are shifted (the last position ignored), not the logits: slicing logits[:, :-1] would copy the
    largest activation (B x S x V) in forward and again in backward."""
    v = logits.shape[-1]
    labels = F.pad(input_ids[:, 1:], (0, 1), value=IGNORE)
    return F.cross_entropy(logits.reshape(-1, v).float(), labels.reshape(-1), ignore_index=IGNORE)
