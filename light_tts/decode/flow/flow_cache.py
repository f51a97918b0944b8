"""The decode process's flow-cache pool: every stream's flow keys/values in pages, and its conv context in slots.

Allocated once at startup (sized from the memory left after the weights and a warm-up pass); page_pool.PagePool
decides which page belongs to whom, this module only holds the tensors.

Pages (one chunk: 25 tokens = 50 mel frames of one stream), all indexed by the same page id:
  est_kv     [pages + 1, CFM steps, estimator blocks, 2 (keys, values), 2 (CFG branch), H, 50, D]  (~99% of it)
  est_scale  [pages + 1, CFM steps, estimator blocks, 2, 2, H] float32, fp8 pools only
  enc_kv     [pages + 1, token-rate blocks, 2, 1, H, 25, d]   (the encoder's keys/values at the token rate)
  up_kv      [pages + 1, frame-rate blocks, 2, 1, H, 50, d]
The extra last page is scratch: graph padding writes there and nothing reads it.

Slots (one per stream or kept voice prefix; slot 0 stays zero, the causal left padding of a fresh stream):
  la_tails   [slots, 2, D]                 the lookahead conv's last 2 outputs (its causal conv2's context)
  up_tails   [slots, 4, D]                 the last 4 upsampled frames (the up conv's context)
  est_tails  one [CFM steps, slots, 2 (branch), 2, C_in] per estimator causal conv
  spks       [slots, 80]                   the stream's speaker vector after the affine layer
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from light_tts.model_config import FlowConfig

KV_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "fp8_e4m3": torch.float8_e4m3fn,
}


@dataclass(frozen=True)
class FlowCacheShape:
    """The per-page and per-slot geometry of a flow (from the model config)."""

    page_frames: int  # mel frames per page (the estimator's chunk)
    page_tokens: int  # tokens per page (the encoder's chunk)
    num_steps: int
    num_est_blocks: int
    est_heads: int
    est_head_dim: int
    enc_blocks: int
    enc_up_blocks: int
    enc_heads: int
    enc_head_dim: int
    enc_dim: int
    tail_channels: tuple[int, ...]  # input channels of each estimator causal conv, by slot
    out_channels: int

    @classmethod
    def from_config(cls, cfg: FlowConfig) -> FlowCacheShape:
        est, enc = cfg.cfm.estimator, cfg.encoder
        c = est.channels[0]
        # the estimator's causal convs in build order (see CausalConditionalDecoder): resnet(in) convs, down conv,
        # mid resnets, up resnet (skip concat), up conv, final block
        tails = [est.in_channels, c, c] + [c, c] * est.num_mid_blocks + [2 * c, c, c, c]
        return cls(
            page_frames=est.static_chunk_size,
            page_tokens=enc.static_chunk_size,
            num_steps=cfg.cfm.n_timesteps,
            num_est_blocks=(2 + est.num_mid_blocks) * est.n_blocks,
            est_heads=est.num_heads,
            est_head_dim=est.attention_head_dim,
            enc_blocks=enc.num_blocks,
            enc_up_blocks=enc.num_up_blocks,
            enc_heads=enc.attention_heads,
            enc_head_dim=enc.output_size // enc.attention_heads,
            enc_dim=enc.output_size,
            tail_channels=tuple(tails),
            out_channels=est.out_channels,
        )

    def page_bytes(self, kv_dtype: torch.dtype, act_dtype: torch.dtype) -> int:
        """Bytes of one page: the estimator's keys/values (+ fp8 scales) and the encoder's."""
        est = self.num_steps * self.num_est_blocks * 2 * 2 * self.est_heads * self.page_frames * self.est_head_dim
        scales = self.num_steps * self.num_est_blocks * 2 * 2 * self.est_heads * 4 if kv_dtype.itemsize == 1 else 0
        enc = (self.enc_blocks * self.page_tokens + self.enc_up_blocks * self.page_frames) * 2 * self.enc_dim
        return est * kv_dtype.itemsize + scales + enc * act_dtype.itemsize

    def slot_bytes(self, act_dtype: torch.dtype) -> int:
        est = self.num_steps * 2 * 2 * sum(self.tail_channels)
        return (est + 6 * self.enc_dim + self.out_channels) * act_dtype.itemsize


class FlowCache:
    def __init__(
        self,
        shape: FlowCacheShape,
        num_pages: int,
        num_slots: int,
        act_dtype: torch.dtype,
        kv_dtype: torch.dtype,
        device: torch.device,
    ):
        s = shape
        self._init_pages(
            shape, num_pages, num_slots, act_dtype, kv_dtype, device, (s.num_est_blocks, s.est_heads, s.est_head_dim)
        )
        pages = num_pages + 1
        zeros = lambda *dims, dtype=act_dtype: torch.zeros(*dims, dtype=dtype, device=device)  # noqa: E731
        self.enc_kv = zeros(pages, s.enc_blocks, 2, 1, s.enc_heads, s.page_tokens, s.enc_head_dim)
        self.up_kv = zeros(pages, s.enc_up_blocks, 2, 1, s.enc_heads, s.page_frames, s.enc_head_dim)
        self.la_tails = zeros(num_slots, 2, s.enc_dim)
        self.up_tails = zeros(num_slots, 4, s.enc_dim)
        self.est_tails = [zeros(s.num_steps, num_slots, 2, 2, c) for c in s.tail_channels]
        self.spks = zeros(num_slots, s.out_channels)

    def _init_pages(
        self,
        shape,
        num_pages: int,
        num_slots: int,
        act_dtype: torch.dtype,
        kv_dtype: torch.dtype,
        device: torch.device,
        est_dims: tuple[int, int, int],
    ) -> None:
        """The estimator's keys/values (est_dims: blocks, heads, head_dim per CFM step) and fp8 scales, and the
        pool's bookkeeping (a family's cache builds its own slot tensors beside them)."""
        self.shape, self.num_pages, self.num_slots = shape, num_pages, num_slots
        self.act_dtype, self.kv_dtype, self.device = act_dtype, kv_dtype, device
        self.scratch_page = num_pages
        blocks, heads, head_dim = est_dims
        dims = (num_pages + 1, shape.num_steps, blocks, 2, 2, heads)
        self.est_kv = torch.zeros(*dims, shape.page_frames, head_dim, dtype=kv_dtype, device=device)
        self.est_scale = torch.zeros(dims, device=device) if kv_dtype == torch.float8_e4m3fn else None

    def est_view(self, step: int, block: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Keys/values (and fp8 scales) of one estimator call's block: [pages, 2, 2, H, PAGE, D]."""
        scale = self.est_scale[:, step, block] if self.est_scale is not None else None
        return self.est_kv[:, step, block], scale

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor the pool holds (lists of tensors included)."""
        values = [v for value in vars(self).values() for v in (value if isinstance(value, list) else [value])]
        return sum(t.numel() * t.element_size() for t in values if isinstance(t, torch.Tensor))


def pages_for_bytes(
    shape: FlowCacheShape, budget: int, num_slots: int, act_dtype: torch.dtype, kv_dtype: torch.dtype
) -> int:
    """Pages that fit in `budget` bytes next to `num_slots` slots (the scratch page included)."""
    free = budget - num_slots * shape.slot_bytes(act_dtype)
    return max(0, free // shape.page_bytes(kv_dtype, act_dtype) - 1)
