"""CUDA graphs of the decode step, one pair per batch bucket (the forward, then the first sampling attempt), sharing
one memory pool and pinned host / device input buffers.

The step is split in two graphs so the host builds the sampling inputs while the forward graph runs: run the
forward (meta copied from a pinned buffer, one copy), then pack the sampling inputs, copy them and run the
sampling graph, which the stream orders after the forward.
Buckets are 1, 2, 4, 8, ... up to graph_max_batch_size (which is a bucket too), captured largest first so the
smaller graphs reuse the pool. A batch is padded up to its bucket with columns that point at the sentinel
req_to_token row 0 with seq_len 0 and slot -1: attention reads nothing for them and the KV store drops them.
Batches above the largest bucket run eagerly.
"""

from __future__ import annotations

import numpy as np
import torch

from light_tts.decode.flow.flow_runner import record_graph
from light_tts.llm.model import PAD_COLUMN, EngineSpeechLM, ForwardInputs, KVCache
from light_tts.llm.sampler import Sampler

PAD = np.array(PAD_COLUMN, dtype=np.int64)[:, None]  # [6, 1]


def graph_buckets(max_batch_size: int) -> list[int]:
    buckets, bs = [], 1
    while bs < max_batch_size:
        buckets.append(bs)
        bs *= 2
    return buckets + [max_batch_size]


class DecodeGraphs:
    def __init__(
        self, model: EngineSpeechLM, sampler: Sampler, kv: KVCache, cos_sin: torch.Tensor, max_batch_size: int
    ):
        device = cos_sin.device
        self.buckets = graph_buckets(max_batch_size)
        self.max_batch_size = max_batch_size
        # static inputs every graph reads a prefix of; the metadata starts as padding, so warm-up and capture
        # touch no KV; sampling rows of padding are never read back. Host twins are pinned: the copies are async
        # and each step's sync (the host copy of its ids) comes before the next step rewrites them.
        self.host_meta = torch.from_numpy(np.repeat(PAD, max_batch_size, axis=1)).pin_memory()  # [6, max_bs]
        self.host_meta_np = self.host_meta.numpy()
        self.meta = self.host_meta.to(device)
        # sampling rows past the batch are the sampler's padding row (cheap, and touching no request's state)
        self.pad_sampling = torch.tensor(sampler.pad_row, dtype=torch.int64)
        self.host_sampling = self.pad_sampling.repeat(max_batch_size, 1).pin_memory()
        self.sampling = self.host_sampling.to(device)
        self.forward_graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.sample_graphs: dict[int, tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...]]] = {}

        def forward(bs: int) -> torch.Tensor:
            return model(ForwardInputs.decode(self.meta[:, :bs]), kv, cos_sin)

        pool = None
        for bs in reversed(self.buckets):
            sampler.first_attempt(forward(bs), self.sampling[:bs])  # compiles the Triton kernels outside capture
            torch.cuda.synchronize(device)
            forward_graph, sample_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
            with torch.cuda.graph(forward_graph, pool=pool):
                logits = forward(bs)
            pool = forward_graph.pool() if pool is None else pool
            with torch.cuda.graph(sample_graph, pool=pool):
                outputs = sampler.first_attempt(logits, self.sampling[:bs])
            self.forward_graphs[bs] = (forward_graph, logits)
            self.sample_graphs[bs] = (sample_graph, outputs)
        torch.cuda.synchronize(device)

    def can_run(self, batch_size: int) -> bool:
        return batch_size <= self.max_batch_size

    def bucket(self, batch_size: int) -> int:
        return next(b for b in self.buckets if b >= batch_size)

    def forward(self, meta: list[list[int]]) -> torch.Tensor:
        """Launch the forward of a batch given its 6 metadata rows of B ints (ForwardInputs.decode); returns
        logits [B, V] (a graph output, valid until the next replay)."""
        bs = len(meta[0])
        bucket = self.bucket(bs)
        self.host_meta_np[:, :bs] = meta
        self.host_meta_np[:, bs:bucket] = PAD
        self.meta.copy_(self.host_meta, non_blocking=True)
        graph, logits = self.forward_graphs[bucket]
        graph.replay()
        return logits[:bs]

    def sample(self, packed: torch.Tensor):
        """Launch the first sampling attempt after forward() of the same batch, with its [B, num_columns] host
        sampling inputs; returns the sampler's outputs and the device sampling inputs (graph views)."""
        bs = packed.shape[0]
        bucket = self.bucket(bs)
        self.host_sampling[:bs].copy_(packed)
        self.host_sampling[bs:bucket] = self.pad_sampling
        self.sampling[:bucket].copy_(self.host_sampling[:bucket], non_blocking=True)
        graph, outputs = self.sample_graphs[bucket]
        graph.replay()
        return (*(t[:bs] for t in outputs), self.sampling[:bs])

    def replay(self, batch_size: int) -> None:
        """Both graphs of a bucket with the inputs already in place (the benchmark's GPU time of a step)."""
        self.forward_graphs[self.bucket(batch_size)][0].replay()
        self.sample_graphs[self.bucket(batch_size)][0].replay()


PREFILL_BUCKETS = (16, 32, 64, 128, 256, 512)


class PrefillGraphs:
    """CUDA graphs of one request's prefill forward, one per token bucket up to max_tokens, sharing one memory pool.

    A prefill is bound by its ~12 launches a layer from Python (8.8 ms for CosyVoice2's 24 layers at any prompt
    up to 300 tokens, 21-29 ms for Orpheus' 28 on an H100), not by the device: a replay is one launch. A single
    request's prefill (what a stream's first audio waits on at low load) is padded to its bucket: padding tokens
    have slot -1 (their keys and values are not stored), belong to no sequence (attention reads and writes nothing
    for them) and are not read back (only the last real token's logits are). Their inputs go in one copy from a
    pinned host buffer: ids, positions and slots of the bucket's tokens, then the row, start, length, cached length
    and last-token index. Batches of several requests, or longer prompts, run eagerly."""

    def __init__(self, model: EngineSpeechLM, kv: KVCache, cos_sin: torch.Tensor, max_tokens: int, record=None):
        """record: flow_runner.record_graph's signature (the default); tests pass an eager stand-in."""
        self.buckets = [b for b in PREFILL_BUCKETS if b <= max_tokens]
        width = self.width = self.buckets[-1] if self.buckets else 0
        self.host = torch.zeros(3 * width + 5, dtype=torch.int64)
        self.host[2 * width : 3 * width] = -1  # padding slots
        if cos_sin.device.type == "cuda":
            self.host = self.host.pin_memory()
        self.host_np = self.host.numpy()
        self.inputs = self.host.to(cos_sin.device)
        self.graphs: dict[int, tuple] = {}  # bucket -> (replay, logits)
        self.num_replays = 0
        pool = None
        for bucket in reversed(self.buckets):

            def forward(bucket=bucket) -> torch.Tensor:
                return model(self._forward_inputs(bucket), kv, cos_sin)

            replay, logits, pool = (record or record_graph)(forward, pool)
            self.graphs[bucket] = (replay, logits)

    def _forward_inputs(self, bucket: int) -> ForwardInputs:
        w, buf = self.width, self.inputs
        meta = buf[3 * w : 3 * w + 4].to(torch.int32)  # row, start, seq_len, cached: converted inside the graph
        return ForwardInputs(
            input_ids=buf[:bucket],
            positions=buf[w : w + bucket],
            slot_mapping=buf[2 * w : 2 * w + bucket],
            b_req_idx=meta[0:1],
            b_seq_len=meta[2:3],
            is_prefill=True,
            b_start_loc=meta[1:2],
            b_prefix_len=meta[3:4],
            last_token_idx=buf[3 * w + 4 : 3 * w + 5],
            max_new_len=bucket,
        )

    def can_run(self, num_seqs: int, num_new_tokens: int) -> bool:
        return num_seqs == 1 and 0 < num_new_tokens <= self.width

    def forward(self, new_ids: list[int], slots: list[int], row: int, num_cached: int) -> torch.Tensor:
        """Launch one request's prefill (its new ids, the slots of its whole sequence, its req_to_token row, the
        tokens already cached); returns its logits [1, V] (a graph output, valid until the next replay)."""
        n, w, host = len(new_ids), self.width, self.host_np
        bucket = next(b for b in self.buckets if b >= n)
        seq_len = len(slots)
        host[:n], host[n:bucket] = new_ids, 0
        host[w : w + n], host[w + n : w + bucket] = np.arange(num_cached, seq_len), 0
        host[2 * w : 2 * w + n], host[2 * w + n : 2 * w + bucket] = slots[num_cached:], -1
        host[3 * w : 3 * w + 5] = (row, 0, seq_len, num_cached, n - 1)
        self.inputs.copy_(self.host, non_blocking=True)
        replay, logits = self.graphs[bucket]
        replay()
        self.num_replays += 1
        return logits
