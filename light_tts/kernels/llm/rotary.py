"""Rotary embedding (rotate-half / neox style, as HF Qwen2) applied in place to q and k: kernel, launcher, reference.

The kernel is the qkv projection's epilogue too (fewer launches per layer, which bound a small decode batch): it
can add the projection's bias to q, k and v first (so the GEMM runs without one), and store the rotated k and v
into the KV cache (quantized with a scale per head when the cache is int8 or fp8, as kv_store does).
"""

import torch
import triton
import triton.language as tl

from light_tts.kernels.llm.kv_store import check_kv_store, store_kv_ref
from light_tts.kernels.llm.quant import format_scale, quantize_rows


def build_cos_sin_cache(
    max_pos: int, head_dim: int, theta: float, device: torch.device | str, inv_freq: torch.Tensor | None = None
) -> torch.Tensor:
    """[max_pos, head_dim] fp32: cos of the head_dim/2 frequencies in the first half, sin in the second half.
    inv_freq: the frequencies when they are not the plain ones of theta (Llama 3's scaled rope)."""
    if inv_freq is None:
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    inv_freq = inv_freq.to(device, torch.float64)
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float64, device=device), inv_freq)  # (max_pos, D/2)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).float()


@triton.jit
def _load_heads(
    x_ptr,
    bias_ptr,
    stride_token,
    stride_head,
    token,
    num_heads,
    HALF_D: tl.constexpr,
    BLOCK_H: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    """One token's heads as two fp32 halves (BLOCK_H, D/2), the bias [heads, D] added and rounded to the input
    dtype as a GEMM epilogue would; also returns the pointer to the first halves and the head mask."""
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, HALF_D)[None, :]
    mask = heads < num_heads
    first_ptr = x_ptr + token * stride_token + heads * stride_head + dims  # (BLOCK_H, D/2)
    x1 = tl.load(first_ptr, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(first_ptr + HALF_D, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dtype = x_ptr.dtype.element_ty
        bias_first_ptr = bias_ptr + heads * (2 * HALF_D) + dims
        x1 = (x1 + tl.load(bias_first_ptr, mask=mask, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
        x2 = (x2 + tl.load(bias_first_ptr + HALF_D, mask=mask, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
    return x1, x2, first_ptr, mask


@triton.jit
def _rotate_and_store(x1, x2, cos, sin, first_ptr, mask, HALF_D: tl.constexpr):
    """Writes the rotated halves back in place; returns them (BLOCK_H, D/2) in the buffer's dtype."""
    dtype = first_ptr.dtype.element_ty
    r1 = (x1 * cos - x2 * sin).to(dtype)
    r2 = (x2 * cos + x1 * sin).to(dtype)
    tl.store(first_ptr, r1, mask=mask)
    tl.store(first_ptr + HALF_D, r2, mask=mask)
    return r1, r2


@triton.jit
def store_halves(
    x1, x2, cache_ptr, scale_ptr, offsets, scale_offsets, mask, HALF_D: tl.constexpr, FORMAT: tl.constexpr
):
    """Writes rows given as halves (R, D/2) (one head of one token each) at cache_ptr + offsets (R,), where mask
    (R,) holds; with FORMAT > 0 quantized with one scale per row, written at scale_ptr + scale_offsets (R,)
    (kv_store.store_heads, for split heads)."""
    ptr = cache_ptr + offsets[:, None] + tl.arange(0, HALF_D)[None, :]
    if FORMAT != 0:
        x1, x2 = x1.to(tl.float32), x2.to(tl.float32)
        scale = format_scale(tl.maximum(tl.max(tl.abs(x1), axis=1), tl.max(tl.abs(x2), axis=1)), FORMAT)
        x1, x2 = quantize_rows(x1, scale, FORMAT), quantize_rows(x2, scale, FORMAT)
        tl.store(scale_ptr + scale_offsets, scale, mask=mask)
    tl.store(ptr, x1.to(cache_ptr.dtype.element_ty), mask=mask[:, None])
    tl.store(ptr + HALF_D, x2.to(cache_ptr.dtype.element_ty), mask=mask[:, None])


@triton.jit
def _rotary_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    positions_ptr,
    cos_sin_ptr,
    slot_mapping_ptr,
    k_cache_ptr,
    v_cache_ptr,
    k_scale_ptr,
    v_scale_ptr,
    q_bias_ptr,
    k_bias_ptr,
    v_bias_ptr,
    stride_q_token,
    stride_q_head,
    stride_k_token,
    stride_k_head,
    stride_v_token,
    stride_v_head,
    stride_cos_sin,
    stride_kc_slot,
    stride_kc_head,
    stride_vc_slot,
    stride_vc_head,
    stride_ks_slot,
    stride_vs_slot,
    num_q_heads,
    num_kv_heads,
    HALF_D: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HKV: tl.constexpr,
    STORE_KV: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    KV_FORMAT: tl.constexpr,
):
    # one program rotates every q and k head of one token (and stores its k, v at its slot; slot < 0: padding)
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    dims = tl.arange(0, HALF_D)[None, :]
    cos = tl.load(cos_sin_ptr + pos * stride_cos_sin + dims)
    sin = tl.load(cos_sin_ptr + pos * stride_cos_sin + HALF_D + dims)
    # every load before any store: q, k and v are views of one buffer, so the compiler cannot move a load above a
    # store, and a chain of dependent round trips would bound this one-token launch
    q1, q2, q_first_ptr, q_mask = _load_heads(
        q_ptr, q_bias_ptr, stride_q_token, stride_q_head, token, num_q_heads, HALF_D, BLOCK_HQ, HAS_BIAS
    )
    k1, k2, k_first_ptr, k_mask = _load_heads(
        k_ptr, k_bias_ptr, stride_k_token, stride_k_head, token, num_kv_heads, HALF_D, BLOCK_HKV, HAS_BIAS
    )
    # v is k itself when no v is given: then neither branch below uses it
    v1, v2, v_first_ptr, v_mask = _load_heads(
        v_ptr, v_bias_ptr, stride_v_token, stride_v_head, token, num_kv_heads, HALF_D, BLOCK_HKV, HAS_BIAS
    )
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)  # positions stand in when nothing is stored
    _rotate_and_store(q1, q2, cos, sin, q_first_ptr, q_mask, HALF_D)
    k1, k2 = _rotate_and_store(k1, k2, cos, sin, k_first_ptr, k_mask, HALF_D)
    v1, v2 = v1.to(v_ptr.dtype.element_ty), v2.to(v_ptr.dtype.element_ty)
    if HAS_BIAS:
        tl.store(v_first_ptr, v1, mask=v_mask)
        tl.store(v_first_ptr + HALF_D, v2, mask=v_mask)
    if STORE_KV:
        heads = tl.arange(0, BLOCK_HKV)
        is_stored = (heads < num_kv_heads) & (slot >= 0)
        k_offsets, v_offsets = (
            slot * stride_kc_slot + heads * stride_kc_head,
            slot * stride_vc_slot + heads * stride_vc_head,
        )
        store_halves(
            k1, k2, k_cache_ptr, k_scale_ptr, k_offsets, slot * stride_ks_slot + heads, is_stored, HALF_D, KV_FORMAT
        )
        store_halves(
            v1, v2, v_cache_ptr, v_scale_ptr, v_offsets, slot * stride_vs_slot + heads, is_stored, HALF_D, KV_FORMAT
        )


def apply_rotary_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    v: torch.Tensor | None = None,
    k_cache: torch.Tensor | None = None,
    v_cache: torch.Tensor | None = None,
    slot_mapping: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    assert q.dim() == 3 and k.dim() == 3 and q.shape[0] == k.shape[0] and q.shape[2] == k.shape[2]
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    assert head_dim >= 16 and head_dim & (head_dim - 1) == 0, f"head_dim must be a power of two >= 16, got {head_dim}"
    assert q.stride(2) == 1 and k.stride(2) == 1 and q.dtype == k.dtype
    assert positions.shape == (num_tokens,) and not positions.is_floating_point()
    assert cos_sin_cache.dim() == 2 and cos_sin_cache.shape[1] == head_dim and cos_sin_cache.dtype == torch.float32
    assert cos_sin_cache.stride(1) == 1
    store = k_cache is not None
    if v is not None:
        assert v.shape == k.shape and v.stride(2) == 1 and v.dtype == k.dtype
    if bias is not None:
        assert v is not None and bias.shape == ((num_q_heads + 2 * num_kv_heads) * head_dim,) and bias.is_contiguous()
        q_bias, k_bias, v_bias = bias.split([num_q_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim])
    else:
        q_bias = k_bias = v_bias = q  # placeholders the kernel never touches
    kv_format = 0
    if store:
        assert v is not None and v_cache is not None and slot_mapping is not None
        kv_format = check_kv_store(
            num_tokens, num_kv_heads, head_dim, k.dtype, k_cache, v_cache, slot_mapping, k_scale, v_scale
        )
    else:
        k_cache, v_cache, slot_mapping = k, k, positions  # placeholders the kernel never touches
    if not kv_format:
        k_scale = v_scale = cos_sin_cache  # placeholders the kernel never touches
    v = k if v is None else v
    if num_tokens == 0:
        return
    _rotary_kernel[(num_tokens,)](
        q,
        k,
        v,
        positions,
        cos_sin_cache,
        slot_mapping,
        k_cache,
        v_cache,
        k_scale,
        v_scale,
        q_bias,
        k_bias,
        v_bias,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        cos_sin_cache.stride(0),
        k_cache.stride(0),
        k_cache.stride(1),
        v_cache.stride(0),
        v_cache.stride(1),
        k_scale.stride(0),
        v_scale.stride(0),
        num_q_heads,
        num_kv_heads,
        HALF_D=head_dim // 2,
        BLOCK_HQ=triton.next_power_of_2(num_q_heads),
        BLOCK_HKV=triton.next_power_of_2(num_kv_heads),
        STORE_KV=store,
        HAS_BIAS=bias is not None,
        KV_FORMAT=kv_format,
        num_warps=1,
    )


def apply_rotary_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    v: torch.Tensor | None = None,
    k_cache: torch.Tensor | None = None,
    v_cache: torch.Tensor | None = None,
    slot_mapping: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    half = q.shape[-1] // 2
    if bias is not None:
        for x, b in zip((q, k, v), bias.split([q[0].numel(), k[0].numel(), v[0].numel()])):
            x.copy_((x.float() + b.view(x.shape[1:]).float()).to(x.dtype))
    cos_sin = cos_sin_cache[positions.long()]  # (T, D)
    cos, sin = cos_sin[:, None, :half], cos_sin[:, None, half:]  # (T, 1, D/2)
    for x in (q, k):
        x1, x2 = x[..., :half].float(), x[..., half:].float()
        x.copy_(torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1))
    if k_cache is not None:
        store_kv_ref(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)
