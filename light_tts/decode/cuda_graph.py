"""CUDA graphs of the CFM estimator (one call = one Euler step, both CFG branches), installed as the CFM's runner.

A streamed chunk has a fixed number of new frames (2 * hop), so an estimator call is fixed in shape once its
rows are padded to a batch bucket and its key/value cache is left-padded to a capacity bucket (the estimator masks
pad slots through `num_pad`; capacities are multiples of the 50-frame chunk so chunk masks stay aligned). Graphs
are captured lazily per (rows, new frames, capacity), share one memory pool, and a call that fits no
bucket, whose static buffers would pass `max_graph_bytes`, or whose length is a one-off (final chunks, whole
utterances: new frames not a multiple of the chunk) runs eagerly.

The graph runs the estimator's forward_into on a static key/value buffer of capacity + new frames: a replay
copies the request cache into it, the graph appends the new frames in place, and the extended cache is copied
out (the next replay overwrites the buffer). One copy in and one out per call, linear in the cached length: the
price of fixed shapes (the whole 10-step loop in one graph would need ten such buffers, too many at large batch).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from light_tts.models.flow.cache import EstimatorCache
from light_tts.models.flow.estimator import CausalConditionalDecoder

logger = logging.getLogger(__name__)

ROW_BUCKETS = (2, 4, 8, 16, 32, 64, 128)  # estimator rows = 2 x requests (CFG pair)
# cached frames, multiples of the 50-frame chunk; about 1.5x apart so that padding wastes at most a third
FRAME_BUCKETS = (0, 100, 200, 300, 400, 600, 800, 1200, 1600, 2400, 3200, 4800, 6400)


def bucket(value: int, buckets: tuple[int, ...]) -> int | None:
    return next((b for b in buckets if b >= value), None)


@dataclass
class CapturedCall:
    replay: Callable[[], None]  # reruns the captured call on the static buffers
    inputs: tuple  # static x, mu, t, spks, cond, num_pad
    conv_tails: torch.Tensor  # static conv tails
    kv: torch.Tensor  # static keys/values: (blocks, 2, rows, H, capacity + new frames, hd), new frames written last
    velocity: torch.Tensor  # graph outputs: velocity and new conv tails
    new_tails: torch.Tensor


class EstimatorGraphs:
    """Callable with the estimator's signature; replays a captured graph when the call fits a bucket."""

    def __init__(self, estimator: CausalConditionalDecoder, max_graph_bytes: int = 4 << 30):
        self.estimator = estimator
        self.max_graph_bytes = max_graph_bytes
        self.calls: dict[tuple, CapturedCall | None] = {}
        self.pool = None
        self.num_replays = self.num_eager = 0

    def __call__(self, x, mu, t, spks, cond, cache: EstimatorCache, streaming: bool, num_pad=None):
        rows, m, start = x.shape[0], x.shape[2], cache.num_frames
        num_rows, capacity = bucket(rows, ROW_BUCKETS), bucket(start, FRAME_BUCKETS)
        call = None
        # chunk-aligned streamed calls only (first and middle chunks: few shapes); final chunks and whole
        # utterances have one-off lengths and run eagerly
        is_steady = streaming and m % self.estimator.cfg.static_chunk_size == 0
        if is_steady and num_rows is not None and capacity is not None:
            key = (num_rows, m, capacity)
            if key not in self.calls:
                try:
                    self.calls[key] = self._capture(num_rows, m, capacity, x, cache)
                except RuntimeError:  # this shape stays eager; the engine keeps serving
                    logger.exception("estimator graph capture failed for %s; running it eagerly", key)
                    self.calls[key] = None
            call = self.calls[key]
        if call is None:
            self.num_eager += 1
            return self.estimator(x, mu, t, spks, cond, cache, streaming, num_pad)
        self.num_replays += 1
        return self._replay(call, capacity, x, mu, t, spks, cond, cache, num_pad)

    def _replay(self, call: CapturedCall, capacity: int, x, mu, t, spks, cond, cache, num_pad):
        rows, start = x.shape[0], cache.num_frames
        sx, smu, st, sspks, scond, spad = call.inputs
        for static, value in ((sx, x), (smu, mu), (st, t), (sspks, spks), (scond, cond)):
            static[:rows].copy_(value)
        spad.zero_()  # bucket-padding rows see their (zero) keys: finite, and ignored
        spad[:rows] = capacity - start  # the capacity padding in front of every row's cache...
        if num_pad is not None:
            spad[:rows] += num_pad  # ...and the batch's own left padding within it
        call.conv_tails[:rows].copy_(cache.conv_tails)
        call.kv[:, :, :rows, :, capacity - start:capacity].copy_(cache.kv)
        call.replay()
        # the buffers are overwritten by the next replay (the next Euler step): copy out what the caller keeps
        kv = call.kv[:, :, :rows, :, capacity - start:].clone()
        return call.velocity[:rows], EstimatorCache(call.new_tails[:rows].clone(), kv)

    def _static_bytes(self, num_rows: int, m: int, capacity: int, cache: EstimatorCache) -> int:
        kv = cache.kv  # (blocks, 2, rows, H, frames, hd)
        per_row_frame = kv.shape[0] * 2 * kv.shape[3] * kv.shape[5] * kv.element_size()
        return num_rows * (capacity + m) * per_row_frame

    def _capture(self, num_rows: int, m: int, capacity: int, x: torch.Tensor,
                 cache: EstimatorCache) -> CapturedCall | None:
        if self._static_bytes(num_rows, m, capacity, cache) > self.max_graph_bytes:
            logger.info("estimator call of %d rows x %d cached frames runs eagerly (over the graph budget)",
                        num_rows, capacity)
            return None
        est, dev, dtype = self.estimator, x.device, x.dtype
        inputs = (torch.zeros(num_rows, x.shape[1], m, device=dev, dtype=dtype),
                  torch.zeros(num_rows, est.cfg.out_channels, m, device=dev, dtype=dtype),
                  torch.zeros(num_rows, device=dev, dtype=torch.float32),
                  torch.zeros(num_rows, est.cfg.out_channels, device=dev, dtype=dtype),
                  torch.zeros(num_rows, est.cfg.out_channels, m, device=dev, dtype=dtype),
                  torch.zeros(num_rows, device=dev, dtype=torch.long))
        tails = torch.zeros(num_rows, *cache.conv_tails.shape[1:], device=dev, dtype=dtype)
        shape = cache.kv.shape
        kv = torch.zeros(*shape[:2], num_rows, shape[3], capacity + m, shape[5], device=dev, dtype=dtype)
        replay, (velocity, new_tails) = self._record(
            lambda: est.forward_into(*inputs[:5], tails, kv, True, inputs[5]))
        logger.info("captured estimator graph: %d rows, %d new frames, %d cached frames", num_rows, m, capacity)
        return CapturedCall(replay, inputs, tails, kv, velocity, new_tails)

    def _record(self, run: Callable[[], tuple]) -> tuple[Callable[[], None], tuple]:
        replay, outputs, self.pool = record_graph(run, self.pool)
        return replay, outputs


def record_graph(run: Callable[[], tuple], pool=None) -> tuple[Callable[[], None], tuple, object]:
    """Captures run() as a CUDA graph in memory pool `pool` (None: a new one): (replay, the outputs that each
    replay rewrites, the pool)."""
    # warm up on a side stream (lazy initialisations such as cuBLAS handles must not be captured)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        outputs = run()
    return graph.replay, outputs, graph.pool()
