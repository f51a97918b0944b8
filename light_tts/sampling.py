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

Draw order (the contract a batched GPU sampler must keep to reproduce a seed): every attempt takes exactly two
float32 uniforms `u = torch.rand(2, generator=g)` from the request's own generator, `u[0]` for the nucleus draw and
`u[1]` for the fallback draw (unused when the fallback does not fire). A draw picks the first index whose inclusive
cumulative weight exceeds `u * total` (inverse CDF over the unnormalised weights, in float32). Upstream uses
`torch.multinomial` on the global RNG instead; distributions are the same, individual draws are not.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch

from light_tts.model_config import RASConfig

MAX_TRIALS = 100


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
    """Repetition-aware sampling for one request; its generator makes the tokens depend only on the seed."""

    def __init__(self, cfg: RASConfig, seed: int):
        self.cfg = cfg
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def sample(self, logprobs: torch.Tensor, decoded_tokens: Sequence[int], reject_from: int | None = None) -> int:
        scores = logprobs.detach().float().cpu().clone()  # the fallback bans ids in place, as upstream does
        for _ in range(MAX_TRIALS + 1):
            token = self._attempt(scores, decoded_tokens)
            if reject_from is None or token < reject_from:
                return token
        raise RuntimeError(f"sampling drew only ids >= {reject_from} in {MAX_TRIALS + 1} attempts")

    def _attempt(self, scores: torch.Tensor, decoded_tokens: Sequence[int]) -> int:
        u = torch.rand(2, generator=self.generator)
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
