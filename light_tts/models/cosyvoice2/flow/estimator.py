"""CausalConditionalDecoder: the CFM velocity estimator (causal 1-D U-Net with transformer blocks), chunk by chunk.

Parameter names follow the released flow.pt (Matcha-TTS / diffusers block names). Only the released layout with
one U-Net level (`channels` of length 1) is built: its down/up resampling are plain causal convs. Upstream
multiplies by an all-ones padding mask throughout (batch 1, no padding); that no-op is left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from light_tts.model_config import EstimatorConfig
from light_tts.models.cfm import chunk_mask, timestep_embedding  # noqa: F401 (timestep_embedding: paged_flow)
from light_tts.models.cosyvoice2.flow.cache import EstimatorCache
from light_tts.models.cosyvoice2.flow.encoder import mask_padding


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, t_emb: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(t_emb)))


class CausalConv1d(nn.Conv1d):
    """Conv1d left-padded by kernel-1 frames: zeros at the utterance start, the cached tail afterwards."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, slot: int):
        super().__init__(in_channels, out_channels, kernel_size)
        self.slot = slot  # index of this conv's tail in EstimatorCache.conv_tails

    def forward(self, x: torch.Tensor, tails: list[torch.Tensor], new_tails: list) -> torch.Tensor:
        h = torch.cat([tails[self.slot], x], dim=2)
        new_tails[self.slot] = h[:, :, -(self.kernel_size[0] - 1) :]
        return super().forward(h)


class Transpose(nn.Module):
    """(B, C, T) <-> (B, T, C); sits at upstream's Sequential slot 1 so the LayerNorm keeps the key `block.2`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class CausalBlock1D(nn.Module):
    def __init__(self, dim: int, dim_out: int, slot: int):
        super().__init__()
        self.block = nn.ModuleList([CausalConv1d(dim, dim_out, 3, slot), Transpose(), nn.LayerNorm(dim_out)])

    def forward(self, x: torch.Tensor, tails: list, new_tails: list) -> torch.Tensor:
        conv, transpose, norm = self.block
        return F.mish(transpose(norm(transpose(conv(x, tails, new_tails)))))


class CausalResnetBlock1D(nn.Module):
    def __init__(self, dim: int, dim_out: int, time_emb_dim: int, slot: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_emb_dim, dim_out))
        self.block1 = CausalBlock1D(dim, dim_out, slot)
        self.block2 = CausalBlock1D(dim_out, dim_out, slot + 1)
        self.res_conv = nn.Conv1d(dim, dim_out, 1)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, tails: list, new_tails: list) -> torch.Tensor:
        h = self.block1(x, tails, new_tails) + self.mlp(t_emb).unsqueeze(-1)
        return self.block2(h, tails, new_tails) + self.res_conv(x)


class Attention(nn.Module):
    """diffusers-style self-attention (to_q/to_k/to_v without bias, to_out.0 with bias) with key/value cache."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])
        # to_q, to_k, to_v stacked, so that one matmul projects all three (the estimator is kernel-count bound);
        # derived from the loaded weights, rebuilt when they change (load, device or dtype move)
        self._qkv: torch.Tensor | None = None
        self._qkv_source: tuple = ()

    def _qkv_weight(self) -> torch.Tensor:
        weights = (self.to_q.weight, self.to_k.weight, self.to_v.weight)
        # inference tensors (weights moved under inference_mode) have no version counter; they cannot be
        # updated in place outside inference_mode either
        source = tuple((w.data_ptr(), w.dtype, 0 if w.is_inference() else w._version) for w in weights)
        if self._qkv is None or source != self._qkv_source:
            self._qkv, self._qkv_source = torch.cat([w.detach() for w in weights]), source
        return self._qkv

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, m, D); kv (2, B, H, start + m, hd) holds the cached keys/values in [:start] and receives this
        chunk's in [start:]; mask: additive, broadcastable to (B, H, m, start + m)."""
        b, m, _ = x.shape
        start = kv.shape[3] - m
        qkv = F.linear(x, self._qkv_weight()).view(b, m, 3, self.heads, self.head_dim)
        kv[:, :, :, start:] = qkv[:, :, 1:].permute(2, 0, 3, 1, 4)  # (2, B, H, m, hd)
        out = F.scaled_dot_product_attention(qkv[:, :, 0].transpose(1, 2), kv[0], kv[1], attn_mask=mask)
        return self.to_out[0](out.transpose(1, 2).reshape(b, m, -1))


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool mask (..., q, k) -> 0 / -inf in `dtype`, made once per estimator call (SDPA would convert a boolean
    mask in every block). On CUDA its rows are padded to a multiple of 8 keys in memory, so that the
    memory-efficient attention kernel takes it as is instead of copying it into an aligned buffer in every block
    (not in an ONNX export, whose traced shapes must follow the inputs)."""
    num_k = mask.shape[-1]
    width = -(-num_k // 8) * 8 if mask.is_cuda and not torch.onnx.is_in_onnx_export() else num_k
    out = torch.full((*mask.shape[:-1], width), float("-inf"), dtype=dtype, device=mask.device)
    return out[..., :num_k].masked_fill_(mask, 0.0)


class GELUProj(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # slot 1 is upstream's dropout (identity at inference); kept so the output layer is `net.2`
        self.net = nn.ModuleList([GELUProj(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class TransformerBlock(nn.Module):
    """Matcha BasicTransformerBlock without cross-attention: pre-norm self-attention and GELU feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int, slot: int):
        super().__init__()
        self.slot = slot  # index of this block's keys/values in EstimatorCache.kv (dim 0)
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), kv[self.slot], mask)
        return x + self.ff(self.norm3(x))


class CausalConditionalDecoder(nn.Module):
    def __init__(self, cfg: EstimatorConfig):
        super().__init__()
        if len(cfg.channels) != 1:
            raise ValueError(f"only one U-Net level is supported (released layout), got channels {cfg.channels}")
        self.cfg = cfg
        c, t_dim = cfg.channels[0], cfg.channels[0] * 4
        if cfg.act_fn != "gelu" or cfg.num_decoding_left_chunks != -1:
            raise ValueError("the estimator supports act_fn 'gelu' with all left chunks visible (released layout)")
        self.time_mlp = TimestepEmbedding(cfg.in_channels, t_dim)
        # slots number the causal convs and transformer blocks in build order; each finds its context there
        self.num_convs = self.num_blocks = 0

        def resnet(dim: int) -> CausalResnetBlock1D:
            self.num_convs += 2
            return CausalResnetBlock1D(dim, c, t_dim, self.num_convs - 2)

        def conv() -> CausalConv1d:
            self.num_convs += 1
            return CausalConv1d(c, c, 3, self.num_convs - 1)

        def transformers() -> nn.ModuleList:
            self.num_blocks += cfg.n_blocks
            first = self.num_blocks - cfg.n_blocks
            return nn.ModuleList(
                TransformerBlock(c, cfg.num_heads, cfg.attention_head_dim, first + i) for i in range(cfg.n_blocks)
            )

        self.down_blocks = nn.ModuleList([nn.ModuleList([resnet(cfg.in_channels), transformers(), conv()])])
        self.mid_blocks = nn.ModuleList(nn.ModuleList([resnet(c), transformers()]) for _ in range(cfg.num_mid_blocks))
        self.up_blocks = nn.ModuleList([nn.ModuleList([resnet(2 * c), transformers(), conv()])])
        self.num_convs += 1
        self.final_block = CausalBlock1D(c, c, self.num_convs - 1)
        self.final_proj = nn.Conv1d(c, cfg.out_channels, 1)
        self.tail_channels = [0] * self.num_convs  # input channels of each causal conv, by slot
        for m in self.modules():
            if isinstance(m, CausalConv1d):
                self.tail_channels[m.slot] = m.in_channels

    def empty_cache(self, batch: int) -> EstimatorCache:
        """Zero conv tails (the causal left padding) and empty keys/values for `batch` rows."""
        zeros = self.final_proj.weight.new_zeros
        return EstimatorCache(
            conv_tails=zeros(batch, sum(self.tail_channels), 2),
            kv=zeros(self.num_blocks, 2, batch, self.cfg.num_heads, 0, self.cfg.attention_head_dim),
        )

    def forward(
        self,
        x: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        cache: EstimatorCache,
        streaming: bool,
        num_pad: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, EstimatorCache]:
        """x, mu, cond (B, 80, m) frames after the cached ones; t (B,); spks (B, 80) -> velocity (B, 80, m) and
        the extended cache. num_pad (B,): left-padding frames of each row's cache (hidden from attention)."""
        start, m = cache.num_frames, x.shape[2]
        # every block's keys/values, cached then new, in one tensor: (blocks, 2, B, H, start + m, hd)
        kv = cache.kv.new_empty(*cache.kv.shape[:4], start + m, cache.kv.shape[5])
        kv[:, :, :, :, :start] = cache.kv
        velocity, tails = self.forward_into(x, mu, t, spks, cond, cache.conv_tails, kv, streaming, num_pad)
        return velocity, EstimatorCache(tails, kv)

    def forward_into(
        self,
        x: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        conv_tails: torch.Tensor,
        kv: torch.Tensor,
        streaming: bool,
        num_pad: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """forward with the keys/values in place: kv (blocks, 2, B, H, start + m, hd) holds the cached frames in
        [:start] and receives the new ones in [start:] (a CUDA graph keeps it as a static buffer, saving a copy of
        the whole cache per call). Returns the velocity and the new conv tails."""
        m = x.shape[2]
        start = kv.shape[4] - m
        t_emb = self.time_mlp(timestep_embedding(t, self.cfg.in_channels).to(x.dtype))
        x = torch.cat([x, mu, spks.unsqueeze(-1).expand(-1, -1, m), cond], dim=1)  # (B, 320, m)
        mask = chunk_mask(start, m, start + m, self.cfg.static_chunk_size if streaming else 0, x.device)
        mask = additive_mask(mask_padding(mask, num_pad), x.dtype)
        tails = conv_tails.split(self.tail_channels, dim=1)
        new_tails: list = [None] * self.num_convs

        def attend(h: torch.Tensor, blocks: nn.ModuleList) -> torch.Tensor:
            h = h.transpose(1, 2)  # (B, m, C)
            for block in blocks:
                h = block(h, mask, kv)
            return h.transpose(1, 2)

        ((resnet, blocks, down),) = self.down_blocks
        skip = attend(resnet(x, t_emb, tails, new_tails), blocks)
        x = down(skip, tails, new_tails)
        for resnet, blocks in self.mid_blocks:
            x = attend(resnet(x, t_emb, tails, new_tails), blocks)
        ((resnet, blocks, up),) = self.up_blocks
        x = attend(resnet(torch.cat([x, skip], dim=1), t_emb, tails, new_tails), blocks)
        x = self.final_block(up(x, tails, new_tails), tails, new_tails)
        return self.final_proj(x), torch.cat(new_tails, dim=1)
