"""Temperature / top-p / repetition-penalty sampling on the device (Orpheus), for a batch (NucleusSampler, the model
runner's device sampler) and for one request (sample_one, the offline pipeline's): the same algorithm
(kernels/llm/nucleus_sampling.py) on the same uniforms, so a request samples the same ids alone, in any batch, offline
or served.

Randomness is counter-based as in sampler.py: round r of decode step s (s = ids decoded so far) uses uniform r of
counter_uniform_bits(seed, s, a) for a = 0 .. NUM_ROUNDS / 2 - 1, hashed on the host in one call.
The penalty applies to every id the request generated so far (not its prompt: voxserve's rule; vLLM also counts
the prompt, whose text ids the model does not sample). Those ids live on the device, in `seen` [req_to_token rows,
logit columns]: a prefill rewrites its requests' rows from their decoded ids (after a preemption too); each decode step
marks its input id (the previously sampled one) inside the sampling graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from light_tts.kernels.llm import ops
from light_tts.kernels.llm.nucleus_sampling import NUM_META, NUM_ROUNDS, nucleus_sample_ref
from light_tts.llm.prompt_layout import PromptLayout
from light_tts.llm.request import Sequence
from light_tts.model_config import NucleusConfig
from light_tts.sampling import counter_uniform_bits, seed_array


def uniform_columns(seeds: list[int], steps: list[int]) -> np.ndarray:
    """[B, NUM_ROUNDS] 24-bit uniforms of the rounds of each request's step."""
    seeds_np, steps_np = seed_array(seeds), np.array(steps, dtype=np.uint64)
    return counter_uniform_bits(seeds_np, steps_np, 0, NUM_ROUNDS // 2)


def pack_rows(
    rows: list[int],
    decoded: list[list[int]],
    ranges: list[tuple[int, int]],
    is_greedy: list[bool],
    seeds: list[int],
    first: int = 0,
) -> torch.Tensor:
    """Host int64 [B, NUM_META + NUM_ROUNDS]: row, last decoded id (-1: none), lo, hi, is_greedy, uniforms; the ids
    and the range in logit columns (id - first: the logits start at id `first`)."""
    meta = np.array(
        [
            [row, ids[-1] - first if ids else -1, lo - first, hi - first, greedy]
            for row, ids, (lo, hi), greedy in zip(rows, decoded, ranges, is_greedy)
        ],
        dtype=np.int64,
    )
    uniforms = uniform_columns(seeds, [len(ids) for ids in decoded])
    return torch.from_numpy(np.concatenate([meta.reshape(len(rows), NUM_META), uniforms], axis=1))


@dataclass
class NucleusInputs:
    packed: torch.Tensor  # [B, NUM_META + NUM_ROUNDS], on the host until the runner moves it


class NucleusSampler:
    """The model runner's device sampler (interface: sampler.Sampler's docstring)."""

    def __init__(self, cfg: NucleusConfig, layout: PromptLayout, num_rows: int, device: torch.device | str):
        self.cfg, self.layout, self.num_rows, self.device = cfg, layout, num_rows, torch.device(device)
        self.num_columns = NUM_META + NUM_ROUNDS
        # the logits are those of the ids [first, end) (the head's logit_range); on the device everything is in
        # their columns (packed ids, `seen`), and finish() turns the drawn columns back into ids
        self.first, end = layout.sampled_range()
        self.width = end - self.first
        # padding rows of a CUDA graph: the sentinel row, no last id, greedy over column 0 (one pass, no state)
        self.pad_row = [0, -1, 0, 1, 1] + [0] * NUM_ROUNDS
        self.seen: torch.Tensor | None = None
        self.reload()

    def reload(self) -> None:
        self.seen = torch.zeros(self.num_rows, self.width, dtype=torch.bool, device=self.device)
        self.true = torch.ones((), dtype=torch.bool, device=self.device)  # the value the sampling graph writes

    def release(self) -> None:
        self.seen = None

    def pack(self, seqs: list[Sequence]) -> NucleusInputs:
        return NucleusInputs(
            pack_rows(
                [s.row for s in seqs],
                [s.decoded for s in seqs],
                [self.layout.allowed_range(s) for s in seqs],
                [s.req.greedy for s in seqs],
                [s.req.seed for s in seqs],
                self.first,
            )
        )

    def before_step(self, batch) -> None:
        """A prefill (first, or after a preemption) sets its rows of `seen` to the ids decoded so far."""
        if not batch.is_prefill:
            return
        rows = torch.tensor([s.row for s in batch.seqs], device=self.device)
        self.seen.index_fill_(0, rows, False)
        decoded_rows = [s.row for s in batch.seqs for _ in s.decoded]
        if decoded_rows:
            ids = [t - self.first for s in batch.seqs for t in s.decoded]
            self.seen[torch.tensor(decoded_rows, device=self.device), torch.tensor(ids, device=self.device)] = True

    def first_attempt(self, logits: torch.Tensor, packed: torch.Tensor) -> tuple[torch.Tensor]:
        """Device only (CUDA-graph capturable): mark each row's last id as seen, then sample."""
        last = packed[:, 1]
        has_last = last >= 0
        # rows without a last id (a prefill) write into the sentinel row 0 instead, which no request reads
        self.seen.index_put_((torch.where(has_last, packed[:, 0], 0), last.clamp(min=0)), self.true)
        c = self.cfg
        assert logits.shape[1] == self.width, "the head must score the layout's sampled_range"
        return (ops.nucleus_sample(logits, packed, self.seen, c.temperature, c.top_p, c.repetition_penalty),)

    def finish(self, ids: torch.Tensor, inputs: NucleusInputs) -> list[int]:
        return [self.first + i for i in ids.tolist()]


def sample_one(
    cfg: NucleusConfig,
    logits: torch.Tensor,
    decoded: list[int],
    allowed: tuple[int, int],
    seed: int,
    greedy: bool = False,
    first: int = 0,
) -> int:
    """The id one request samples at this step (the offline pipeline's sampler) from its logits of the ids from
    `first` on (the engine's head scores the layout's sampled_range; decoded ids and allowed are ids)."""
    seen = torch.zeros(2, logits.shape[-1], dtype=torch.bool)
    seen[1, [t - first for t in decoded]] = True
    packed = pack_rows([1], [decoded], [allowed], [greedy], [seed], first)
    scores = logits.float().reshape(1, -1).cpu()
    return first + int(nucleus_sample_ref(scores, packed, seen, cfg.temperature, cfg.top_p, cfg.repetition_penalty)[0])
