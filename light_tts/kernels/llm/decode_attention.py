"""Flash-decoding attention: one query token per request over its cached K/V, split along the context.

Stage 1: each program (request, kv head, context split) attends its kv head's whole GQA group of query heads
to one split and writes a normalised partial output plus its log-sum-exp. Stage 2 merges a request's splits.
The grid depends only on host ints (batch, heads, max_seq_len), never on tensor values, so it can be captured in
a CUDA graph; splits past a request's b_seq_len exit at once, and a request with b_seq_len == 0 (graph padding,
whose req index may be a sentinel) reads nothing and outputs zeros.

A quantized cache (int8 or fp8 with a scale per (slot, kv head), kernels/llm/kv_store.py) is read directly: keys and
values are converted to q's dtype as loaded (exact), the key scales multiply the scores and the value scales the
probabilities, so nothing is dequantized into memory. A bf16 q is rounded to fp16 first (fp16_query): e4m3 and
int8 codes convert to fp16 in one instruction each, to bf16 in several.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from light_tts.kernels.llm.quant import dequantize_ref, kv_format

LOG2_E = 1.4426950408889634
MIN_BLOCK_H = 16  # tl.dot needs at least 16 rows; padded query heads are masked
MAX_SPLITS = 64  # bounds the merge kernel's registers (it holds every split of a head at once)


@dataclass(frozen=True)
class SplitLaunch:
    """Stage 1's tile and launch: context tokens per iteration, warps, software-pipelining stages."""

    block_n: int = 32
    num_warps: int = 4
    num_stages: int = 2


# by head dim. 128 (Llama-3.2-3B), `bench.kernels sweep` on an H100 (docs/performance.md), one layer, 256 requests
# of 800 tokens: 3 stages take bf16 / fp8 / int8 caches to 0.300 / 0.299 / 0.258 ms (2 stages: 0.352 / 0.392 /
# 0.418), within 6% of the best of 18 launches for each format; one request (0.03-0.14 ms with any launch) was
# within the benchmark's noise. Qwen2's 64 keep 2 stages, the launch their published numbers were measured with
# (the sweep has not run at their shapes).
SPLIT_LAUNCH = {64: SplitLaunch(), 128: SplitLaunch(num_stages=3)}


def split_launch(head_dim: int) -> SplitLaunch:
    """The measured launch for head_dim (2 stages where none was measured)."""
    return SPLIT_LAUNCH.get(head_dim, SplitLaunch())


@triton.jit
def fp16_query(q, KV_QUANT: tl.constexpr):
    """q for the dots with a quantized cache: bf16 rounded to fp16 (the codes convert to fp16 cheaply); else q."""
    if KV_QUANT and q.dtype == tl.bfloat16:  # one return after the if, as key_scores
        q = q.to(tl.float16)
    return q


@triton.jit
def key_scores(
    q,
    k_cache_ptr,
    k_scale_ptr,
    slots,
    kv_head,
    stride_slot,
    stride_head,
    stride_scale_slot,
    mask,
    dims,
    scale_log2,
    DOT_PRECISION: tl.constexpr,
    KV_QUANT: tl.constexpr,
):
    """Scores (rows of q, BLOCK_N) of q against the keys at cache `slots` (BLOCK_N,), times scale_log2."""
    k = tl.load(
        k_cache_ptr + slots[:, None] * stride_slot + kv_head * stride_head + dims[None, :],
        mask=mask[:, None],
        other=0.0,
    )
    # one return, after an if/else: Triton's compiler keeps generating the statements after a return inside a
    # constexpr if, so an early return would also compile the unquantized dot on fp8 keys (refused on a GPU; the
    # interpreter, which runs Python, never sees it)
    if KV_QUANT:
        k_scale = tl.load(k_scale_ptr + slots * stride_scale_slot + kv_head, mask=mask, other=0.0)
        scores = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * (k_scale[None, :] * scale_log2)
    else:
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
    return scores


@triton.jit
def weighted_values(
    p,
    q,
    v_cache_ptr,
    v_scale_ptr,
    slots,
    kv_head,
    stride_slot,
    stride_head,
    stride_scale_slot,
    mask,
    dims,
    DOT_PRECISION: tl.constexpr,
    KV_QUANT: tl.constexpr,
):
    """p (rows, BLOCK_N) float32 times the values at cache `slots`, in q's dtype with float32 accumulation."""
    v = tl.load(
        v_cache_ptr + slots[:, None] * stride_slot + kv_head * stride_head + dims[None, :],
        mask=mask[:, None],
        other=0.0,
    )
    if KV_QUANT:  # if/else with one return, as key_scores
        v_scale = tl.load(v_scale_ptr + slots * stride_scale_slot + kv_head, mask=mask, other=0.0)
        out = tl.dot((p * v_scale[None, :]).to(q.dtype), v.to(q.dtype), input_precision=DOT_PRECISION)
    else:
        out = tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return out


@triton.jit
def _decode_split_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    k_scale_ptr,
    v_scale_ptr,
    mid_o_ptr,
    mid_lse_ptr,
    req_to_token_ptr,
    b_req_idx_ptr,
    b_seq_len_ptr,
    stride_q_req,
    stride_q_head,
    stride_kc_slot,
    stride_kc_head,
    stride_vc_slot,
    stride_vc_head,
    stride_ks_slot,
    stride_vs_slot,
    stride_req,
    stride_mo_req,
    stride_mo_head,
    stride_mo_split,
    stride_ml_req,
    stride_ml_head,
    scale_log2,
    num_q_heads_per_kv,
    split_len,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    KV_QUANT: tl.constexpr,
):
    batch = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(b_seq_len_ptr + batch)
    split_start = split * split_len
    split_end = tl.minimum(split_start + split_len, seq_len)
    if split_start >= split_end:
        return
    req = tl.load(b_req_idx_ptr + batch).to(tl.int64)

    heads = kv_head * num_q_heads_per_kv + tl.arange(0, BLOCK_H)
    is_head = tl.arange(0, BLOCK_H) < num_q_heads_per_kv
    dims = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    q = tl.load(
        q_ptr + batch * stride_q_req + heads[:, None] * stride_q_head + dims[None, :], mask=is_head[:, None], other=0.0
    )  # (BLOCK_H, D)
    q = fp16_query(q, KV_QUANT)

    m_i = tl.full((BLOCK_H,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_H,), tl.float32)
    acc = tl.zeros((BLOCK_H, HEAD_DIM), tl.float32)
    for start_n in range(split_start, split_end, BLOCK_N):
        kv_pos = start_n + offs_n
        in_split = kv_pos < split_end
        slots = tl.load(req_to_token_ptr + req * stride_req + kv_pos, mask=in_split, other=0).to(tl.int64)
        scores = key_scores(
            q,
            k_cache_ptr,
            k_scale_ptr,
            slots,
            kv_head,
            stride_kc_slot,
            stride_kc_head,
            stride_ks_slot,
            in_split,
            dims,
            scale_log2,
            DOT_PRECISION,
            KV_QUANT,
        )  # (BLOCK_H, BLOCK_N)
        scores = tl.where(in_split[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        p = tl.exp2(scores - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + weighted_values(
            p,
            q,
            v_cache_ptr,
            v_scale_ptr,
            slots,
            kv_head,
            stride_vc_slot,
            stride_vc_head,
            stride_vs_slot,
            in_split,
            dims,
            DOT_PRECISION,
            KV_QUANT,
        )
        m_i = m_new
    mid_o = mid_o_ptr + batch * stride_mo_req + heads[:, None] * stride_mo_head + split * stride_mo_split
    tl.store(mid_o + dims[None, :], acc / l_i[:, None], mask=is_head[:, None])
    tl.store(mid_lse_ptr + batch * stride_ml_req + heads * stride_ml_head + split, m_i + tl.log2(l_i), mask=is_head)


@triton.jit
def _decode_merge_kernel(
    mid_o_ptr,
    mid_lse_ptr,
    o_ptr,
    b_seq_len_ptr,
    stride_mo_req,
    stride_mo_head,
    stride_mo_split,
    stride_ml_req,
    stride_ml_head,
    stride_o_req,
    stride_o_head,
    split_len,
    HEAD_DIM: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    # one program merges all splits of one (request, q head) at once: no serial loop over splits
    batch = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    seq_len = tl.load(b_seq_len_ptr + batch)
    num_splits = tl.cdiv(seq_len, split_len)  # only splits that stage 1 wrote
    splits = tl.arange(0, BLOCK_S)
    is_written = splits < num_splits
    dims = tl.arange(0, HEAD_DIM)
    lse = tl.load(
        mid_lse_ptr + batch * stride_ml_req + head * stride_ml_head + splits, mask=is_written, other=float("-inf")
    )
    lse_max = tl.where(num_splits > 0, tl.max(lse, axis=0), 0.0)  # an empty (padding) request has no finite lse
    weights = tl.exp2(lse - lse_max)  # (BLOCK_S,), 0 for unwritten splits
    parts = tl.load(
        mid_o_ptr + batch * stride_mo_req + head * stride_mo_head + splits[:, None] * stride_mo_split + dims[None, :],
        mask=is_written[:, None],
        other=0.0,
    )  # (BLOCK_S, D)
    acc = tl.sum(weights[:, None] * parts, axis=0)
    weight_sum = tl.where(num_splits > 0, tl.sum(weights, axis=0), 1.0)  # empty request: acc == 0 -> zeros
    tl.store(o_ptr + batch * stride_o_req + head * stride_o_head + dims, (acc / weight_sum).to(o_ptr.dtype.element_ty))


def _target_programs(device: torch.device) -> int:
    """Stage-1 programs wanted to fill the GPU: a few waves over the SMs (a fixed count off-GPU)."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 128


def choose_split_len(batch: int, num_kv_heads: int, max_seq_len: int, block_n: int, device: torch.device) -> int:
    """Context tokens per split, a multiple of block_n: enough splits to fill the GPU, none shorter than a block."""
    max_splits = triton.cdiv(max(max_seq_len, 1), block_n)
    num_splits = min(max(triton.cdiv(_target_programs(device), batch * num_kv_heads), 1), max_splits, MAX_SPLITS)
    return triton.cdiv(triton.cdiv(max(max_seq_len, 1), num_splits), block_n) * block_n


def check_kv_inputs(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> bool:
    """What both attention kernels assume of q [*, Hq, D] and the token-level cache [slots, Hkv, D] (with its
    scales [slots, Hkv] when quantized); returns whether it is quantized."""
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[1]
    assert head_dim >= 16 and head_dim & (head_dim - 1) == 0, f"head_dim must be a power of two >= 16, got {head_dim}"
    assert k_cache.dim() == 3 and k_cache.shape[2] == head_dim and v_cache.shape == k_cache.shape
    assert k_cache.stride(2) == v_cache.stride(2) == 1 and k_cache.dtype == v_cache.dtype
    is_quantized = kv_format(k_cache, k_scale) > 0
    assert is_quantized == (kv_format(v_cache, v_scale) > 0) and (is_quantized or q.dtype == k_cache.dtype)
    assert num_q_heads % num_kv_heads == 0, f"GQA needs Hq % Hkv == 0, got {num_q_heads}, {num_kv_heads}"
    assert req_to_token.dim() == 2 and req_to_token.stride(1) == 1 and req_to_token.dtype == torch.int32
    return is_quantized


def decode_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    b_req_idx: torch.Tensor,
    b_seq_len: torch.Tensor,
    sm_scale: float,
    max_seq_len: int | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    launch: SplitLaunch | None = None,
    split_len: int | None = None,
) -> torch.Tensor:
    """max_seq_len: host bound on b_seq_len (defaults to req_to_token's row length); launch overrides stage 1's
    (split_launch(head_dim)), split_len the split."""
    assert q.dim() == 3 and q.stride(2) == 1, f"q must be [B, Hq, D], got {tuple(q.shape)}"
    batch, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    is_quantized = check_kv_inputs(q, k_cache, v_cache, req_to_token, k_scale, v_scale)
    launch = split_launch(head_dim) if launch is None else launch
    if not is_quantized:
        k_scale = v_scale = b_seq_len  # placeholders the kernel never touches
    assert b_req_idx.shape == (batch,) and b_seq_len.shape == (batch,)
    assert b_req_idx.dtype == b_seq_len.dtype == torch.int32
    max_seq_len = req_to_token.shape[1] if max_seq_len is None else max_seq_len
    if split_len is None:
        split_len = choose_split_len(batch, num_kv_heads, max_seq_len, launch.block_n, q.device)
    num_splits = triton.cdiv(max(max_seq_len, 1), split_len)
    o = torch.empty((batch, num_q_heads, head_dim), dtype=q.dtype, device=q.device)
    if batch == 0:
        return o
    mid_o = torch.empty((batch, num_q_heads, num_splits, head_dim), dtype=torch.float32, device=q.device)
    mid_lse = torch.empty((batch, num_q_heads, num_splits), dtype=torch.float32, device=q.device)
    num_q_heads_per_kv = num_q_heads // num_kv_heads
    _decode_split_kernel[(batch, num_kv_heads, num_splits)](
        q,
        k_cache,
        v_cache,
        k_scale,
        v_scale,
        mid_o,
        mid_lse,
        req_to_token,
        b_req_idx,
        b_seq_len,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        v_cache.stride(0),
        v_cache.stride(1),
        k_scale.stride(0),
        v_scale.stride(0),
        req_to_token.stride(0),
        mid_o.stride(0),
        mid_o.stride(1),
        mid_o.stride(2),
        mid_lse.stride(0),
        mid_lse.stride(1),
        sm_scale * LOG2_E,
        num_q_heads_per_kv,
        split_len,
        HEAD_DIM=head_dim,
        BLOCK_H=max(triton.next_power_of_2(num_q_heads_per_kv), MIN_BLOCK_H),
        BLOCK_N=launch.block_n,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        KV_QUANT=is_quantized,
        num_warps=launch.num_warps,
        num_stages=launch.num_stages,
    )
    _decode_merge_kernel[(batch, num_q_heads)](
        mid_o,
        mid_lse,
        o,
        b_seq_len,
        mid_o.stride(0),
        mid_o.stride(1),
        mid_o.stride(2),
        mid_lse.stride(0),
        mid_lse.stride(1),
        o.stride(0),
        o.stride(1),
        split_len,
        HEAD_DIM=head_dim,
        BLOCK_S=triton.next_power_of_2(num_splits),
        num_warps=4,
    )
    return o


def cached_kv_ref(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
    slots: torch.Tensor,
    group: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values at `slots` as float32 (S, Hq, D), dequantized, each kv head repeated for its q heads."""
    return tuple(
        dequantize_ref(cache[slots], None if scale is None else scale[slots]).repeat_interleave(group, dim=1)
        for cache, scale in ((k_cache, k_scale), (v_cache, v_scale))
    )


def decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    b_req_idx: torch.Tensor,
    b_seq_len: torch.Tensor,
    sm_scale: float,
    max_seq_len: int | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-request fp32 softmax attention (a quantized cache dequantized first); syncs with the host, so never
    inside a CUDA graph."""
    o = torch.zeros_like(q)
    group = q.shape[1] // k_cache.shape[1]
    for i, (req, seq_len) in enumerate(zip(b_req_idx.tolist(), b_seq_len.tolist())):
        if seq_len == 0:
            continue
        slots = req_to_token[req, :seq_len].long()
        k, v = cached_kv_ref(k_cache, v_cache, k_scale, v_scale, slots, group)
        probs = (torch.einsum("hd,shd->hs", q[i].float(), k) * sm_scale).softmax(dim=-1)
        o[i] = torch.einsum("hs,shd->hd", probs, v).to(q.dtype)
    return o
