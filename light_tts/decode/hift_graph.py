"""CUDA graphs of HiFT's synthesis (f0, excitation, upsampler, iSTFT: everything after its random draws), installed
as the HiFT's runner.

Rows are padded to a batch bucket; the mel length and the cached excitation length are part of the key. A shape is
captured the second time it is seen (streamed chunks repeat a few shapes; final chunks are one-offs that run
eagerly), up to `max_graphs` shapes. The outputs are copied out: the next replay overwrites them.
"""

from __future__ import annotations

import logging

import torch

from light_tts.decode.cuda_graph import bucket, record_graph
from light_tts.models.hift.generator import HiFT

logger = logging.getLogger(__name__)

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class HiFTGraphs:
    """Callable with HiFT.synthesize's signature (mel, initial phase, noise, cached excitation)."""

    def __init__(self, hift: HiFT, max_graphs: int = 32):
        self.hift = hift
        self.max_graphs = max_graphs
        self.seen: set[tuple] = set()
        self.calls: dict[tuple, tuple | None] = {}  # key -> (replay, static inputs, outputs) or None (eager)
        self.pool = None
        self.num_replays = self.num_eager = 0

    def __call__(self, mel, phase, noise, cache_source):
        rows = bucket(mel.shape[0], ROW_BUCKETS)
        key = (rows, mel.shape[2], cache_source.shape[2])
        if rows is not None and key not in self.calls and key in self.seen and len(self.calls) < self.max_graphs:
            try:
                self.calls[key] = self._capture(rows, mel, phase, noise, cache_source)
            except RuntimeError:  # this shape stays eager; the engine keeps serving
                logger.exception("HiFT graph capture failed for %s; running it eagerly", key)
                self.calls[key] = None
        self.seen.add(key)
        call = self.calls.get(key)
        if call is None:
            self.num_eager += 1
            return self.hift.synthesize(mel, phase, noise, cache_source)
        self.num_replays += 1
        replay, inputs, (audio, source) = call
        b = mel.shape[0]
        for static, value in zip(inputs, (mel, phase, noise, cache_source)):
            static[:b].copy_(value)
        replay()
        return audio[:b].clone(), source[:b].clone()

    def _capture(self, rows: int, *examples: torch.Tensor) -> tuple:
        inputs = tuple(x.new_zeros(rows, *x.shape[1:]) for x in examples)
        replay, outputs = self._record(lambda: self.hift.synthesize(*inputs))
        logger.info("captured HiFT graph: %d rows, %d mel frames", rows, examples[0].shape[2])
        return replay, inputs, outputs

    def _record(self, run):
        replay, outputs, self.pool = record_graph(run, self.pool)
        return replay, outputs
