"""CUDA graphs of HiFT's synthesis (f0, excitation, upsampler, iSTFT: everything after its random draws; with
counter-based noise the draws too), installed as the HiFT's runner (keyed_runner).

Captured at startup for the shapes a stream repeats: the middle chunks of the hop policy (their mel frames plus
the re-vocoded overlap, with the cached excitation), at every row bucket. Rows are padded to the bucket; any other
shape (first and final chunks, whole utterances) runs eagerly and is counted. The outputs are copied out: the next
replay overwrites them.
"""

from __future__ import annotations

import logging

import torch

from light_tts.decode.flow.flow_runner import record_graph
from light_tts.models.cosyvoice2.hift.generator import HiFT

logger = logging.getLogger(__name__)

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def bucket(value: int, buckets: tuple[int, ...]) -> int | None:
    return next((b for b in buckets if b >= value), None)


class HiFTGraphs:
    """Callable with HiFT.synthesize's signature (mel, initial phase, noise, cached excitation), or with
    synthesize_keyed's (mel, seeds, sample offsets, cached excitation) when keyed: then a replay copies two int64s
    per row instead of the row's noise (27,840 x 9 floats a second of audio)."""

    def __init__(self, hift: HiFT, keyed: bool = False):
        self.hift, self.keyed = hift, keyed
        self.fn = hift.synthesize_keyed if keyed else hift.synthesize
        self.calls: dict[tuple, tuple] = {}  # (rows, mel frames, cached samples) -> (replay, inputs, outputs)
        self.pool = None
        self.num_replays = self.num_eager = 0

    def capture(self, max_rows: int, shapes: list[tuple[int, int]]) -> None:
        """Graphs for every row bucket up to max_rows and every (mel frames, cached excitation samples)."""
        rows_list = [b for b in ROW_BUCKETS if b < max_rows] + [bucket(max_rows, ROW_BUCKETS) or max_rows]
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True  # HiFT is convolutions: let cuDNN time its algorithms per shape
        try:
            self._capture(rows_list, shapes)
        finally:
            torch.backends.cudnn.benchmark = benchmark

    def _examples(self, rows: int, frames: int, cached: int) -> tuple[torch.Tensor, ...]:
        device = self.hift.stft_window.device
        zeros = lambda *shape, dtype=torch.float32: torch.zeros(*shape, dtype=dtype, device=device)  # noqa: E731
        mel, cache = zeros(rows, self.hift.cfg.in_channels, frames), zeros(rows, 1, cached)
        if self.keyed:
            return mel, zeros(rows, dtype=torch.int64), zeros(rows, dtype=torch.int64), cache
        num_harmonics = self.hift.m_source.num_harmonics
        return mel, zeros(rows, num_harmonics), zeros(rows, frames * self.hift.samples_per_frame, num_harmonics), cache

    def _capture(self, rows_list, shapes) -> None:
        for frames, cached in shapes:
            for rows in reversed(rows_list):
                examples = self._examples(rows, frames, cached)
                replay, outputs, self.pool = record_graph(lambda ex=examples: self.fn(*ex), self.pool)
                self.calls[(rows, frames, cached)] = (replay, examples, outputs)
            logger.info(
                "captured HiFT graphs: %d mel frames, %d cached samples, rows up to %d", frames, cached, rows_list[-1]
            )

    def __call__(self, mel, noise_a, noise_b, cache_source):
        """noise_a, noise_b: (initial phases, noise), or (seeds, sample offsets) when keyed."""
        rows = bucket(mel.shape[0], ROW_BUCKETS)
        call = self.calls.get((rows, mel.shape[2], cache_source.shape[2]))
        if call is None:
            self.num_eager += 1
            return self.fn(mel, noise_a, noise_b, cache_source)
        self.num_replays += 1
        replay, inputs, (audio, source) = call
        b = mel.shape[0]
        for static, value in zip(inputs, (mel, noise_a, noise_b, cache_source)):
            static[:b].copy_(value)
        replay()
        return audio[:b].clone(), source[:b].clone()
