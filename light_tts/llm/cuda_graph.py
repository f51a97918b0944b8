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

from light_tts.kernels.cuda_graphs import record_graph
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


PREFILL_BUCKETS = (16, 32, 64, 128, 256, 512)  # new tokens of a prefill, all its requests together
PREFILL_SEQ_BUCKETS = (1, 2, 4, 8)  # requests of a prefill


class PrefillGraphs:
    """CUDA graphs of the prefill forward, one per (requests bucket, token bucket) up to max_seqs requests and
    max_tokens new tokens in all, sharing one memory pool.

    A prefill is bound by its ~12 launches a layer from Python (8.8 ms for CosyVoice2's 24 layers at any prompt
    up to 300 tokens, 21-29 ms for Orpheus' 28 on an H100), not by the device: a replay is one launch. It is what
    a stream's first audio waits on at low load, and a burst of them what holds decode steps back under load.
    A prefill is padded to its buckets: padding tokens have slot -1 (their keys and values are not stored) and
    belong to no request (attention reads and writes nothing for them); padding requests have length 0 in the
    sentinel row 0, and their logits are not read. The inputs go in one copy from a pinned host buffer: ids,
    positions and slots of the token bucket, then each request's row, start, length and cached length, then its
    last token's index. Larger prefills run eagerly."""

    def __init__(
        self,
        model: EngineSpeechLM,
        kv: KVCache,
        cos_sin: torch.Tensor,
        max_tokens: int,
        max_seqs: int = PREFILL_SEQ_BUCKETS[-1],
        record=None,
    ):
        """record: kernels/cuda_graphs.record_graph's signature (the default); tests pass an eager stand-in."""
        self.buckets = [b for b in PREFILL_BUCKETS if b <= max_tokens]
        self.seq_buckets = [b for b in PREFILL_SEQ_BUCKETS if b <= max_seqs]
        w = self.width = self.buckets[-1] if self.buckets else 0
        s = self.max_seqs = self.seq_buckets[-1] if self.buckets and self.seq_buckets else 0
        self.host = torch.zeros(3 * w + 5 * s, dtype=torch.int64)
        self.host[2 * w : 3 * w] = -1  # padding slots
        if cos_sin.device.type == "cuda":
            self.host = self.host.pin_memory()
        self.host_np = self.host.numpy()
        self.inputs = self.host.to(cos_sin.device)
        self.graphs: dict[tuple[int, int], tuple] = {}  # (requests bucket, token bucket) -> (replay, logits)
        self.num_replays = 0
        pool = None
        for seqs in reversed(self.seq_buckets):
            for tokens in reversed(self.buckets):

                def forward(seqs=seqs, tokens=tokens) -> torch.Tensor:
                    return model(self._forward_inputs(seqs, tokens), kv, cos_sin)

                replay, logits, pool = (record or record_graph)(forward, pool)
                self.graphs[(seqs, tokens)] = (replay, logits)

    def _forward_inputs(self, seqs: int, tokens: int) -> ForwardInputs:
        w, s, buf = self.width, self.max_seqs, self.inputs
        meta = buf[3 * w : 3 * w + 4 * s].view(4, s)[:, :seqs].to(torch.int32)  # rows, starts, lengths, cached
        return ForwardInputs(
            input_ids=buf[:tokens],
            positions=buf[w : w + tokens],
            slot_mapping=buf[2 * w : 2 * w + tokens],
            b_req_idx=meta[0],
            b_seq_len=meta[2],
            is_prefill=True,
            b_start_loc=meta[1],
            b_prefix_len=meta[3],
            last_token_idx=buf[3 * w + 4 * s : 3 * w + 4 * s + seqs],
            max_new_len=tokens,
        )

    def can_run(self, rows: list[tuple[list[int], list[int], int, int]]) -> bool:
        num_new = sum(len(new_ids) for new_ids, *_ in rows)
        return 0 < len(rows) <= self.max_seqs and 0 < num_new <= self.width

    def forward(self, rows: list[tuple[list[int], list[int], int, int]]) -> torch.Tensor:
        """Launch the prefill of rows (each request's new ids, the slots of its whole sequence, its req_to_token
        row, its tokens already cached); returns their logits [len(rows), V] (graph outputs, valid until the next
        replay)."""
        w, s, host = self.width, self.max_seqs, self.host_np
        num_new = sum(len(new_ids) for new_ids, *_ in rows)
        tokens = next(b for b in self.buckets if b >= num_new)
        seqs = next(b for b in self.seq_buckets if b >= len(rows))
        meta, last = host[3 * w : 3 * w + 4 * s].reshape(4, s), host[3 * w + 4 * s : 3 * w + 5 * s]
        start = 0
        for r, (new_ids, slots, row, num_cached) in enumerate(rows):
            end = start + len(new_ids)
            host[start:end], host[w + start : w + end] = new_ids, np.arange(num_cached, len(slots))
            host[2 * w + start : 2 * w + end] = slots[num_cached:]
            meta[:, r], last[r] = (row, start, len(slots), num_cached), end - 1
            start = end
        host[start:tokens], host[w + start : w + tokens], host[2 * w + start : 2 * w + tokens] = 0, 0, -1
        meta[:, len(rows) : seqs], last[len(rows) : seqs] = 0, 0
        self.inputs.copy_(self.host, non_blocking=True)
        replay, logits = self.graphs[(seqs, tokens)]
        replay()
        self.num_replays += 1
        return logits[: len(rows)]
