"""Batched speech-token sampling on the device: RAS (light_tts/sampling.py semantics) or greedy, per request.

Randomness is counter-based: the uniforms of a request depend only on (seed, step, attempt), never on the batch
or on other requests, so a request decodes the same tokens alone or in any batch, after a preemption too. They are
hashed on the host (numpy uint64, whose wrap-around is defined) and travel with the step's inputs, so the device
part is a short fixed sequence of kernels that a CUDA graph holds.
Draw order (the contract of light_tts/sampling.py): each attempt takes two uniforms, u0 for the nucleus draw and
u1 for the repetition fallback; attempt a of decode step s (s = ids decoded so far, fills included) uses
counter_uniforms(seed, s, a), as the reference RASSampler does, so both pick the same ids for the same seed.
A rejected attempt (an id >= eos while the request forbids specials) is rare; it is redone on the host-known rows
only, with the fallback's banned ids kept banned, as the reference does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from light_tts.kernels.llm import ops
from light_tts.kernels.llm.ras_sampling import ras_attempt_ref
from light_tts.llm.request import Sequence, recent_window
from light_tts.model_config import RASConfig
from light_tts.sampling import MAX_TRIALS, counter_uniform_bits, counter_uniforms, seed_array

EVERY_STOP = 2  # packed column 0 of a row that must not stop at all now (a fixed length); 1: the MinLenRule applies


@dataclass
class SamplingInputs:
    """Per-step sampling state of a batch. `packed` is one int64 [B, 4 + win_size] device tensor: columns
    is_rejecting (the request forbids a stop now: 1, the MinLenRule applies; EVERY_STOP, a fixed length not reached:
    every stop id is forbidden too), is_greedy, the two attempt-0 uniforms as 24-bit ints,
    then the last win_size decoded ids (-1 padded). The host keeps seeds, steps and flags for redone attempts."""

    packed: torch.Tensor
    seeds: np.ndarray
    steps: np.ndarray
    is_rejecting_host: list[int]  # column 0 of packed (nonzero: the row rejects)
    is_greedy_host: list[bool]


def pack_sampling(
    seeds: list[int], steps: list[int], is_rejecting: list[int], is_greedy: list[bool], windows: list[list[int]]
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Host tensor [B, 4 + win_size] of SamplingInputs.packed, and the seeds and steps as uint64 arrays."""
    seeds_np = seed_array(seeds)
    steps_np = np.array(steps, dtype=np.uint64)
    flags = np.array([is_rejecting, is_greedy], dtype=np.int64).reshape(2, -1).T
    window = np.array(windows, dtype=np.int64).reshape(len(seeds), -1)
    bits = counter_uniform_bits(seeds_np, steps_np, 0)
    return torch.from_numpy(np.concatenate([flags, bits, window], axis=1)), seeds_np, steps_np


class Sampler:
    """The device sampler of the CosyVoice speech LMs. The model runner's interface of a device sampler: pack(seqs)
    (host inputs), before_step(batch), first_attempt(logits, packed) (device only, CUDA-graph capturable, returns a
    tuple), finish(*outputs, inputs) (the host ids), num_columns (of packed), pad_row (packed values of a CUDA
    graph's padding rows), release() / reload()."""

    def __init__(self, cfg: RASConfig, reject_from: int, masked_id: int | None = None, stop_from: int | None = None):
        """The family's MinLenRule, for the rows that forbid a stop now (is_rejecting): ids >= reject_from are
        drawn again (CosyVoice2: eos and the two ids after it; pass the vocabulary size for none), and masked_id
        (CosyVoice3's sos) gets -inf before the draw. stop_from (the first stop id): rows of a fixed length
        (EVERY_STOP) get the stop ids the rule lets through, [stop_from, reject_from), masked too."""
        self.cfg = cfg
        self.reject_from = reject_from
        self.masked_id = masked_id
        self.fixed_mask = (stop_from, reject_from) if stop_from is not None and reject_from > stop_from else None
        self.min_repeats = cfg.win_size * cfg.tau_r  # occurrences in the window that trigger the fallback
        self.num_columns = 4 + cfg.win_size
        self.pad_row = [0] * self.num_columns  # what a CUDA graph's padding rows sample with (read by no one)

    def pack(self, seqs: list[Sequence]) -> SamplingInputs:
        """Sampling inputs with `packed` still on the host (the caller moves it)."""
        is_rejecting = [EVERY_STOP if s.forbids_every_stop() else int(s.forbids_stop()) for s in seqs]
        is_greedy = [s.req.greedy for s in seqs]
        packed, seeds, steps = pack_sampling(
            [s.req.seed for s in seqs],
            [len(s.decoded) for s in seqs],
            is_rejecting,
            is_greedy,
            [recent_window(s, self.cfg.win_size) for s in seqs],
        )
        return SamplingInputs(packed, seeds, steps, is_rejecting, is_greedy)

    def before_step(self, batch) -> None:
        """RAS keeps no device state: its window travels in `packed`."""

    def release(self) -> None:
        pass

    def reload(self) -> None:
        pass

    def ras_attempt(self, scores: torch.Tensor, window: torch.Tensor, u: torch.Tensor):
        """One RAS attempt on [B, V] log-probs: (ids [B], id banned by the fallback or -1 [B])."""
        return ras_attempt_ref(scores, window, u, self.cfg.top_k, self.cfg.top_p, self.min_repeats)

    def first_attempt(self, logits: torch.Tensor, packed: torch.Tensor):
        """Device-only part (CUDA-graph capturable): [B, V] logits and packed inputs -> ids, fallback bans, scores.
        On CUDA the attempt is one fused kernel (ops.ras_first_attempt)."""
        scores = logits.log_softmax(dim=-1)
        if self.masked_id is not None:  # upstream masks the log-probs before RAS (greedy rows too)
            column = scores[:, self.masked_id]
            scores[:, self.masked_id] = torch.where(packed[:, 0] != 0, float("-inf"), column)
        if self.fixed_mask is not None:  # a fixed length: none of the stops the rule lets through either
            first, end = self.fixed_mask
            scores[:, first:end] = torch.where(packed[:, :1] == EVERY_STOP, float("-inf"), scores[:, first:end])
        ids, banned = ops.ras_first_attempt(
            scores, packed, self.cfg.top_k, self.cfg.top_p, self.min_repeats, self.reject_from
        )
        return ids, banned, scores

    def finish(self, ids: torch.Tensor, banned: torch.Tensor, scores: torch.Tensor, inp: SamplingInputs) -> list[int]:
        """Host ids (this is the step's device sync); rejected RAS draws are redone."""
        host_ids = ids.tolist()
        redo = [
            i
            for i, t in enumerate(host_ids)
            if t >= self.reject_from and inp.is_rejecting_host[i] and not inp.is_greedy_host[i]
        ]
        if redo:
            for i, t in zip(redo, self._redo(scores, banned, inp, redo)):
                host_ids[i] = t
        return host_ids

    def __call__(self, logits: torch.Tensor, inp: SamplingInputs) -> list[int]:
        return self.finish(*self.first_attempt(logits, inp.packed), inp)

    def _redo(self, scores: torch.Tensor, banned: torch.Tensor, inp: SamplingInputs, rows: list[int]) -> list[int]:
        """Further attempts for rows whose draw was rejected, on their own copy of the scores."""
        idx = torch.tensor(rows, device=scores.device)
        sub, sub_banned = scores.index_select(0, idx), banned.index_select(0, idx)
        window = inp.packed[:, 4:].index_select(0, idx)
        vocab = torch.arange(sub.shape[1], device=sub.device)
        result: list[int | None] = [None] * len(rows)
        for attempt in range(1, MAX_TRIALS + 1):
            sub = sub.masked_fill(vocab == sub_banned[:, None], float("-inf"))  # a ban of -1 matches no id
            u = counter_uniforms(inp.seeds[rows], inp.steps[rows], attempt).to(sub.device)
            ids, sub_banned = self.ras_attempt(sub, window, u)
            for j, t in enumerate(ids.tolist()):
                if result[j] is None and t < self.reject_from:
                    result[j] = t
            if all(r is not None for r in result):
                return result
        raise RuntimeError(f"sampling drew only ids >= {self.reject_from} in {MAX_TRIALS + 1} attempts")
