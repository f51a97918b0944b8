"""CUDA graphs of the decode step (forward and the first sampling attempt), one per batch bucket, sharing one
memory pool and one pair of input buffers.

Buckets are 1, 2, 4, 8, ... up to graph_max_batch_size (which is a bucket too), captured largest first so the
smaller graphs reuse the pool. A batch is padded up to its bucket with columns that point at the sentinel
req_to_token row 0 with seq_len 0 and slot -1: attention reads nothing for them and the KV store drops them.
Batches above the largest bucket run eagerly.
"""

from __future__ import annotations

import torch

from light_tts.llm.model import PAD_COLUMN, EngineSpeechLM, ForwardInputs, KVCache
from light_tts.llm.sampler import Sampler

def graph_buckets(max_batch_size: int) -> list[int]:
    buckets, bs = [], 1
    while bs < max_batch_size:
        buckets.append(bs)
        bs *= 2
    return buckets + [max_batch_size]


def pad_meta(meta: torch.Tensor, size: int) -> torch.Tensor:
    """[6, B] decode metadata -> [6, size] with padding columns appended."""
    pad = torch.tensor(PAD_COLUMN, dtype=meta.dtype).unsqueeze(1).expand(len(PAD_COLUMN), size - meta.shape[1])
    return torch.cat([meta, pad], dim=1)


class DecodeGraphs:
    def __init__(self, model: EngineSpeechLM, sampler: Sampler, kv: KVCache, cos_sin: torch.Tensor,
                 max_batch_size: int):
        device = cos_sin.device
        self.buckets = graph_buckets(max_batch_size)
        self.max_batch_size = max_batch_size
        # static inputs every graph reads a prefix of; the metadata starts as padding, so warm-up and capture
        # touch no KV; sampling rows of padding are never read back
        self.meta = pad_meta(torch.zeros(len(PAD_COLUMN), 0, dtype=torch.int64), max_batch_size).to(device)
        self.sampling = torch.zeros(max_batch_size, 4 + sampler.cfg.win_size, dtype=torch.int64, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...]]] = {}

        def step(bs: int):
            logits = model(ForwardInputs.decode(self.meta[:, :bs]), kv, cos_sin)
            return (logits, *sampler.first_attempt(logits, self.sampling[:bs]))

        pool = None
        for bs in reversed(self.buckets):
            step(bs)  # compiles the Triton kernels for this shape outside the capture
            torch.cuda.synchronize(device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                outputs = step(bs)
            pool = graph.pool() if pool is None else pool
            self.graphs[bs] = (graph, outputs)
        torch.cuda.synchronize(device)

    def can_run(self, batch_size: int) -> bool:
        return batch_size <= self.max_batch_size

    def run(self, meta: torch.Tensor, sampling: torch.Tensor):
        """Replay the smallest bucket holding the batch of [6, B] metadata and [B, 4 + win] sampling inputs (host
        tensors); returns logits [B, V], ids, fallback bans, scores and the device sampling inputs (graph views)."""
        bs = meta.shape[1]
        bucket = next(b for b in self.buckets if b >= bs)
        self.meta[:, :bucket].copy_(pad_meta(meta, bucket), non_blocking=True)
        self.sampling[:bs].copy_(sampling, non_blocking=True)
        graph, outputs = self.graphs[bucket]
        graph.replay()
        return (*(t[:bs] for t in outputs), self.sampling[:bs])
