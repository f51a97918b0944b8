"""Qwen2 decoder (the body of the speech-token LM) in plain torch, with a per-request KV cache for offline decoding.

Llama is the same body without the q/k/v biases and with Llama 3's rope scaling (QwenConfig.attention_bias,
rope_scaling): Orpheus's offline LM is this module too, and its checkpoint keys are the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from light_tts.model_config import QwenConfig
from light_tts.models.rope import body_inv_freq


class KVCache:
    """Keys and values of one request's past tokens: per layer a (B, num_kv_heads, S, head_dim) pair, grown by
    concat."""

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    @property
    def seq_len(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].size(2)

    def append(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens' k/v of one layer and return all of them (cached + new)."""
        if self.keys[layer_idx] is not None:
            k = torch.cat([self.keys[layer_idx], k], dim=2)
            v = torch.cat([self.values[layer_idx], v], dim=2)
        self.keys[layer_idx], self.values[layer_idx] = k, v
        return k, v


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in fp32 like HF Qwen2, then scale in the input dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (T, head_dim) for absolute positions; both halves repeat the same frequencies (neox layout)."""
    freqs = positions.float()[:, None] * inv_freq.to(positions.device, torch.float32)[None, :]  # (T, head_dim / 2)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


class Qwen2Attention(nn.Module):
    """GQA self-attention with q/k/v biases (none for Llama) and no output bias."""

    def __init__(self, cfg: QwenConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        past: KVCache | None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        # (B, T, heads * head_dim) -> (B, heads, T, head_dim)
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past is not None:
            k, v = past.append(self.layer_idx, k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class Qwen2MLP(nn.Module):
    def __init__(self, cfg: QwenConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen2DecoderLayer(nn.Module):
    def __init__(self, cfg: QwenConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Qwen2Attention(cfg, layer_idx)
        self.mlp = Qwen2MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, past):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, past)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2Model(nn.Module):
    """The decoder stack; the LM feeds it embeddings directly, so embed_tokens only embeds text tokens."""

    def __init__(self, cfg: QwenConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Qwen2DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    @property
    def inv_freq(self) -> torch.Tensor:
        """[head_dim / 2] float32 rope frequencies (computed, not a buffer: no checkpoint key)."""
        return body_inv_freq(self.cfg, torch.float32)

    def forward(self, inputs_embeds: torch.Tensor, past: KVCache | None = None) -> torch.Tensor:
        """(B, T, H) new-token embeddings -> (B, T, H) final-norm hidden states; `past` grows by T tokens."""
        T = inputs_embeds.size(1)
        num_past = 0 if past is None else past.seq_len
        device = inputs_embeds.device
        positions = torch.arange(num_past, num_past + T, device=device)
        cos, sin = rope_cos_sin(positions, self.inv_freq)
        cos, sin = cos.to(inputs_embeds.dtype), sin.to(inputs_embeds.dtype)
        # new token i (absolute position num_past + i) sees every key at position <= its own; one token sees all
        mask = None
        if T > 1:
            mask = torch.arange(num_past + T, device=device)[None, :] <= positions[:, None]  # (T, num_past + T)
        x = inputs_embeds
        for layer in self.layers:
            x = layer(x, cos, sin, mask, past)
        return self.norm(x)


class Qwen2ForCausalLM(nn.Module):
    """Decoder plus the text lm_head: the head is in the released checkpoint (tied to embed_tokens) but unused."""

    def __init__(self, cfg: QwenConfig):
        super().__init__()
        self.model = Qwen2Model(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
