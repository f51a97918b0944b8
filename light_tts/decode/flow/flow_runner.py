"""Runs the engine's paged flow passes (a family's packed pass: PagedFlow, PagedDiT): one CUDA graph per bucket,
all captured at startup, eager otherwise.

A pass is padded to the smallest bucket (tokens, rows) that holds it; every input of a bucket has fixed shapes
(flow_inputs.py pads them), and the graph reads the pool's pages and slots in place, so a replay is a copy of the
step's index tensors into the graph's static inputs and nothing else: no cache is ever copied in or out. A pass
that fits no bucket runs eagerly and is counted (`num_eager`); nothing is captured while serving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from light_tts.decode.flow.flow_inputs import Bucket, ChunkSpec, FlowInputs
from light_tts.decode.flow.paged_flow import PagedFlow
from light_tts.kernels.cuda_graphs import record_graph

logger = logging.getLogger(__name__)

TOKEN_BUCKETS = (32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)


def make_buckets(max_tokens: int, max_rows: int) -> list[Bucket]:
    """Token buckets about 1.5x apart up to max_tokens; each takes as many rows as a 16-token chunk could fill."""
    sizes = [t for t in TOKEN_BUCKETS if t < max_tokens] + [max_tokens]
    return [Bucket(t, max(1, min(max_rows, t // 16))) for t in sizes]


@dataclass
class CapturedPass:
    inputs: FlowInputs  # static inputs: a replay reads whatever they hold
    mel: torch.Tensor  # static output, rewritten by every replay
    replay: Callable[[], None]


class FlowRunner:
    def __init__(self, paged: PagedFlow, buckets: list[Bucket], table_width: int, use_graphs: bool):
        self.paged, self.buckets, self.table_width = paged, sorted(buckets, key=lambda b: b.num_tokens), table_width
        self.cache = paged.cache
        self.graphs: dict[Bucket, CapturedPass] = {}
        self.use_graphs = use_graphs
        self.num_replays = self.num_eager = 0
        self.pool = None

    def build(self, specs: list[ChunkSpec], bucket: Bucket | None, device: torch.device | None = None) -> FlowInputs:
        return self.paged.build_inputs(specs, device, bucket, self.table_width)

    def bucket_for(self, specs: list[ChunkSpec]) -> Bucket | None:
        return next((b for b in self.buckets if b.fits(specs)), None)

    def capture_all(self) -> None:
        """One graph per bucket, largest first (they share one memory pool, sized by the largest)."""
        for bucket in reversed(self.buckets):
            inputs = self.build([], bucket)  # all padding: reads zeros, writes the scratch page and trash slot
            replay, mel, self.pool = record_graph(lambda inputs=inputs: self.paged(inputs), self.pool)
            self.graphs[bucket] = CapturedPass(inputs, mel, replay)
            logger.info("captured flow graph: up to %d tokens in %d rows", bucket.num_tokens, bucket.num_rows)

    def run(self, specs: list[ChunkSpec]) -> tuple[torch.Tensor, FlowInputs]:
        """The pass's float32 mel [frames, 80] (valid until the next run) and its inputs (frame offsets)."""
        bucket = self.bucket_for(specs) if self.graphs else None
        if bucket is None:
            self.num_eager += self.use_graphs
            inputs = self.build(specs, None)
            return self.paged(inputs), inputs
        captured = self.graphs[bucket]
        inputs = self.build(specs, bucket, torch.device("cpu"))  # then one copy into the graph's inputs
        for static, value in zip(captured.inputs.tensors(), inputs.tensors()):
            static.copy_(value, non_blocking=True)
        captured.replay()
        self.num_replays += 1
        return captured.mel, inputs

    def peak_pass(self, bucket: Bucket) -> None:
        """An eager pass at `bucket`'s shapes on padding only (measures the activation peak before sizing)."""
        self.paged(self.build([], bucket))
