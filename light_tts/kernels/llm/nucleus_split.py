"""The nucleus sampler with its full passes spread over (row, block) programs: the same algorithm and ids as
nucleus_sampling.py's one-program-a-row kernel, whose passes over 156,940 ids run one block after another.

1. stats (grid rows x blocks): each block's maximum score, its weight relative to that maximum, its first score
   argmax and raw-logit argmax.
2. first draw (grid rows): the row's maximum, total and argmaxes from the blocks'; round 0's draw (every id
   eligible) finds its block from the blocks' running weights and scans that block only.
3. above (grid rows x blocks): each block's weight strictly above the drawn id's.
4. finish (grid rows): accept the draw (the mass above it < top_p * total), or go on with rounds 1.. as the
   one-program kernel does (nucleus_sampling._rounds, one block after another: the rare rows whose first draw fell
   outside the nucleus).
Two full reads of the logits in parallel instead of three or more in series per row. Rounding differs from the
one-program kernel's only in summation order.
"""

import torch
import triton
import triton.language as tl

from light_tts.kernels.llm.nucleus_sampling import NUM_META, SCAN_SLACK, _rounds, _scores
from light_tts.sampling import UNIFORM_BITS


@triton.jit
def _row_meta(packed_ptr, stride_packed, b):
    meta = packed_ptr + b * stride_packed
    return meta, tl.load(meta), tl.load(meta + 1), tl.load(meta + 2), tl.load(meta + 3)


@triton.jit
def _stats_kernel(
    logits_ptr,
    packed_ptr,
    seen_ptr,
    block_max_ptr,
    block_sum_ptr,
    block_top_ptr,
    block_raw_ptr,
    block_greedy_ptr,
    stride_logits,
    stride_packed,
    stride_seen,
    num_blocks,
    vocab,
    temperature,
    penalty,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    meta, row, last, lo, hi = _row_meta(packed_ptr, stride_packed, b)
    cols = j * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    no_id = vocab + 0 * lo
    x = _scores(logits_ptr + b * stride_logits, seen_ptr + row * stride_seen, cols, lo, hi, last, temperature, penalty)
    mb = tl.max(x, axis=0)
    m_safe = tl.where(mb > float("-inf"), mb, 0.0)  # a block outside [lo, hi): weight 0, no inf - inf
    raw = tl.load(logits_ptr + b * stride_logits + cols, mask=(cols >= lo) & (cols < hi), other=float("-inf"))
    best_raw = tl.max(raw, axis=0)
    out = b * num_blocks + j
    tl.store(block_max_ptr + out, mb)
    tl.store(block_sum_ptr + out, tl.sum(tl.exp(x - m_safe), axis=0))
    top = tl.min(tl.where(x == mb, cols, no_id), axis=0)
    tl.store(block_top_ptr + out, tl.where(mb > float("-inf"), top, no_id))  # all -inf: no argmax
    tl.store(block_raw_ptr + out, best_raw)
    greedy = tl.min(tl.where(raw == best_raw, cols, no_id), axis=0)
    tl.store(block_greedy_ptr + out, tl.where(best_raw > float("-inf"), greedy, no_id))


@triton.jit
def _first_draw_kernel(
    logits_ptr,
    packed_ptr,
    seen_ptr,
    block_max_ptr,
    block_sum_ptr,
    block_top_ptr,
    block_raw_ptr,
    block_greedy_ptr,
    row_state_ptr,
    row_ids_ptr,
    stride_logits,
    stride_packed,
    stride_seen,
    num_blocks,
    vocab,
    temperature,
    penalty,
    NUM_META: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCKS: tl.constexpr,
    UNIFORM_SCALE: tl.constexpr,
):
    """Row state out: m, total, found_w (float32 [B, 3]); ids: top, greedy, found (int64 [B, 3])."""
    b = tl.program_id(0).to(tl.int64)
    meta, row, last, lo, hi = _row_meta(packed_ptr, stride_packed, b)
    no_id = vocab + 0 * lo
    js = tl.arange(0, BLOCKS)
    is_block = js < num_blocks
    mb = tl.load(block_max_ptr + b * num_blocks + js, mask=is_block, other=float("-inf"))
    m = tl.max(mb, axis=0)
    m_safe = tl.where(m > float("-inf"), m, 0.0)
    sums = tl.load(block_sum_ptr + b * num_blocks + js, mask=is_block, other=0.0) * tl.exp(mb - m_safe)
    total = tl.sum(sums, axis=0)
    tops = tl.load(block_top_ptr + b * num_blocks + js, mask=is_block, other=0) + 0 * no_id
    top_id = tl.min(tl.where((mb == m) & is_block, tops, no_id), axis=0)
    top_id = tl.where(top_id == no_id, lo, top_id)  # every score -inf
    raws = tl.load(block_raw_ptr + b * num_blocks + js, mask=is_block, other=float("-inf"))
    greedies = tl.load(block_greedy_ptr + b * num_blocks + js, mask=is_block, other=0) + 0 * no_id
    best_raw = tl.max(raws, axis=0)
    greedy_id = tl.min(tl.where((raws == best_raw) & is_block, greedies, no_id), axis=0)
    greedy_id = tl.where(greedy_id == no_id, lo, greedy_id)
    # round 0: every id with weight > 0 is eligible; the block where the running weight passes the target (the last
    # block with weight if rounding leaves the target at or past the end), then the id inside it
    target = tl.load(meta + NUM_META).to(tl.float32) * UNIFORM_SCALE * total
    running = tl.cumsum(sums, axis=0)
    hit = tl.min(tl.where((running > target) & (sums > 0), js, BLOCKS), axis=0)
    last_block = tl.max(tl.where(sums > 0, js, -1), axis=0)
    hit = tl.where(hit == BLOCKS, last_block, hit)
    before = tl.sum(tl.where(js < hit, sums, 0.0), axis=0)
    cols = tl.maximum(hit, 0) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    x = _scores(logits_ptr + b * stride_logits, seen_ptr + row * stride_seen, cols, lo, hi, last, temperature, penalty)
    w = tl.exp(x - m_safe)
    w = tl.where(w > 0, w, 0.0)
    found = tl.min(tl.where((before + tl.cumsum(w, axis=0) > target) & (w > 0), cols, no_id), axis=0)
    last_in_block = tl.max(tl.where(w > 0, cols, -1), axis=0)
    found = tl.where(found == no_id, last_in_block, found)  # rounding inside the block: its last eligible id
    found = tl.where((hit < 0) | (found < 0), no_id, found)  # no weight at all
    found_w = tl.sum(tl.where(cols == found, w, 0.0), axis=0)
    tl.store(row_state_ptr + 3 * b, m)
    tl.store(row_state_ptr + 3 * b + 1, total)
    tl.store(row_state_ptr + 3 * b + 2, found_w)
    tl.store(row_ids_ptr + 3 * b, top_id)
    tl.store(row_ids_ptr + 3 * b + 1, greedy_id)
    tl.store(row_ids_ptr + 3 * b + 2, found)


@triton.jit
def _above_kernel(
    logits_ptr,
    packed_ptr,
    seen_ptr,
    row_state_ptr,
    block_above_ptr,
    stride_logits,
    stride_packed,
    stride_seen,
    num_blocks,
    temperature,
    penalty,
    BLOCK: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    meta, row, last, lo, hi = _row_meta(packed_ptr, stride_packed, b)
    m = tl.load(row_state_ptr + 3 * b)
    found_w = tl.load(row_state_ptr + 3 * b + 2)
    cols = j * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    x = _scores(logits_ptr + b * stride_logits, seen_ptr + row * stride_seen, cols, lo, hi, last, temperature, penalty)
    w = tl.exp(x - tl.where(m > float("-inf"), m, 0.0))
    tl.store(block_above_ptr + b * num_blocks + j, tl.sum(tl.where(w > found_w, w, 0.0), axis=0))


@triton.jit
def _finish_kernel(
    logits_ptr,
    packed_ptr,
    seen_ptr,
    row_state_ptr,
    row_ids_ptr,
    block_above_ptr,
    ids_ptr,
    stride_logits,
    stride_packed,
    stride_seen,
    num_blocks,
    vocab,
    temperature,
    penalty,
    top_p,
    NUM_META: tl.constexpr,
    NUM_ROUNDS: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCKS: tl.constexpr,
    UNIFORM_SCALE: tl.constexpr,
    SCAN_SLACK: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    meta, row, last, lo, hi = _row_meta(packed_ptr, stride_packed, b)
    is_greedy = tl.load(meta + 4) != 0
    js = tl.arange(0, BLOCKS)
    above = tl.sum(tl.load(block_above_ptr + b * num_blocks + js, mask=js < num_blocks, other=0.0), axis=0)
    m = tl.load(row_state_ptr + 3 * b)
    total = tl.load(row_state_ptr + 3 * b + 1)
    found_w = tl.load(row_state_ptr + 3 * b + 2)
    top_id = tl.load(row_ids_ptr + 3 * b)
    greedy_id = tl.load(row_ids_ptr + 3 * b + 1)
    found = tl.load(row_ids_ptr + 3 * b + 2)
    mass_limit = top_p * total
    is_accepted = above < mass_limit
    picked = tl.where(is_accepted, found, top_id)
    picked = _rounds(
        meta,
        logits_ptr + b * stride_logits,
        seen_ptr + row * stride_seen,
        temperature,
        penalty,
        m,
        above,
        mass_limit,
        picked,
        found_w,
        (is_greedy | is_accepted).to(tl.int32),
        vocab,
        1,
        NUM_META,
        NUM_ROUNDS,
        BLOCK,
        UNIFORM_SCALE,
        SCAN_SLACK,
    )
    tl.store(ids_ptr + b, tl.where(is_greedy, greedy_id, picked))


def nucleus_sample_split(
    logits: torch.Tensor,
    packed: torch.Tensor,
    seen: torch.Tensor,
    sampling: tuple[float, float, float],
    block_v: int,
    num_warps: int,
) -> torch.Tensor:
    """nucleus_sampling.nucleus_sample_triton's result (sampling: temperature, top_p, penalty) in four launches;
    the caller has checked the inputs."""
    temperature, top_p, penalty = sampling
    batch, vocab = logits.shape
    block = min(block_v, triton.next_power_of_2(vocab))
    num_blocks = triton.cdiv(vocab, block)
    dev = logits.device
    ids = torch.empty(batch, dtype=torch.int64, device=dev)
    if batch == 0:
        return ids
    block_f = torch.empty(4, batch, num_blocks, dtype=torch.float32, device=dev)  # max, sum, raw max, above
    block_i = torch.empty(2, batch, num_blocks, dtype=torch.int64, device=dev)  # score argmax, raw argmax
    row_state = torch.empty(batch, 3, dtype=torch.float32, device=dev)
    row_ids = torch.empty(batch, 3, dtype=torch.int64, device=dev)
    seen_u8 = seen.view(torch.uint8)
    strides = (logits.stride(0), packed.stride(0), seen.stride(0))
    _stats_kernel[(batch, num_blocks)](
        logits, packed, seen_u8, block_f[0], block_f[1], block_i[0], block_f[2], block_i[1], *strides, num_blocks,
        vocab, temperature, penalty, BLOCK=block, num_warps=num_warps,
    )  # fmt: skip
    constants = {"NUM_META": NUM_META, "BLOCK": block, "BLOCKS": triton.next_power_of_2(num_blocks)}
    scale = 1.0 / (1 << UNIFORM_BITS)
    _first_draw_kernel[(batch,)](
        logits, packed, seen_u8, block_f[0], block_f[1], block_i[0], block_f[2], block_i[1], row_state, row_ids,
        *strides, num_blocks, vocab, temperature, penalty, **constants, UNIFORM_SCALE=scale, num_warps=num_warps,
    )  # fmt: skip
    _above_kernel[(batch, num_blocks)](
        logits, packed, seen_u8, row_state, block_f[3], *strides, num_blocks, temperature, penalty, BLOCK=block,
        num_warps=num_warps,
    )  # fmt: skip
    _finish_kernel[(batch,)](
        logits, packed, seen_u8, row_state, row_ids, block_f[3], ids, *strides, num_blocks, vocab, temperature,
        penalty, top_p, **constants, NUM_ROUNDS=packed.shape[1] - NUM_META, UNIFORM_SCALE=scale,
        SCAN_SLACK=SCAN_SLACK, num_warps=num_warps,
    )  # fmt: skip
    return ids
