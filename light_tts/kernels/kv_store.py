"""Scatter of new tokens' K/V into the token-level KV cache at their slots: Triton kernel, launcher, torch reference.

A negative slot marks a padding token (CUDA-graph padding) whose K/V are dropped.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
    stride_k_token, stride_k_head, stride_v_token, stride_v_head,
    stride_kc_slot, stride_kc_head, stride_vc_slot, stride_vc_head,
    num_kv_heads, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,
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
    tl.store(k_cache_ptr + slot * stride_kc_slot + heads * stride_kc_head + dims, k, mask=mask)
    tl.store(v_cache_ptr + slot * stride_vc_slot + heads * stride_vc_head + dims, v, mask=mask)


def store_kv_triton(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    slot_mapping: torch.Tensor) -> None:
    assert k.dim() == 3 and k.shape == v.shape, f"k, v must be [T, Hkv, D], got {tuple(k.shape)}, {tuple(v.shape)}"
    num_tokens, num_kv_heads, head_dim = k.shape
    assert head_dim >= 16 and head_dim & (head_dim - 1) == 0, f"head_dim must be a power of two >= 16, got {head_dim}"
    assert k_cache.dim() == 3 and k_cache.shape[1:] == (num_kv_heads, head_dim) and v_cache.shape == k_cache.shape
    assert k.dtype == v.dtype == k_cache.dtype == v_cache.dtype
    assert k.stride(2) == v.stride(2) == k_cache.stride(2) == v_cache.stride(2) == 1
    assert slot_mapping.shape == (num_tokens,) and slot_mapping.dtype in (torch.int32, torch.int64)
    if num_tokens == 0:
        return
    _store_kv_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        num_kv_heads, HEAD_DIM=head_dim, BLOCK_H=triton.next_power_of_2(num_kv_heads), num_warps=1,
    )


def store_kv_ref(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 slot_mapping: torch.Tensor) -> None:
    is_real = slot_mapping >= 0
    slots = slot_mapping[is_real].long()
    k_cache[slots] = k[is_real]
    v_cache[slots] = v[is_real]
