"""Scatter of new tokens' K/V into the token-level KV cache at their slots: Triton kernel, launcher, torch reference.

A negative slot marks a padding token (CUDA-graph padding) whose K/V are dropped. A quantized cache (int8 or fp8,
kernels/llm/quant.py) gets each token's heads quantized with one scale per (token, head), stored beside it.
"""

import torch
import triton
import triton.language as tl

from light_tts.kernels.llm.quant import FORMAT_OF_DTYPE, kv_format, quantize_by_row, quantize_ref, row_scale_ref


@triton.jit
def store_heads(
    x,
    cache_ptr,
    scale_ptr,
    slot,
    stride_slot,
    stride_head,
    stride_scale_slot,
    num_heads,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    FORMAT: tl.constexpr,
):
    """Writes one token's heads x (BLOCK_H, HEAD_DIM) at cache slot `slot` (>= 0), quantized with a scale per
    head when FORMAT > 0 (0: stored as they are, in the cache's dtype)."""
    heads = tl.arange(0, BLOCK_H)
    is_head = heads < num_heads
    ptrs = cache_ptr + slot * stride_slot + heads[:, None] * stride_head + tl.arange(0, HEAD_DIM)[None, :]
    if FORMAT == 0:
        tl.store(ptrs, x.to(cache_ptr.dtype.element_ty), mask=is_head[:, None])
    else:
        q, scale = quantize_by_row(x.to(tl.float32), FORMAT)
        tl.store(ptrs, q.to(cache_ptr.dtype.element_ty), mask=is_head[:, None])
        tl.store(scale_ptr + slot * stride_scale_slot + heads, scale, mask=is_head)


@triton.jit
def _store_kv_kernel(
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    k_scale_ptr,
    v_scale_ptr,
    slot_mapping_ptr,
    stride_k_token,
    stride_k_head,
    stride_v_token,
    stride_v_head,
    stride_kc_slot,
    stride_kc_head,
    stride_vc_slot,
    stride_vc_head,
    stride_ks_slot,
    stride_vs_slot,
    num_kv_heads,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    FORMAT: tl.constexpr,
):
    # one program copies all heads of one token
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, HEAD_DIM)[None, :]
    mask = heads < num_kv_heads
    k = tl.load(k_ptr + token * stride_k_token + heads * stride_k_head + dims, mask=mask)
    v = tl.load(v_ptr + token * stride_v_token + heads * stride_v_head + dims, mask=mask)
    store_heads(
        k,
        k_cache_ptr,
        k_scale_ptr,
        slot,
        stride_kc_slot,
        stride_kc_head,
        stride_ks_slot,
        num_kv_heads,
        HEAD_DIM,
        BLOCK_H,
        FORMAT,
    )
    store_heads(
        v,
        v_cache_ptr,
        v_scale_ptr,
        slot,
        stride_vc_slot,
        stride_vc_head,
        stride_vs_slot,
        num_kv_heads,
        HEAD_DIM,
        BLOCK_H,
        FORMAT,
    )


def check_kv_store(
    num_tokens: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
) -> int:
    """What a KV store assumes of the cache [slots, Hkv, D] for new K/V of `dtype`; returns the FORMAT code."""
    assert k_cache.dim() == 3 and k_cache.shape[1:] == (num_kv_heads, head_dim) and v_cache.shape == k_cache.shape
    assert k_cache.dtype == v_cache.dtype and k_cache.stride(2) == v_cache.stride(2) == 1
    assert slot_mapping.shape == (num_tokens,) and slot_mapping.dtype in (torch.int32, torch.int64)
    fmt = kv_format(k_cache, k_scale)
    assert fmt == kv_format(v_cache, v_scale) and (fmt or k_cache.dtype == dtype), (
        f"cache {k_cache.dtype} for K/V of {dtype}"
    )
    return fmt


def store_kv_triton(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    assert k.dim() == 3 and k.shape == v.shape, f"k, v must be [T, Hkv, D], got {tuple(k.shape)}, {tuple(v.shape)}"
    num_tokens, num_kv_heads, head_dim = k.shape
    assert head_dim >= 16 and head_dim & (head_dim - 1) == 0, f"head_dim must be a power of two >= 16, got {head_dim}"
    assert k.dtype == v.dtype and k.stride(2) == v.stride(2) == 1
    fmt = check_kv_store(num_tokens, num_kv_heads, head_dim, k.dtype, k_cache, v_cache, slot_mapping, k_scale, v_scale)
    if num_tokens == 0:
        return
    k_scale, v_scale = (k_scale, v_scale) if fmt else (slot_mapping, slot_mapping)  # placeholders, never touched
    _store_kv_kernel[(num_tokens,)](
        k,
        v,
        k_cache,
        v_cache,
        k_scale,
        v_scale,
        slot_mapping,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        v_cache.stride(0),
        v_cache.stride(1),
        k_scale.stride(0),
        v_scale.stride(0),
        num_kv_heads,
        HEAD_DIM=head_dim,
        BLOCK_H=triton.next_power_of_2(num_kv_heads),
        FORMAT=fmt,
        num_warps=1,
    )


def store_kv_ref(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    is_real = slot_mapping >= 0
    slots = slot_mapping[is_real].long()
    for x, cache, scales in ((k, k_cache, k_scale), (v, v_cache, v_scale)):
        x = x[is_real]
        if scales is None:
            cache[slots] = x
        else:
            fmt = FORMAT_OF_DTYPE[cache.dtype]
            scales[slots] = row_scale_ref(x, fmt)
            cache[slots] = quantize_ref(x, scales[slots], fmt)
