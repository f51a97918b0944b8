"""Batched SNAC decodes of stream windows: rows of F frames (7 codes each) -> audio, each row's noise from its own
(seed, window) so that a row decodes the same alone or in any batch.

Full windows (4 frames: every steady-state decode) replay a CUDA graph per row bucket (1, 2, 4, ... up to
max_rows), captured at startup largest first in one memory pool, inputs copied into static buffers and rows padded
with zeros; other shapes (the whole of a stream shorter than a window) and batches past max_rows run eagerly.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from light_tts.kernels.cuda_graphs import record_graph
from light_tts.models.orpheus.frames import WINDOW
from light_tts.models.orpheus.snac import SNACDecoder, counter_noise
from light_tts.models.orpheus.snac_fused import FusedSNAC

logger = logging.getLogger(__name__)


def row_buckets(max_rows: int) -> list[int]:
    """1, 2, 4, ... below max_rows, and max_rows."""
    return [1 << i for i in range(max_rows.bit_length()) if 1 << i < max_rows] + [max_rows]


def decode_rows(
    model: SNACDecoder,
    frames: torch.Tensor,
    seeds: torch.Tensor,
    counters: torch.Tensor,
    dtype: torch.dtype,
    fused: FusedSNAC | None = None,
) -> torch.Tensor:
    """frames [B, F, 7] int64, seeds / counters [B] int64 (device) -> audio [B, F * samples_per_frame] float32;
    by the fused kernels when `fused` is given (float32 only), else by the module."""
    # slices only (no index tensor built on the host: this runs inside CUDA graph capture)
    codes = [
        frames[:, :, 0],
        frames[:, :, 1::3].flatten(1),
        torch.cat([frames[:, :, 2:4], frames[:, :, 5:7]], dim=2).flatten(1),
    ]
    if fused is not None:
        return fused(codes, seeds, counters)
    noise = counter_noise(seeds, counters)
    with torch.autocast(frames.device.type, dtype=dtype, enabled=dtype != torch.float32):
        return model(codes, lambda block, batch, length: noise(block, batch, length).to(dtype))[:, 0].float()


class SNACRunner:
    def __init__(
        self,
        model: SNACDecoder,
        device: torch.device,
        max_rows: int,
        use_graphs: bool,
        dtype: torch.dtype = torch.float32,
        use_fused: bool = False,
    ):
        """use_fused: the fused kernels (--snac_kernels fused; float32; on a CPU only under TRITON_INTERPRET=1)."""
        self.model, self.device, self.max_rows, self.dtype = model, device, max_rows, dtype
        assert not use_fused or dtype == torch.float32, "the fused SNAC kernels run float32"
        self.fused = FusedSNAC(model) if use_fused else None
        self.graphs: dict[int, tuple] = {}  # rows -> (replay, output)
        self.num_replays = self.num_eager = 0
        if use_graphs and device.type == "cuda":
            self.capture()

    def capture(self) -> None:
        self.frames = torch.zeros(self.max_rows, WINDOW, 7, dtype=torch.int64, device=self.device)
        self.seeds = torch.zeros(self.max_rows, dtype=torch.int64, device=self.device)
        self.counters = torch.zeros_like(self.seeds)
        pool = None
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True  # convolutions only: let cuDNN time its algorithms per shape
        try:
            for rows in reversed(row_buckets(self.max_rows)):
                replay, out, pool = record_graph(
                    lambda r=rows: decode_rows(
                        self.model, self.frames[:r], self.seeds[:r], self.counters[:r], self.dtype, self.fused
                    ),
                    pool,
                )
                self.graphs[rows] = (replay, out)
        finally:
            torch.backends.cudnn.benchmark = benchmark
        logger.info(
            "captured SNAC graphs for windows of %d frames, rows up to %d (%s)",
            WINDOW,
            self.max_rows,
            "fused kernels" if self.fused else "module",
        )

    def decode(self, frames: np.ndarray, seeds: list[int], counters: list[int]) -> torch.Tensor:
        """frames [B, F, 7] -> audio [B, F * samples_per_frame] (a graph's output is valid until its next replay)."""
        rows, num_frames = frames.shape[:2]
        bucket = min((b for b in self.graphs if b >= rows), default=None) if num_frames == WINDOW else None
        seeds_t = torch.tensor([s & (2**63 - 1) for s in seeds], dtype=torch.int64)
        counters_t = torch.tensor(counters, dtype=torch.int64)
        frames_t = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.int64))
        if bucket is None:
            self.num_eager += 1
            return decode_rows(
                self.model,
                frames_t.to(self.device),
                seeds_t.to(self.device),
                counters_t.to(self.device),
                self.dtype,
                self.fused,
            )
        self.frames[:rows].copy_(frames_t, non_blocking=True)
        self.frames[rows:bucket].zero_()
        self.seeds[:rows].copy_(seeds_t, non_blocking=True)
        self.counters[:rows].copy_(counters_t, non_blocking=True)
        replay, out = self.graphs[bucket]
        replay()
        self.num_replays += 1
        return out[:rows]
