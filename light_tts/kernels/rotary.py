"""Rotary embedding (rotate-half / neox style, as HF Qwen2) applied in place to q and k: kernel, launcher, reference."""
import torch
import triton
import triton.language as tl


def build_cos_sin_cache(max_pos: int, head_dim: int, theta: float, device: torch.device | str) -> torch.Tensor:
    """[max_pos, head_dim] fp32: cos of the head_dim/2 frequencies in the first half, sin in the second half."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim))
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float64, device=device), inv_freq)  # (max_pos, D/2)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).float()


@triton.jit
def _rotate_heads(x_ptr, stride_token, stride_head, token, num_heads, cos, sin,
                  HALF_D: tl.constexpr, BLOCK_H: tl.constexpr):
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, HALF_D)[None, :]
    mask = heads < num_heads
    first_ptr = x_ptr + token * stride_token + heads * stride_head + dims  # (BLOCK_H, D/2)
    x1 = tl.load(first_ptr, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(first_ptr + HALF_D, mask=mask, other=0.0).to(tl.float32)
    dtype = x_ptr.dtype.element_ty
    tl.store(first_ptr, (x1 * cos - x2 * sin).to(dtype), mask=mask)
    tl.store(first_ptr + HALF_D, (x2 * cos + x1 * sin).to(dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, positions_ptr, cos_sin_ptr,
    stride_q_token, stride_q_head, stride_k_token, stride_k_head, stride_cos_sin,
    num_q_heads, num_kv_heads,
    HALF_D: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HKV: tl.constexpr,
):
    # one program rotates every q and k head of one token
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    dims = tl.arange(0, HALF_D)[None, :]
    cos = tl.load(cos_sin_ptr + pos * stride_cos_sin + dims)
    sin = tl.load(cos_sin_ptr + pos * stride_cos_sin + HALF_D + dims)
    _rotate_heads(q_ptr, stride_q_token, stride_q_head, token, num_q_heads, cos, sin, HALF_D, BLOCK_HQ)
    _rotate_heads(k_ptr, stride_k_token, stride_k_head, token, num_kv_heads, cos, sin, HALF_D, BLOCK_HKV)


def apply_rotary_triton(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor) -> None:
    assert q.dim() == 3 and k.dim() == 3 and q.shape[0] == k.shape[0] and q.shape[2] == k.shape[2]
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    assert head_dim >= 16 and head_dim & (head_dim - 1) == 0, f"head_dim must be a power of two >= 16, got {head_dim}"
    assert q.stride(2) == 1 and k.stride(2) == 1 and q.dtype == k.dtype
    assert positions.shape == (num_tokens,) and not positions.is_floating_point()
    assert cos_sin_cache.dim() == 2 and cos_sin_cache.shape[1] == head_dim and cos_sin_cache.dtype == torch.float32
    assert cos_sin_cache.stride(1) == 1
    if num_tokens == 0:
        return
    _rotary_kernel[(num_tokens,)](
        q, k, positions, cos_sin_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos_sin_cache.stride(0),
        num_q_heads, num_kv_heads,
        HALF_D=head_dim // 2,
        BLOCK_HQ=triton.next_power_of_2(num_q_heads), BLOCK_HKV=triton.next_power_of_2(num_kv_heads),
        num_warps=1,
    )


def apply_rotary_ref(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor) -> None:
    half = q.shape[-1] // 2
    cos_sin = cos_sin_cache[positions.long()]  # (T, D)
    cos, sin = cos_sin[:, None, :half], cos_sin[:, None, half:]  # (T, 1, D/2)
    for x in (q, k):
        x1, x2 = x[..., :half].float(), x[..., half:].float()
        x.copy_(torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1))
