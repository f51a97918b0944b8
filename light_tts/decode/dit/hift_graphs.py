"""CUDA graphs of CosyVoice3's causal HiFT (everything after the f0 predictor and the phase accumulation: the
excitation from f0, cycles and noise rows, the source STFT, the upsampler and the iSTFT), installed as its runner.

A chunk's pass has a fixed shape given the frames it brings (streaming.window_frames): every middle chunk of the hop
policy, and a first chunk of each alignment pad. Captured at startup: middle chunks at every row bucket up to
HIFT_MAX_ROWS, first chunks (one shape per prompt pad, on the first-audio path) at the smaller buckets. Final
chunks and any other shape run eagerly and are counted. At one row the eager pass is launch-bound (947 kernels,
3.8 ms of GPU time against 17.6 ms of wall time on an H100): a replay is one launch.
"""

from __future__ import annotations

import torch

from light_tts.decode.hift.hift_graph import RowGraphs
from light_tts.models.cosyvoice3.hift import CausalHiFT
from light_tts.models.cosyvoice3.hift.streaming import window_frames

FIRST_CHUNK_ROWS = 4  # the largest bucket captured for first-chunk shapes (streams of one voice starting together)


class CausalHiFTGraphs(RowGraphs):
    """CausalHiFT.synthesize_window's runner. Shape key: (mel frames,), non-final passes."""

    def __init__(self, hift: CausalHiFT, record=None):
        self.hift = hift
        super().__init__(self._eager, self._examples, record)

    def _eager(self, mel, f0, cycles, noise, finalize: bool = False) -> tuple[torch.Tensor]:
        return (self.hift.decode(mel, self.hift.m_source(f0, cycles, noise), finalize),)

    def _examples(self, rows: int, key: tuple) -> tuple[torch.Tensor, ...]:
        (frames,) = key
        device, harmonics = self.hift.conv_post.weight.device, self.hift.m_source.num_harmonics
        samples = frames * self.hift.samples_per_frame
        return (
            torch.zeros(rows, self.hift.cfg.in_channels, frames, device=device),
            torch.zeros(rows, frames, device=device),
            torch.zeros(rows, frames, harmonics, device=device),
            torch.zeros(rows, samples, harmonics, device=device),
        )

    def __call__(self, mel, f0, cycles, noise, finalize: bool) -> torch.Tensor:
        if finalize:
            self.num_eager += 1
            return self._eager(mel, f0, cycles, noise, True)[0]
        return self.run((mel.shape[2],), mel, f0, cycles, noise)[0]


def capture_hift_graphs(
    hift: CausalHiFT, first_frames: list[int], middle_frames: list[int], max_rows: int, record=None
) -> CausalHiFTGraphs:
    """Graphs of the non-final passes of chunks bringing these mel frames: middle chunks at every row bucket up to
    max_rows, first chunks up to FIRST_CHUNK_ROWS. record: RowGraphs' (tests run it eagerly on the CPU)."""
    graphs = CausalHiFTGraphs(hift, record)
    with torch.no_grad():  # not inference_mode: the static buffers are written by callers outside it too (benches)
        graphs.capture(max_rows, [(window_frames(hift, f, False),) for f in middle_frames], "causal HiFT")
        first_rows = min(max_rows, FIRST_CHUNK_ROWS)
        first_keys = [(window_frames(hift, f, True),) for f in first_frames]
        graphs.capture(first_rows, first_keys, "causal HiFT (first chunks)", benchmark=len(first_keys) == 1)
    return graphs
