"""The first RAS attempt of a decode step for a whole batch in one launch (light_tts/llm/sampler.py states the
semantics): nucleus draw from the top-k / top-p candidates, repetition fallback over the full distribution, greedy
argmax where asked. Triton kernel, launcher, torch reference (which the sampler also uses for redone attempts).

packed rows are SamplingInputs.packed: is_rejecting, is_greedy, two 24-bit uniforms, then the recent-id window.
"""

import torch
import triton
import triton.language as tl

from light_tts.sampling import UNIFORM_BITS, draw


@triton.jit
def _ras_first_attempt_kernel(
    scores_ptr,
    packed_ptr,
    ids_ptr,
    banned_ptr,
    stride_scores,
    stride_packed,
    vocab,
    reject_from,
    top_p,
    min_repeats,
    TOP_K: tl.constexpr,
    BLOCK_K: tl.constexpr,
    WIN: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_V: tl.constexpr,
    UNIFORM_SCALE: tl.constexpr,
):
    # one program samples one row; every step is a reduction over the row held in registers
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_V)
    in_vocab = cols < vocab
    scores = tl.load(scores_ptr + row * stride_scores + cols, mask=in_vocab, other=float("-inf"))
    is_rejecting = tl.load(packed_ptr + row * stride_packed) != 0
    is_greedy = tl.load(packed_ptr + row * stride_packed + 1) != 0
    u0 = tl.load(packed_ptr + row * stride_packed + 2).to(tl.float32) * UNIFORM_SCALE
    u1 = tl.load(packed_ptr + row * stride_packed + 3).to(tl.float32) * UNIFORM_SCALE

    e = tl.exp(scores - tl.max(scores, axis=0))
    probs = e / tl.sum(e, axis=0)
    # top-k by repeated arg-max; ties go to the lower id, as a stable descending sort orders them
    k_idx = tl.arange(0, BLOCK_K)
    top_probs = tl.zeros((BLOCK_K,), tl.float32)
    top_ids = tl.zeros((BLOCK_K,), tl.int32)
    remaining = tl.where(in_vocab, probs, -1.0)
    for j in range(TOP_K):
        best_p, best = tl.max(remaining, axis=0, return_indices=True)
        top_probs = tl.where(k_idx == j, best_p, top_probs)
        top_ids = tl.where(k_idx == j, best, top_ids)
        remaining = tl.where(cols == best, -1.0, remaining)
    # the candidate crossing top_p is still kept; inverse-CDF draw over the K - 1 inner boundaries
    mass_before = tl.cumsum(top_probs, axis=0) - top_probs
    cdf = tl.cumsum(tl.where(mass_before < top_p, top_probs, 0.0), axis=0)
    target = u0 * tl.sum(tl.where(k_idx == TOP_K - 1, cdf, 0.0), axis=0)
    pick = tl.sum(((cdf <= target) & (k_idx < TOP_K - 1)).to(tl.int32), axis=0)
    nucleus_id = tl.sum(tl.where(k_idx == pick, top_ids, 0), axis=0)

    w = tl.arange(0, BLOCK_W)
    window = tl.load(packed_ptr + row * stride_packed + 4 + w, mask=w < WIN, other=-1)
    is_repeat = tl.sum((window == nucleus_id).to(tl.float32), axis=0) >= min_repeats
    # fallback: the nucleus id banned, one id drawn from the whole remaining distribution
    fallback_scores = tl.where(cols == nucleus_id, float("-inf"), scores)
    fe = tl.exp(fallback_scores - tl.max(fallback_scores, axis=0))
    full_cdf = tl.cumsum(fe / tl.sum(fe, axis=0), axis=0)
    full_target = u1 * tl.sum(tl.where(cols == vocab - 1, full_cdf, 0.0), axis=0)
    fallback_id = tl.sum(((full_cdf <= full_target) & (cols < vocab - 1)).to(tl.int32), axis=0)

    greedy_id = tl.argmax(tl.where(is_rejecting & (cols >= reject_from), float("-inf"), scores), axis=0)
    ras_id = tl.where(is_repeat, fallback_id, nucleus_id)
    tl.store(ids_ptr + row, tl.where(is_greedy, greedy_id, ras_id).to(tl.int64))
    tl.store(banned_ptr + row, tl.where(is_repeat, nucleus_id, -1).to(tl.int64))


def ras_first_attempt_triton(
    scores: torch.Tensor, packed: torch.Tensor, top_k: int, top_p: float, min_repeats: float, reject_from: int
) -> tuple[torch.Tensor, torch.Tensor]:
    assert scores.dim() == 2 and scores.dtype == torch.float32 and scores.stride(1) == 1
    batch, vocab = scores.shape
    assert packed.dim() == 2 and packed.shape[0] == batch and packed.dtype == torch.int64 and packed.stride(1) == 1
    assert 1 <= top_k <= vocab
    ids = torch.empty(batch, dtype=torch.int64, device=scores.device)
    banned = torch.empty_like(ids)
    if batch == 0:
        return ids, banned
    win = packed.shape[1] - 4
    _ras_first_attempt_kernel[(batch,)](
        scores,
        packed,
        ids,
        banned,
        scores.stride(0),
        packed.stride(0),
        vocab,
        reject_from,
        top_p,
        min_repeats,
        TOP_K=top_k,
        BLOCK_K=triton.next_power_of_2(top_k),
        WIN=win,
        BLOCK_W=triton.next_power_of_2(max(win, 1)),
        BLOCK_V=triton.next_power_of_2(vocab),
        UNIFORM_SCALE=1.0 / (1 << UNIFORM_BITS),
        num_warps=8,
    )
    return ids, banned


def ras_attempt_ref(
    scores: torch.Tensor, window: torch.Tensor, u: torch.Tensor, top_k: int, top_p: float, min_repeats: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One RAS attempt on [B, V] log-probs, [B, win] recent ids, [B, 2] uniforms: (ids [B], id banned by the
    fallback or -1 [B])."""
    # top-k by value; the reference's stable sort differs only on exactly equal probabilities
    top_probs, top_ids = scores.softmax(dim=-1).topk(top_k, dim=-1)
    mass_before = top_probs.cumsum(dim=-1) - top_probs  # the candidate crossing top_p is still kept
    weights = top_probs * (mass_before < top_p)
    nucleus_ids = top_ids.gather(1, draw(weights, u[:, 0]).unsqueeze(1))  # [B, 1]
    is_repeat = (window == nucleus_ids).sum(dim=-1) >= min_repeats
    fallback_ids = draw(scores.scatter(1, nucleus_ids, float("-inf")).softmax(dim=-1), u[:, 1])
    nucleus_ids = nucleus_ids.squeeze(1)
    ids = torch.where(is_repeat, fallback_ids, nucleus_ids)
    return ids, torch.where(is_repeat, nucleus_ids, -1)


def ras_first_attempt_ref(
    scores: torch.Tensor, packed: torch.Tensor, top_k: int, top_p: float, min_repeats: float, reject_from: int
) -> tuple[torch.Tensor, torch.Tensor]:
    u = packed[:, 2:4].float() / (1 << UNIFORM_BITS)
    ids, banned = ras_attempt_ref(scores, packed[:, 4:], u, top_k, top_p, min_repeats)
    is_rejecting, is_greedy = packed[:, 0].bool(), packed[:, 1].bool()
    greedy_ids = torch.where(is_rejecting, scores[:, :reject_from].argmax(dim=-1), scores.argmax(dim=-1))
    return torch.where(is_greedy, greedy_ids, ids), banned
