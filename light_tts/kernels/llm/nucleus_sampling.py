"""Nucleus sampling with temperature and a repetition penalty for a whole batch in one launch (vLLM's order:
penalty, temperature, top-p), without sorting the vocabulary: Triton kernel, launcher, torch reference.

Per row b (packed[b] = seq row, last id, allowed lo, allowed hi, is_greedy, then NUM_ROUNDS 24-bit uniforms):
1. scores: the logits in [lo, hi) (-inf elsewhere); an id the request generated before (seen[row], or the last id)
   gets logit / penalty when positive, logit * penalty otherwise; then / temperature; w = exp(score - max).
2. top-p by rejection: draw an id from the eligible weights (w > low, at first all) by inverse CDF in id order with
   uniform u_r; it is in the nucleus iff the weight of the ids strictly more probable than it is < top_p * total.
   Accept it, or else no id at most as probable can be in the nucleus: low = its weight, draw again with u_{r+1}.
   The accepted id is distributed as top-p sampling's (the nucleus: the most probable ids whose mass before them
   stays under top_p; ids tied with the last one are all kept). The likeliest id is always accepted; after
   NUM_ROUNDS rejections (vanishingly rare: each rejection removes at least the drawn id and all below it) the
   likeliest id is taken.
3. greedy rows take the argmax of the raw logits in [lo, hi) (no penalty), the lowest id among ties.
One pass over [lo, hi) first (the maximum and the total, online), two per round (the draw, the mass above it): no
sort, no [B, V] temporaries. Each pass accumulates lane-wise and reduces across lanes once at its end; the draw scans
(cumsum) only the block its target falls in.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from light_tts.sampling import UNIFORM_BITS

NUM_META = 5  # packed columns before the uniforms
NUM_ROUNDS = 16
SCAN_SLACK = 1.001  # a block is scanned when its sum, so scaled, reaches the target


@dataclass(frozen=True)
class SampleLaunch:
    """Ids per block and warps of the one program per row (by default 4 ids a thread in each lane-wise accumulator;
    1,024 threads cap a thread at 64 registers, and sm_90 spills 8 B of them: bench/kernel_compile.py)."""

    block_v: int = 4096
    num_warps: int = 32


# `bench.kernels sweep` on an H100 (docs/performance.md): 4,096 ids x 32 warps 0.60 ms at 256 rows of 156,940 ids and
# 0.14 ms at one (2,048 x 8: 2.04 / 0.36 ms), the same ids: more loads in flight per pass iteration
SAMPLE_LAUNCH = SampleLaunch()


@triton.jit
def _scores(logits_row, seen_row, cols, lo, hi, last, temperature, penalty):
    """The transformed scores of ids `cols` (-inf outside [lo, hi))."""
    in_range = (cols >= lo) & (cols < hi)
    x = tl.load(logits_row + cols, mask=in_range, other=float("-inf"))
    is_seen = (tl.load(seen_row + cols, mask=in_range, other=0) != 0) | (cols == last)
    x = tl.where(is_seen, tl.where(x > 0, x / penalty, x * penalty), x)
    return x / temperature


@triton.jit
def _nucleus_kernel(
    logits_ptr,
    packed_ptr,
    seen_ptr,
    ids_ptr,
    stride_logits,
    stride_packed,
    stride_seen,
    vocab,
    temperature,
    penalty,
    top_p,
    NUM_META: tl.constexpr,
    NUM_ROUNDS: tl.constexpr,
    BLOCK: tl.constexpr,
    UNIFORM_SCALE: tl.constexpr,
    SCAN_SLACK: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    meta = packed_ptr + b * stride_packed
    row = tl.load(meta)
    last = tl.load(meta + 1)
    lo = tl.load(meta + 2)
    hi = tl.load(meta + 3)
    is_greedy = tl.load(meta + 4) != 0
    logits_row = logits_ptr + b * stride_logits
    seen_row = seen_ptr + row * stride_seen
    offs = tl.arange(0, BLOCK).to(tl.int64)
    no_id = vocab + 0 * lo  # an int64 past every id
    first_block = lo // BLOCK * BLOCK  # the passes visit only the blocks of [lo, hi)

    # Lane-wise accumulators across blocks, reduced once after each pass: a cross-lane reduction costs a barrier,
    # and one per block per quantity made the kernel latency-bound (0.58 ms a row over Orpheus' 157k ids).
    # pass 1: the maximum score and the total weight (each lane's sum rescaled as its maximum grows, as online
    # softmax does: one pass over the logits, not two); the argmax of the raw logits and of the scores (first index
    # among ties: each lane keeps its first strict maximum, blocks come in id order, then the lowest id among the
    # lanes' maxima)
    m_vec = tl.full([BLOCK], float("-inf"), tl.float32)
    sum_vec = tl.zeros([BLOCK], tl.float32)  # each lane's sum of exp(score - its m_vec)
    top_vec = tl.full([BLOCK], 0, tl.int64) + no_id
    raw_vec = tl.full([BLOCK], float("-inf"), tl.float32)
    greedy_vec = tl.full([BLOCK], 0, tl.int64) + no_id
    for start in range(first_block, hi, BLOCK):
        cols = start + offs
        x = _scores(logits_row, seen_row, cols, lo, hi, last, temperature, penalty)
        top_vec = tl.where(x > m_vec, cols, top_vec)
        m_old = m_vec
        m_vec = tl.maximum(m_vec, x)
        m_safe = tl.where(m_vec > float("-inf"), m_vec, 0.0)  # a lane with only -inf so far: sums 0, no inf - inf
        sum_vec = sum_vec * tl.exp(m_old - m_safe) + tl.exp(x - m_safe)
        raw = tl.load(logits_row + cols, mask=(cols >= lo) & (cols < hi), other=float("-inf"))
        greedy_vec = tl.where(raw > raw_vec, cols, greedy_vec)
        raw_vec = tl.maximum(raw_vec, raw)
    m = tl.max(m_vec, axis=0)
    top_id = tl.min(tl.where(m_vec == m, top_vec, no_id), axis=0)
    top_id = tl.where(top_id == no_id, lo, top_id)  # every score -inf
    best_raw = tl.max(raw_vec, axis=0)
    greedy_id = tl.min(tl.where(raw_vec == best_raw, greedy_vec, no_id), axis=0)
    greedy_id = tl.where(greedy_id == no_id, lo, greedy_id)
    m_safe = tl.where(m > float("-inf"), m, 0.0)
    total = tl.sum(sum_vec * tl.exp(m_vec - m_safe), axis=0)  # lanes of -inf only add 0
    mass_limit = top_p * total

    picked = top_id
    low = tl.full([], 0.0, tl.float32)  # eligible: weight > low
    is_done = is_greedy.to(tl.int32)
    r = 0
    while (is_done == 0) & (r < NUM_ROUNDS):
        u = tl.load(meta + NUM_META + r).to(tl.float32) * UNIFORM_SCALE
        target = u * total
        # the first eligible id whose inclusive running weight exceeds target (the last eligible one if rounding
        # leaves target at or past the end); the block's scan runs only where the target can fall (its sum says
        # so, with slack for the scan's own rounding)
        acc = tl.full([], 0.0, tl.float32)
        found = no_id
        found_w = tl.full([], 0.0, tl.float32)
        last_vec = tl.full([BLOCK], -1, tl.int64)
        last_w_vec = tl.zeros([BLOCK], tl.float32)
        for start in range(first_block, hi, BLOCK):
            cols = start + offs
            w = tl.exp(_scores(logits_row, seen_row, cols, lo, hi, last, temperature, penalty) - m)
            w = tl.where(w > low, w, 0.0)
            block_sum = tl.sum(w, axis=0)
            if (found == no_id) & (acc + block_sum * SCAN_SLACK >= target):
                hit_col = tl.min(tl.where((acc + tl.cumsum(w, axis=0) > target) & (w > 0), cols, no_id), axis=0)
                found_w = tl.sum(tl.where(cols == hit_col, w, 0.0), axis=0)
                found = hit_col
            last_vec = tl.where(w > 0, cols, last_vec)
            last_w_vec = tl.where(w > 0, w, last_w_vec)
            acc += block_sum
        last_eligible = tl.max(last_vec, axis=0)
        last_w = tl.sum(tl.where(last_vec == last_eligible, last_w_vec, 0.0), axis=0)
        found_w = tl.where(found == no_id, last_w, found_w)
        found = tl.where(found == no_id, tl.where(last_eligible < 0, no_id, last_eligible), found)
        # the weight strictly above the drawn id's: it is in the nucleus iff that mass is under top_p
        above_vec = tl.zeros([BLOCK], tl.float32)
        for start in range(first_block, hi, BLOCK):
            cols = start + offs
            w = tl.exp(_scores(logits_row, seen_row, cols, lo, hi, last, temperature, penalty) - m)
            above_vec += tl.where(w > found_w, w, 0.0)
        above = tl.sum(above_vec, axis=0)
        is_accepted = above < mass_limit
        picked = tl.where(is_accepted, found, picked)
        is_done = is_accepted.to(tl.int32)
        low = found_w
        total = above
        r += 1
    tl.store(ids_ptr + b, tl.where(is_greedy, greedy_id, picked))


def nucleus_sample_triton(
    logits: torch.Tensor,
    packed: torch.Tensor,
    seen: torch.Tensor,
    temperature: float,
    top_p: float,
    penalty: float,
    launch: SampleLaunch = SAMPLE_LAUNCH,
) -> torch.Tensor:
    assert logits.dim() == 2 and logits.dtype == torch.float32 and logits.stride(1) == 1
    batch, vocab = logits.shape
    assert packed.dim() == 2 and packed.shape[0] == batch and packed.dtype == torch.int64 and packed.stride(1) == 1
    num_rounds = packed.shape[1] - NUM_META
    assert num_rounds >= 1
    assert seen.dim() == 2 and seen.shape[1] == vocab and seen.dtype == torch.bool and seen.stride(1) == 1
    ids = torch.empty(batch, dtype=torch.int64, device=logits.device)
    if batch == 0:
        return ids
    _nucleus_kernel[(batch,)](
        logits,
        packed,
        seen.view(torch.uint8),
        ids,
        logits.stride(0),
        packed.stride(0),
        seen.stride(0),
        vocab,
        temperature,
        penalty,
        top_p,
        NUM_META=NUM_META,
        NUM_ROUNDS=num_rounds,
        BLOCK=min(launch.block_v, triton.next_power_of_2(vocab)),
        UNIFORM_SCALE=1.0 / (1 << UNIFORM_BITS),
        SCAN_SLACK=SCAN_SLACK,
        num_warps=launch.num_warps,
    )
    return ids


def penalized_scores(
    logits: torch.Tensor, packed: torch.Tensor, seen: torch.Tensor, temperature: float, penalty: float
) -> torch.Tensor:
    """[B, V] scores of step 1 (-inf outside each row's [lo, hi))."""
    cols = torch.arange(logits.shape[1], device=logits.device)
    rows, last, lo, hi = packed[:, 0], packed[:, 1:2], packed[:, 2:3], packed[:, 3:4]
    is_seen = seen.index_select(0, rows) | (cols == last)
    x = torch.where(is_seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits) / temperature
    return x.masked_fill((cols < lo) | (cols >= hi), float("-inf"))


def nucleus_sample_ref(
    logits: torch.Tensor, packed: torch.Tensor, seen: torch.Tensor, temperature: float, top_p: float, penalty: float
) -> torch.Tensor:
    """The kernel's semantics in torch (rounds run for every row; an accepted row keeps its id)."""
    vocab = logits.shape[1]
    cols = torch.arange(vocab, device=logits.device)
    lo, hi, is_greedy = packed[:, 2:3], packed[:, 3:4], packed[:, 4].bool()
    raw = logits.masked_fill((cols < lo) | (cols >= hi), float("-inf"))
    greedy_ids = raw.argmax(dim=-1)
    x = penalized_scores(logits, packed, seen, temperature, penalty)
    w = (x - x.max(dim=-1, keepdim=True).values).exp()
    total = w.sum(dim=-1)
    mass_limit = top_p * total
    picked = x.argmax(dim=-1)
    low = torch.zeros_like(total)
    is_done = is_greedy.clone()
    uniforms = packed[:, NUM_META:].float() / (1 << UNIFORM_BITS)
    for r in range(uniforms.shape[1]):
        eligible = torch.where(w > low[:, None], w, 0.0)
        cdf = eligible.cumsum(dim=-1)
        target = uniforms[:, r] * total
        hits = (cdf > target[:, None]) & (eligible > 0)
        last_eligible = torch.where(eligible > 0, cols, -1).max(dim=-1).values
        found = torch.where(hits.any(dim=-1), hits.int().argmax(dim=-1), last_eligible)
        found_w = w.gather(1, found[:, None])
        above = torch.where(w > found_w, w, 0.0).sum(dim=-1)
        is_accepted = ~is_done & (above < mass_limit)
        picked = torch.where(is_accepted, found, picked)
        is_done |= is_accepted
        low = torch.where(is_done, low, found_w[:, 0])
        total = torch.where(is_done, total, above)
        if not logits.is_cuda and bool(is_done.all()):  # a host check: never inside a CUDA graph
            break
    return torch.where(is_greedy, greedy_ids, picked)
