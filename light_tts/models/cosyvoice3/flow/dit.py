"""CosyVoice3's CFM velocity estimator, the DiT (upstream flow/DiT/dit.py and modules.py), chunk by chunk.

Parameter names follow the released flow.pt. One call runs both CFG branches (2B rows) over the frames after the
cached ones:
- time t -> sinusoidal embedding of 1000 t (256) -> time_mlp; every block's AdaLayerNormZero modulates with it;
- input: [x, cond, mu, spks] (320) -> proj, plus a causal positional conv branch (two grouped Conv1d k=31 after 30
  frames of left context, each followed by Mish), added residually;
- 22 blocks: LN(x)(1 + scale) + shift -> attention (q/k/v with bias, SDPA) -> x += gate * attn; the same for the
  tanh-GELU feed-forward; then AdaLayerNormZero_Final (scale before shift) and proj_out;
- positions: x-transformers' rotary embedding, applied to q and k before the split into heads over the first
  dim_head channels only (so head 0 alone is rotated), with interleaved pairs; other heads get position from the
  conv branch. Positions count frames from the start of the prompt.
- masks: streaming = block-causal with static_chunk_size-frame blocks from frame 0 (every earlier block visible);
  not streaming = full attention.

The cache of a request (DiTCache) holds every block's rotated keys and values and the two convs' last 30 inputs,
so a chunk that ends on a block boundary is all the next chunk needs (the flow's module doc says why).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from light_tts.kernels.flow.flow_dit import rotate_pairs  # x-transformers' rotate_half (the kernel's reference)
from light_tts.models.cfm import chunk_mask, timestep_embedding
from light_tts.models.cosyvoice3.config import DiTConfig

FREQ_EMBED_DIM = 256  # the sinusoidal time embedding's width (TimestepEmbedding's freq_embed_dim)
CONV_POS_KERNEL, CONV_POS_GROUPS = 31, 16
LN_EPS = 1e-6


@dataclass
class DiTCache:
    """A request's estimator context for one CFM step (rows: conditioned branch, then unconditioned)."""

    kv: torch.Tensor  # (depth, 2 [keys, values], rows, heads, frames, dim_head); keys already rotated
    conv_tails: torch.Tensor  # (rows, 2 [conv1, conv2], dim, kernel - 1): each positional conv's last inputs

    @property
    def num_frames(self) -> int:
        return self.kv.shape[4]


def apply_rotary(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x (..., T, C) with freqs (T, R): the first R channels rotated (in float32, as x-transformers does with
    autocast off), the rest unchanged."""
    rot = freqs.shape[-1]
    head, tail = x[..., :rot].float(), x[..., rot:]
    head = head * freqs.cos() + rotate_pairs(head) * freqs.sin()
    return torch.cat([head.to(x.dtype), tail], dim=-1)


class RotaryEmbedding(nn.Module):
    """x-transformers' RotaryEmbedding(dim_head): inv_freq is a buffer of the released checkpoint."""

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / base ** (torch.arange(0, dim, 2).float() / dim))

    def freqs(self, start: int, num: int) -> torch.Tensor:
        """(num, dim): angles of positions start.. for each pair, each repeated twice (interleaved)."""
        t = torch.arange(start, start + num, device=self.inv_freq.device).type_as(self.inv_freq)
        return (t[:, None] * self.inv_freq[None, :]).repeat_interleave(2, dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.time_mlp = nn.Sequential(nn.Linear(FREQ_EMBED_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.time_mlp(timestep_embedding(t, FREQ_EMBED_DIM).to(t.dtype))


class CausalConvPositionEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        conv = lambda: nn.Sequential(nn.Conv1d(dim, dim, CONV_POS_KERNEL, groups=CONV_POS_GROUPS), nn.Mish())  # noqa: E731
        self.conv1, self.conv2 = conv(), conv()

    def forward(self, x: torch.Tensor, tails: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D), tails (B, 2, D, 30) -> (B, T, D) and the new tails."""
        h = torch.cat([tails[:, 0], x.transpose(1, 2)], dim=2)
        tail1 = h[:, :, -(CONV_POS_KERNEL - 1) :]
        h = torch.cat([tails[:, 1], self.conv1(h)], dim=2)
        tail2 = h[:, :, -(CONV_POS_KERNEL - 1) :]
        return self.conv2(h).transpose(1, 2), torch.stack([tail1, tail2], dim=1)


class InputEmbedding(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.proj = nn.Linear(cfg.mel_dim * 2 + cfg.mu_dim + cfg.spk_dim, cfg.dim)
        self.conv_pos_embed = CausalConvPositionEmbedding(cfg.dim)

    def forward(self, x, cond, mu, spks, tails) -> tuple[torch.Tensor, torch.Tensor]:
        """x, cond, mu (B, T, 80), spks (B, 80) -> (B, T, dim), new conv tails."""
        h = self.proj(torch.cat([x, cond, mu, spks[:, None].expand(-1, x.shape[1], -1)], dim=-1))
        pos, tails = self.conv_pos_embed(h, tails)
        return pos + h, tails


class AdaLayerNorm(nn.Module):
    """AdaLayerNormZero (6 modulations) or AdaLayerNormZero_Final (2: scale, then shift) without the LayerNorm,
    which the block applies where upstream does."""

    def __init__(self, dim: int, num: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim * num)
        self.num = num

    def forward(self, t_emb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(F.silu(t_emb))[:, None].chunk(self.num, dim=-1)  # each (B, 1, dim)


def modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """LN(x) (1 + scale) + shift, LayerNorm without affine parameters."""
    return F.layer_norm(x, (x.shape[-1],), eps=LN_EPS) * (1 + scale) + shift


class Attention(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        inner = cfg.heads * cfg.dim_head
        self.heads, self.dim_head = cfg.heads, cfg.dim_head
        self.to_q, self.to_k, self.to_v = (nn.Linear(cfg.dim, inner) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(inner, cfg.dim)])  # upstream's [1] is a Dropout

    def forward(
        self, x: torch.Tensor, freqs: torch.Tensor, mask: torch.Tensor, kv_cache: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, m, dim), kv_cache (2, B, H, start, d) -> (B, m, dim), keys/values of all start + m frames."""
        b, m, _ = x.shape
        q = apply_rotary(self.to_q(x), freqs)  # rotary before the head split: head 0's channels only
        k = apply_rotary(self.to_k(x), freqs)
        split = lambda t: t.view(b, m, self.heads, self.dim_head).transpose(1, 2)  # noqa: E731  (B, H, m, d)
        kv = torch.cat([kv_cache, torch.stack([split(k), split(self.to_v(x))])], dim=3)
        out = F.scaled_dot_product_attention(split(q), kv[0], kv[1], attn_mask=mask)
        return self.to_out[0](out.transpose(1, 2).reshape(b, m, -1)), kv


class FeedForward(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        inner = cfg.dim * cfg.ff_mult
        # keys ff.0.0 and ff.2 (upstream's ff.1 is a Dropout)
        self.ff = nn.Sequential(
            nn.Sequential(nn.Linear(cfg.dim, inner), nn.GELU(approximate="tanh")),
            nn.Identity(),
            nn.Linear(inner, cfg.dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(x)


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.attn_norm = AdaLayerNorm(cfg.dim, 6)
        self.attn = Attention(cfg)
        self.ff = FeedForward(cfg)

    def forward(self, x, t_emb, freqs, mask, kv_cache) -> tuple[torch.Tensor, torch.Tensor]:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.attn_norm(t_emb)
        attn, kv = self.attn(modulate(x, scale_msa, shift_msa), freqs, mask, kv_cache)
        x = x + gate_msa * attn
        return x + gate_mlp * self.ff(modulate(x, scale_mlp, shift_mlp)), kv


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        self.time_embed = TimestepEmbedding(cfg.dim)
        self.input_embed = InputEmbedding(cfg)
        self.rotary_embed = RotaryEmbedding(cfg.dim_head)
        self.transformer_blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.norm_out = AdaLayerNorm(cfg.dim, 2)
        self.proj_out = nn.Linear(cfg.dim, cfg.mel_dim)

    def empty_cache(self, rows: int) -> DiTCache:
        c, p = self.cfg, next(self.parameters())
        return DiTCache(
            kv=p.new_zeros(c.depth, 2, rows, c.heads, 0, c.dim_head),
            conv_tails=p.new_zeros(rows, 2, c.dim, CONV_POS_KERNEL - 1),
        )

    def forward(
        self,
        x: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        cache: DiTCache,
        streaming: bool,
        num_pad: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, DiTCache]:
        """x, mu, cond (B, 80, m) of the frames after the cached ones, t (B,), spks (B, 80) -> velocity
        (B, 80, m) and the extended cache. Rows of one call share a cache length (num_pad must be None)."""
        if num_pad is not None:
            raise ValueError("the DiT's dense cache takes no left padding; batch requests through the engine")
        start, m = cache.num_frames, x.shape[2]
        t_emb = self.time_embed(t)
        h, conv_tails = self.input_embed(
            x.transpose(1, 2), cond.transpose(1, 2), mu.transpose(1, 2), spks, cache.conv_tails
        )
        freqs = self.rotary_embed.freqs(start, m)
        mask = chunk_mask(start, m, start + m, self.cfg.static_chunk_size if streaming else 0, x.device)
        kvs = []
        for block, kv_cache in zip(self.transformer_blocks, cache.kv):
            h, kv = block(h, t_emb, freqs, mask, kv_cache)
            kvs.append(kv)
        scale, shift = self.norm_out(t_emb)
        out = self.proj_out(modulate(h, scale, shift)).transpose(1, 2)
        return out, DiTCache(torch.stack(kvs), conv_tails)
