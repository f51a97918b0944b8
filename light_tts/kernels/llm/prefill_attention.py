"""Causal prefill attention of packed variable-length new tokens over their request's cached prefix + themselves.

K/V of every position (prefix and new tokens) are read from the token-level cache through req_to_token,
so the new tokens' K/V must have been stored first (by apply_rotary or store_kv). GQA: q head h reads kv head
h // (Hq // Hkv). A quantized cache is read as decode_attention reads it.
"""

import torch
import triton
import triton.language as tl

from light_tts.kernels.llm.decode_attention import cached_kv_ref, check_kv_inputs, key_scores, weighted_values

LOG2_E = 1.4426950408889634


@triton.jit
def _prefill_attention_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    k_scale_ptr,
    v_scale_ptr,
    o_ptr,
    req_to_token_ptr,
    b_req_idx_ptr,
    b_start_loc_ptr,
    b_seq_len_ptr,
    b_prefix_len_ptr,
    stride_q_token,
    stride_q_head,
    stride_kc_slot,
    stride_kc_head,
    stride_vc_slot,
    stride_vc_head,
    stride_ks_slot,
    stride_vs_slot,
    stride_o_token,
    stride_o_head,
    stride_req,
    scale_log2,
    num_q_heads_per_kv,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    KV_QUANT: tl.constexpr,
):
    # program (sequence, q head, block of BLOCK_M new tokens)
    seq = tl.program_id(0)
    head = tl.program_id(1)
    block_m = tl.program_id(2)
    seq_len = tl.load(b_seq_len_ptr + seq)
    prefix_len = tl.load(b_prefix_len_ptr + seq)
    num_new = seq_len - prefix_len
    if block_m * BLOCK_M >= num_new:  # the grid is sized for the longest sequence
        return
    req = tl.load(b_req_idx_ptr + seq).to(tl.int64)
    q_start = tl.load(b_start_loc_ptr + seq).to(tl.int64)
    kv_head = head // num_q_heads_per_kv

    offs_m = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, HEAD_DIM)
    is_new = offs_m < num_new
    q_rows = q_start + offs_m
    q = tl.load(
        q_ptr + q_rows[:, None] * stride_q_token + head * stride_q_head + dims[None, :], mask=is_new[:, None], other=0.0
    )
    q_pos = prefix_len + offs_m  # absolute position of each query in its sequence

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
    # causal: this block needs keys up to its last query's position; key 0 is always visible, so no row is empty
    kv_end = tl.minimum(seq_len, prefix_len + (block_m + 1) * BLOCK_M)
    for start_n in range(0, kv_end, BLOCK_N):
        kv_pos = start_n + offs_n
        in_seq = kv_pos < seq_len
        slots = tl.load(req_to_token_ptr + req * stride_req + kv_pos, mask=in_seq, other=0).to(tl.int64)
        scores = key_scores(
            q,
            k_cache_ptr,
            k_scale_ptr,
            slots,
            kv_head,
            stride_kc_slot,
            stride_kc_head,
            stride_ks_slot,
            in_seq,
            dims,
            scale_log2,
            DOT_PRECISION,
            KV_QUANT,
        )  # (BLOCK_M, BLOCK_N)
        visible = (kv_pos[None, :] <= q_pos[:, None]) & in_seq[None, :]
        scores = tl.where(visible, scores, float("-inf"))
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
            in_seq,
            dims,
            DOT_PRECISION,
            KV_QUANT,
        )
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(
        o_ptr + q_rows[:, None] * stride_o_token + head * stride_o_head + dims[None, :],
        out.to(o_ptr.dtype.element_ty),
        mask=is_new[:, None],
    )


def prefill_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    b_req_idx: torch.Tensor,
    b_start_loc: torch.Tensor,
    b_seq_len: torch.Tensor,
    b_prefix_len: torch.Tensor,
    sm_scale: float,
    max_new_len: int | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    block_m: int = 64,
    block_n: int = 64,
) -> torch.Tensor:
    """max_new_len: host-known bound on any sequence's new-token count (defaults to T) that sizes the grid."""
    assert q.dim() == 3 and q.stride(2) == 1, f"q must be [T, Hq, D], got {tuple(q.shape)}"
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    is_quantized = check_kv_inputs(q, k_cache, v_cache, req_to_token, k_scale, v_scale)
    if not is_quantized:
        k_scale = v_scale = b_seq_len  # placeholders the kernel never touches
    num_seqs = b_req_idx.shape[0]
    for meta in (b_req_idx, b_start_loc, b_seq_len, b_prefix_len):
        assert meta.shape == (num_seqs,) and meta.dtype == torch.int32
    o = torch.empty((num_tokens, num_q_heads, head_dim), dtype=q.dtype, device=q.device)
    max_new_len = num_tokens if max_new_len is None else max_new_len
    if num_tokens == 0 or num_seqs == 0:
        return o
    grid = (num_seqs, num_q_heads, triton.cdiv(max_new_len, block_m))
    _prefill_attention_kernel[grid](
        q,
        k_cache,
        v_cache,
        k_scale,
        v_scale,
        o,
        req_to_token,
        b_req_idx,
        b_start_loc,
        b_seq_len,
        b_prefix_len,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        v_cache.stride(0),
        v_cache.stride(1),
        k_scale.stride(0),
        v_scale.stride(0),
        o.stride(0),
        o.stride(1),
        req_to_token.stride(0),
        sm_scale * LOG2_E,
        num_q_heads // num_kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        KV_QUANT=is_quantized,
        num_warps=4,
        num_stages=2,
    )
    return o


def prefill_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    b_req_idx: torch.Tensor,
    b_start_loc: torch.Tensor,
    b_seq_len: torch.Tensor,
    b_prefix_len: torch.Tensor,
    sm_scale: float,
    max_new_len: int | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sequence fp32 softmax attention (a quantized cache dequantized first); syncs with the host, so never
    inside a CUDA graph."""
    o = torch.zeros_like(q)
    group = q.shape[1] // k_cache.shape[1]
    for req, start, seq_len, prefix_len in zip(
        b_req_idx.tolist(), b_start_loc.tolist(), b_seq_len.tolist(), b_prefix_len.tolist()
    ):
        num_new = seq_len - prefix_len
        slots = req_to_token[req, :seq_len].long()
        k, v = cached_kv_ref(k_cache, v_cache, k_scale, v_scale, slots, group)  # (S, Hq, D)
        qs = q[start : start + num_new].float()  # (N, Hq, D)
        scores = torch.einsum("nhd,shd->hns", qs, k) * sm_scale
        q_pos = torch.arange(prefix_len, seq_len, device=q.device)
        visible = torch.arange(seq_len, device=q.device)[None, :] <= q_pos[:, None]  # (N, S)
        probs = scores.masked_fill(~visible, float("-inf")).softmax(dim=-1)
        o[start : start + num_new] = torch.einsum("hns,shd->nhd", probs, v).to(q.dtype)
    return o
