"""UpsampleConformerEncoder of the flow: speech-token embeddings -> 2x upsampled hidden states, chunk by chunk.

Every module takes the context of earlier tokens (keys/values, conv tails) and returns the extended context, so a
whole utterance is one chunk with an empty cache and a stream is a sequence of chunks (see cache.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from light_tts.model_config import EncoderConfig
from light_tts.models.cfm import chunk_mask
from light_tts.models.cosyvoice2.flow.cache import EncoderCache
from light_tts.models.pre_lookahead import PreLookaheadLayer


def mask_padding(mask: torch.Tensor, num_pad: torch.Tensor | None) -> torch.Tensor:
    """(q, k) mask -> (B, 1, q, k) hiding the first num_pad[b] keys of row b (left padding of a batched cache);
    unchanged when num_pad is None (every row's cache is real)."""
    if num_pad is None:
        return mask
    key_is_real = torch.arange(mask.shape[1], device=mask.device)[None, :] >= num_pad[:, None]  # (B, k)
    return mask[None, None] & key_is_real[:, None, None, :]


def rel_position_encoding(r_max: int, r_min: int, d_model: int) -> torch.Tensor:
    """(r_max - r_min + 1, d_model) espnet relative encodings for positions r_max down to r_min (sin even, cos odd)."""
    rel = torch.arange(r_max, r_min - 1, -1, dtype=torch.float32)[:, None]
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / d_model))
    pe = torch.zeros(rel.shape[0], d_model)
    pe[:, 0::2] = torch.sin(rel * div_term)
    pe[:, 1::2] = torch.cos(rel * div_term)
    return pe


class LinearEmbed(nn.Module):
    """Linear + LayerNorm, scaled by sqrt(d) (the rel-pos encoding adds nothing to the input itself)."""

    def __init__(self, idim: int, odim: int):
        super().__init__()
        self.out = nn.Sequential(nn.Linear(idim, odim), nn.LayerNorm(odim, eps=1e-5))
        self.xscale = math.sqrt(odim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x) * self.xscale


class RelPositionAttention(nn.Module):
    """espnet legacy relative-position self-attention with key/value cache."""

    def __init__(self, n_head: int, n_feat: int):
        super().__init__()
        self.h, self.d_k = n_head, n_feat // n_head
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(self.h, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(self.h, self.d_k))
        # linear_pos of the encodings for relative positions pos_range-1 down to -(pos_range-1), grown on demand so
        # that a chunk does not re-project positions proportional to the prefix. Derived from the loaded weights
        # (not saved; rebuilt on a device/dtype change), so weights must be loaded before the first call.
        self._pos_table: torch.Tensor | None = None
        self._pos_range = 0

    def _projected_positions(self, r_max: int, r_min: int) -> torch.Tensor:
        """(r_max - r_min + 1, H, d_k): linear_pos(pe(r)) for r from r_max down to r_min."""
        need = max(r_max, -r_min) + 1
        weight = self.linear_pos.weight
        table = self._pos_table
        if table is None or need > self._pos_range or table.device != weight.device or table.dtype != weight.dtype:
            self._pos_range = max(need, 2 * self._pos_range, 512)
            pe = rel_position_encoding(self._pos_range - 1, 1 - self._pos_range, weight.shape[1])
            self._pos_table = table = self.linear_pos(pe.to(weight)).view(-1, self.h, self.d_k)
        top = self._pos_range - 1  # row of relative position 0 is `top`
        return table[top - r_max : top - r_min + 1]

    def forward(
        self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, n, D) at positions [start, start+n) where start = cached length; mask (n, start+n) or
        (B, 1, n, start+n). A left-padded cache keeps relative positions right: pad slots shift queries and keys
        alike, and the mask hides them."""
        b, n, _ = x.shape
        start = k_cache.shape[2]
        q = self.linear_q(x).view(b, n, self.h, self.d_k)
        k = torch.cat([k_cache, self.linear_k(x).view(b, n, self.h, self.d_k).transpose(1, 2)], dim=2)
        v = torch.cat([v_cache, self.linear_v(x).view(b, n, self.h, self.d_k).transpose(1, 2)], dim=2)
        num_k = k.shape[2]  # = start + n
        # relative positions i - j of this chunk's queries against all keys span [start+n-1 .. -(n-1)]
        p = self._projected_positions(start + n - 1, start - num_k + 1).permute(1, 2, 0)  # (H, d_k, n+num_k-1)
        q_u = (q + self.pos_bias_u).transpose(1, 2)  # (B, H, n, d_k)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        matrix_ac = q_u @ k.transpose(-2, -1)  # (B, H, n, num_k)
        matrix_bd_full = (q_v @ p).contiguous()  # (B, H, n, n+num_k-1), column m <-> relative position start+n-1-m
        # query i, key j has relative position start+i-j -> column n-1-i+j: a strided view (espnet's rel_shift)
        width = matrix_bd_full.shape[-1]
        matrix_bd = matrix_bd_full.as_strided(
            (b, self.h, n, num_k),
            (self.h * n * width, n * width, width - 1, 1),
            matrix_bd_full.storage_offset() + n - 1,
        )
        scores = (matrix_ac + matrix_bd) / math.sqrt(self.d_k)
        hidden = ~mask
        attn = torch.softmax(scores.masked_fill(hidden, float("-inf")), dim=-1).masked_fill(hidden, 0.0)
        out = (attn @ v).transpose(1, 2).reshape(b, n, self.h * self.d_k)
        return self.linear_out(out), k, v


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerBlock(nn.Module):
    """Pre-norm conformer layer without macaron FF or conv module: attention then feed-forward, both residual."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.self_attn = RelPositionAttention(heads, dim)
        self.feed_forward = FeedForward(dim, hidden)
        self.norm_mha = nn.LayerNorm(dim, eps=1e-5)
        self.norm_ff = nn.LayerNorm(dim, eps=1e-5)

    def forward(
        self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        att, k, v = self.self_attn(self.norm_mha(x), k_cache, v_cache, mask)
        x = x + att
        return x + self.feed_forward(self.norm_ff(x)), k, v


class Upsample1D(nn.Module):
    """Nearest-neighbour repeat by `stride`, then a causal conv of kernel 2*stride+1."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(channels, channels, stride * 2 + 1)

    def forward(self, x: torch.Tensor, tail: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, D, n), tail (B, D, 2*stride) -> (B, D, stride*n), new tail."""
        h = torch.cat([tail, x.repeat_interleave(self.stride, dim=2)], dim=2)
        return self.conv(h), h[:, :, -tail.shape[2] :]


class UpsampleConformerEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        if not cfg.normalize_before:
            raise ValueError("only the pre-norm conformer (normalize_before=True, as released) is supported")
        d, heads, units = cfg.output_size, cfg.attention_heads, cfg.linear_units
        self.cfg = cfg
        self.embed = LinearEmbed(cfg.input_size, d)
        self.pre_lookahead_layer = PreLookaheadLayer(d, cfg.pre_lookahead_len)
        self.encoders = nn.ModuleList(ConformerBlock(d, heads, units) for _ in range(cfg.num_blocks))
        self.up_layer = Upsample1D(d, cfg.upsample_stride)
        self.up_embed = LinearEmbed(d, d)
        self.up_encoders = nn.ModuleList(ConformerBlock(d, heads, units) for _ in range(cfg.num_up_blocks))
        self.after_norm = nn.LayerNorm(d, eps=1e-5)

    def empty_cache(self, batch: int) -> EncoderCache:
        """Zero conv tails (the left zero padding at the utterance start) and empty keys/values."""
        d, h = self.cfg.output_size, self.cfg.attention_heads
        zeros = self.after_norm.weight.new_zeros
        empty = zeros(batch, h, 0, d // h)
        return EncoderCache(
            lookahead_tail=zeros(batch, d, 2),
            upsample_tail=zeros(batch, d, 2 * self.cfg.upsample_stride),
            kv=[(empty, empty)] * len(self.encoders),
            up_kv=[(empty, empty)] * len(self.up_encoders),
        )

    def forward(
        self,
        xs: torch.Tensor,
        context: torch.Tensor,
        cache: EncoderCache,
        streaming: bool,
        num_pad: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, EncoderCache]:
        """xs (B, n, D) token embeddings after the cached ones, context (B, c, D) lookahead embeddings (c = 0 at
        the end of the utterance) -> (B, stride*n, D) hidden frames and the extended cache. `streaming` applies
        the static chunk mask; otherwise every query sees every key. num_pad (B,): left-padding tokens of each
        row's cache (a batch of requests with different cache lengths); pads are multiples of the chunk size,
        so each row's chunk mask is the padded one shifted."""
        start, n, stride = cache.num_tokens, xs.shape[1], self.cfg.upsample_stride
        chunk = self.cfg.static_chunk_size if streaming else 0
        x, lookahead_tail = self.pre_lookahead_layer(self.embed(xs), self.embed(context), cache.lookahead_tail)
        mask = mask_padding(chunk_mask(start, n, start + n, chunk, xs.device), num_pad)
        kv = []
        for block, (k_cache, v_cache) in zip(self.encoders, cache.kv):
            x, k, v = block(x, k_cache, v_cache, mask)
            kv.append((k, v))

        x, upsample_tail = self.up_layer(x.transpose(1, 2), cache.upsample_tail)
        x = self.up_embed(x.transpose(1, 2))  # (B, stride*n, D)
        mask = chunk_mask(start * stride, n * stride, (start + n) * stride, chunk * stride, xs.device)
        mask = mask_padding(mask, None if num_pad is None else num_pad * stride)
        up_kv = []
        for block, (k_cache, v_cache) in zip(self.up_encoders, cache.up_kv):
            x, k, v = block(x, k_cache, v_cache, mask)
            up_kv.append((k, v))
        return self.after_norm(x), EncoderCache(lookahead_tail, upsample_tail, kv, up_kv)
