"""The decode process's flow-cache pool for CosyVoice3's DiT flow: keys/values in pages, conv context in slots.

Allocated once at startup, like flow_cache.FlowCache (CosyVoice2's) and with the same page and slot conventions, so
page_pool.PagePool, the attention kernels and the engine's bookkeeping serve both:

Pages (one chunk: 25 tokens = 50 mel frames of one stream), all indexed by the same page id:
  est_kv     [pages + 1, CFM steps, DiT blocks, 2 (keys, values), 2 (CFG branch), H, 50, D]   (all of it)
  est_scale  [pages + 1, CFM steps, DiT blocks, 2, 2, H] float32, fp8 pools only
The extra last page is scratch: graph padding writes there and nothing reads it. Keys are stored rotated.

Slots (one per stream or kept voice prefix; slot 0 stays zero, the causal left padding of a fresh stream):
  la_tails   [slots, 2, C]               the lookahead conv1's outputs of the last 2 tokens (conv2's context)
  pos_tails  [CFM steps, 2 (conv1, conv2), slots, 2 (branch), 30, dim]  the positional convs' last 30 inputs
             (one (step, conv) is a contiguous [slots * 2 * 30, dim] table that the pass reads and writes by row)
  spks       [slots, 80]                 the stream's speaker vector after the affine layer
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from light_tts.decode.flow.flow_cache import FlowCache
from light_tts.models.cosyvoice3.config import DiTFlowConfig
from light_tts.models.cosyvoice3.flow.dit import CONV_POS_KERNEL

POS_TAIL = CONV_POS_KERNEL - 1


@dataclass(frozen=True)
class DiTCacheShape:
    page_frames: int  # mel frames per page (the DiT's attention block)
    page_tokens: int
    num_steps: int
    num_blocks: int
    heads: int
    head_dim: int
    dim: int
    lookahead_channels: int
    out_channels: int

    @classmethod
    def from_config(cls, cfg: DiTFlowConfig) -> DiTCacheShape:
        est = cfg.estimator
        return cls(
            page_frames=est.static_chunk_size,
            page_tokens=est.static_chunk_size // cfg.token_mel_ratio,
            num_steps=cfg.cfm.n_timesteps,
            num_blocks=est.depth,
            heads=est.heads,
            head_dim=est.dim_head,
            dim=est.dim,
            lookahead_channels=cfg.pre_lookahead_channels,
            out_channels=cfg.output_size,
        )

    def page_bytes(self, kv_dtype: torch.dtype, act_dtype: torch.dtype) -> int:
        per_head = self.num_steps * self.num_blocks * 2 * 2 * self.heads
        scales = per_head * 4 if kv_dtype.itemsize == 1 else 0
        return per_head * self.page_frames * self.head_dim * kv_dtype.itemsize + scales

    def slot_bytes(self, act_dtype: torch.dtype) -> int:
        pos = self.num_steps * 2 * 2 * POS_TAIL * self.dim
        return (pos + 2 * self.lookahead_channels + self.out_channels) * act_dtype.itemsize


class DiTCache(FlowCache):
    """FlowCache's pool (est_view, nbytes) with the DiT's tensors."""

    def __init__(
        self,
        shape: DiTCacheShape,
        num_pages: int,
        num_slots: int,
        act_dtype: torch.dtype,
        kv_dtype: torch.dtype,
        device: torch.device,
    ):
        s = shape
        self._init_pages(shape, num_pages, num_slots, act_dtype, kv_dtype, device, (s.num_blocks, s.heads, s.head_dim))
        self.la_tails = torch.zeros(num_slots, 2, s.lookahead_channels, dtype=act_dtype, device=device)
        self.pos_tails = torch.zeros(s.num_steps, 2, num_slots, 2, POS_TAIL, s.dim, dtype=act_dtype, device=device)
        self.spks = torch.zeros(num_slots, s.out_channels, dtype=act_dtype, device=device)

    def pos_table(self, step: int, conv: int) -> torch.Tensor:
        """[slots * 2 (branch) * 30, dim]: one positional conv's tails of one CFM step, row (slot * 2 + branch) * 30
        + j (a view: writes land in the pool)."""
        return self.pos_tails[step, conv].view(-1, self.shape.dim)
