"""Speech-token sampling: upstream RAS (nucleus + repetition fallback) with a per-request RNG, and greedy for parity.

Semantics follow upstream CosyVoice (ace7c47) `ras_sampling` inside `Qwen2LM.sampling_ids`:

1. nucleus draw: probabilities sorted descending (stable, so ties keep the lower id first); a candidate is kept while
   the float32 mass of the candidates before it is < top_p and fewer than top_k are kept (so the candidate that
   crosses top_p is still kept); draw one of them in proportion to its probability.
2. repetition fallback: if the drawn id occurs >= win_size * tau_r times in the last win_size decoded tokens, its score
   is set to -inf and one id is drawn from the full remaining distribution (specials included).
3. rejection: while the caller forbids special ids (upstream `ignore_eos`: before min_len, and in bistream text
   phases), a result >= `reject_from` is thrown away and steps 1-2 are repeated on the same scores (a banned id stays
   banned), at most MAX_TRIALS + 1 attempts.

Randomness is counter-based, the contract the batched GPU sampler (light_tts/llm/sampler.py) keeps too: attempt a
of decode step s (s = ids decoded so far, fills included) of a request takes the two uniforms
`counter_uniforms(seed, s, a)`, u0 for the nucleus draw and u1 for the fallback draw (unused when the fallback does
not fire). They depend only on (seed, step, attempt), so a request samples the same tokens alone, in any batch, after
a preemption, offline or in the server. A draw picks the first index whose inclusive cumulative weight exceeds
`u * total` (inverse CDF over the unnormalised weights, in float32). Upstream uses `torch.multinomial` on the global
RNG instead; distributions are the same, individual draws are not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from light_tts.model_config import RASConfig

MAX_TRIALS = 100
UNIFORM_BITS = 24  # float32 holds them exactly


def counter_uniform_bits(seeds: np.ndarray, steps: np.ndarray, attempt: int, num_attempts: int = 1) -> np.ndarray:
    """[B] uint64 seeds and steps -> [B, 2 * num_attempts] int64 in [0, 2^24): splitmix64 of (seed, step, attempt,
    draw) for attempts attempt .. attempt + num_attempts - 1, two draws each, in that order (one hash of them all)."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps around, as the hash intends
        draw_idx = np.arange(2 * attempt, 2 * (attempt + num_attempts), dtype=np.uint64)
        counter = steps[:, None] * np.uint64(2 * (MAX_TRIALS + 1)) + draw_idx  # [B, 2 * num_attempts]
        z = seeds[:, None] * np.uint64(0x9E3779B97F4A7C15) + counter + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(64 - UNIFORM_BITS)).astype(np.int64)


def counter_uniforms(seeds: np.ndarray, steps: np.ndarray, attempt: int) -> torch.Tensor:
    """[B, 2] float32 uniforms in [0, 1)."""
    return torch.from_numpy(counter_uniform_bits(seeds, steps, attempt)).float() / (1 << UNIFORM_BITS)


def seed_array(seeds: Sequence[int]) -> np.ndarray:
    """Python ints (any sign or size) -> uint64 seeds for the counter hash."""
    return np.array([s & (2**64 - 1) for s in seeds], dtype=np.uint64)


class Sampler(Protocol):
    def sample(self, logprobs: torch.Tensor, decoded_tokens: Sequence[int], reject_from: int | None = None) -> int:
        """Pick the next id from (V,) log-probs; ids >= reject_from (when given) are never returned."""
        ...


def nucleus(probs: torch.Tensor, top_p: float, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., V) probabilities -> (..., K) candidate weights (zero where not kept) and their ids, K = min(top_k, V)."""
    sorted_probs, sorted_ids = probs.sort(dim=-1, descending=True, stable=True)
    sorted_probs, sorted_ids = sorted_probs[..., :top_k], sorted_ids[..., :top_k]
    # sequential float32 sum, as upstream accumulates it (torch.cumsum rounds differently at the top_p boundary)
    keep = torch.zeros_like(sorted_probs, dtype=torch.bool)
    mass_before = torch.zeros_like(sorted_probs[..., 0])
    for j in range(sorted_probs.size(-1)):
        keep[..., j] = mass_before < top_p
        mass_before = mass_before + sorted_probs[..., j]
    return sorted_probs * keep, sorted_ids


def draw(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: (..., K) non-negative weights, (...) uniforms in [0, 1) -> (...) indices into K."""
    cdf = weights.float().cumsum(dim=-1)
    target = (u.float() * cdf[..., -1]).unsqueeze(-1)
    # searching only the K - 1 inner boundaries keeps the index in range without a clamp
    return torch.searchsorted(cdf[..., :-1].contiguous(), target, right=True).squeeze(-1)


def count_in_window(decoded_tokens: Sequence[int], token: int, win_size: int) -> int:
    return sum(1 for t in decoded_tokens[-win_size:] if t == token)


class RASSampler:
    """Repetition-aware sampling for one request; its tokens depend only on the seed and the scores."""

    def __init__(self, cfg: RASConfig, seed: int):
        self.cfg = cfg
        self.seed = seed_array([seed])

    def sample(self, logprobs: torch.Tensor, decoded_tokens: Sequence[int], reject_from: int | None = None) -> int:
        scores = logprobs.detach().float().cpu().clone()  # the fallback bans ids in place, as upstream does
        step = np.array([len(decoded_tokens)], dtype=np.uint64)
        for attempt in range(MAX_TRIALS + 1):
            token = self._attempt(scores, decoded_tokens, counter_uniforms(self.seed, step, attempt)[0])
            if reject_from is None or token < reject_from:
                return token
        raise RuntimeError(f"sampling drew only ids >= {reject_from} in {MAX_TRIALS + 1} attempts")

    def _attempt(self, scores: torch.Tensor, decoded_tokens: Sequence[int], u: torch.Tensor) -> int:
        weights, ids = nucleus(scores.softmax(dim=0), self.cfg.top_p, self.cfg.top_k)
        token = int(ids[draw(weights, u[0])])
        if count_in_window(decoded_tokens, token, self.cfg.win_size) >= self.cfg.win_size * self.cfg.tau_r:
            scores[token] = -float("inf")
            token = int(draw(scores.softmax(dim=0), u[1]))
        return token


class GreedySampler:
    """Argmax over the allowed ids (ties go to the lowest id); the parity fixtures were decoded this way."""

    def sample(self, logprobs: torch.Tensor, decoded_tokens: Sequence[int], reject_from: int | None = None) -> int:
        allowed = logprobs if reject_from is None else logprobs[:reject_from]
        return int(allowed.argmax())
