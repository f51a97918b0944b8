"""CUDA graphs of HiFT's synthesis (f0, excitation, upsampler, iSTFT: everything after its random draws; with
counter-based noise the draws too), installed as the HiFT's runner (keyed_runner).

Captured at startup for the shapes a stream repeats: the middle chunks of the hop policy (their mel frames plus
the re-vocoded overlap, with the cached excitation), at every row bucket. Rows are padded to the bucket; any other
shape (first and final chunks, whole utterances) runs eagerly and is counted. The outputs are copied out: the next
replay overwrites them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from light_tts.kernels.cuda_graphs import record_graph
from light_tts.models.cosyvoice2.hift.generator import HiFT

logger = logging.getLogger(__name__)

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def bucket(value: int, buckets: tuple[int, ...]) -> int | None:
    return next((b for b in buckets if b >= value), None)


class RowGraphs:
    """CUDA graphs of fn(*inputs) -> outputs at every row bucket of each shape key: a call pads its rows to the
    bucket (copies into the static inputs), replays and copies the outputs out; a shape not captured runs eagerly
    and is counted. examples(rows, key) -> zero inputs of that shape (the static buffers)."""

    def __init__(self, fn: Callable, examples: Callable[[int, tuple], tuple[torch.Tensor, ...]], record=None):
        """record: record_graph's signature (the default); tests pass an eager stand-in to run this on the CPU."""
        self.fn, self.examples, self.record = fn, examples, record or record_graph
        self.calls: dict[tuple, tuple] = {}  # (rows, key) -> (replay, inputs, outputs)
        self.pool = None
        self.num_replays = self.num_eager = 0

    def capture(self, max_rows: int, keys: list[tuple], name: str = "HiFT", benchmark: bool = True) -> None:
        """Graphs for every row bucket up to max_rows of each key. benchmark: let cuDNN time its convolution
        algorithms for each shape (tens of milliseconds a shape; off for the many rarely-used ones)."""
        rows_list = [b for b in ROW_BUCKETS if b < max_rows] + [bucket(max_rows, ROW_BUCKETS) or max_rows]
        was_benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = benchmark
        started = time.perf_counter()
        try:
            for key in keys:
                for rows in reversed(rows_list):
                    examples = self.examples(rows, key)
                    replay, outputs, self.pool = self.record(lambda ex=examples: self.fn(*ex), self.pool)
                    self.calls[(rows, key)] = (replay, examples, outputs)
            logger.info(
                "captured %d %s graphs in %.1f s: shapes %s, rows up to %d",
                len(keys) * len(rows_list),
                name,
                time.perf_counter() - started,
                ", ".join(str(k) for k in keys),
                rows_list[-1],
            )
        finally:
            torch.backends.cudnn.benchmark = was_benchmark

    def run(self, key: tuple, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """fn(*inputs), whose first dimension is the rows, through the graph of (its bucket, key) if captured."""
        b = inputs[0].shape[0]
        call = self.calls.get((bucket(b, ROW_BUCKETS), key))
        if call is None:
            self.num_eager += 1
            return self.fn(*inputs)
        self.num_replays += 1
        replay, static_inputs, outputs = call
        for static, value in zip(static_inputs, inputs):
            static[:b].copy_(value)
        replay()
        return tuple(out[:b].clone() for out in outputs)


class HiFTGraphs(RowGraphs):
    """CosyVoice2's HiFT graphs. Callable with HiFT.synthesize's signature (mel, initial phase, noise, cached
    excitation), or with synthesize_keyed's (mel, seeds, sample offsets, cached excitation) when keyed: then a replay
    copies two int64s per row instead of the row's noise (27,840 x 9 floats a second of audio). Shape key: (mel
    frames, cached excitation samples)."""

    def __init__(self, hift: HiFT, keyed: bool = False, record=None):
        self.hift, self.keyed = hift, keyed
        super().__init__(hift.synthesize_keyed if keyed else hift.synthesize, self._examples, record)

    def _examples(self, rows: int, key: tuple) -> tuple[torch.Tensor, ...]:
        frames, cached = key
        device = self.hift.stft_window.device
        zeros = lambda *shape, dtype=torch.float32: torch.zeros(*shape, dtype=dtype, device=device)  # noqa: E731
        mel, cache = zeros(rows, self.hift.cfg.in_channels, frames), zeros(rows, 1, cached)
        if self.keyed:
            return mel, zeros(rows, dtype=torch.int64), zeros(rows, dtype=torch.int64), cache
        num_harmonics = self.hift.m_source.num_harmonics
        return mel, zeros(rows, num_harmonics), zeros(rows, frames * self.hift.samples_per_frame, num_harmonics), cache

    def __call__(self, mel, noise_a, noise_b, cache_source):
        """noise_a, noise_b: (initial phases, noise), or (seeds, sample offsets) when keyed."""
        return self.run((mel.shape[2], cache_source.shape[2]), mel, noise_a, noise_b, cache_source)
