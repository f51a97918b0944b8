"""Capturing a callable as a CUDA graph: the one recipe the LLM's prefill graphs, the flow's, HiFT's and SNAC's
graphs share (their own modules decide shapes, buffers and buckets)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def record_graph(run: Callable[[], object], pool=None) -> tuple[Callable[[], None], object, object]:
    """Captures run() as a CUDA graph in memory pool `pool` (None: a new one): (replay, the outputs each replay
    rewrites, the pool). Warmed up on a side stream first (lazy initialisations must not be captured)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        outputs = run()
    return graph.replay, outputs, graph.pool()
