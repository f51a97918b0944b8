"""Decoder-layer kernels for small decode batches (a few rows): each projection is one matrix-vector launch with the
work around it folded in, so a batch-1 step launches about half the kernels of the general path (which a step of
one row is bound by: ~277 launches of ~4 us for Qwen2-0.5B, docs/performance.md).

- norm_linear: out = rmsnorm(h + residual) @ W^T + bias, the norm (and the residual add, written out by one
  program) in the prologue of every program; without a norm weight a plain product (o_proj, down_proj).
- qkv_rope: rmsnorm + the qkv projection + its bias + rotary + the K/V store, one program per head (the rotation
  pairs dimension d with d + D/2 and a quantized cache takes a scale per head, so a head stays in one program).
- gate_up_silu: rmsnorm + the gate_up projection + silu(gate) * up, a program's gate and up columns side by side.

Weights are in the compute dtype, int8 (weight-only) or fp8 (w8a8: each normalised row is quantized per token, as
the general fp8 path does), with a float32 scale per output channel (quant.py). Products run on CUDA cores in
float32: a few rows give tensor cores nothing to do. Rounding follows the general path: the residual sum, the
normalised row and each projection's output are rounded to the activation dtype where those kernels store them.
The references compose the general path's references, so a test holds each kernel to what it replaces.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from light_tts.kernels.llm.activation import silu_and_mul_ref
from light_tts.kernels.llm.kv_store import check_kv_store
from light_tts.kernels.llm.quant import FORMAT_CODE, FORMAT_OF_DTYPE, FP8, INT8, quantize_rows, scale_of
from light_tts.kernels.llm.quant_linear import fp8_linear_ref, int8_linear_ref
from light_tts.kernels.llm.rmsnorm import rms_norm_ref
from light_tts.kernels.llm.rotary import apply_rotary_ref, store_halves

MAX_ROWS = 8  # the kernels hold every row of the batch in one program; larger batches take the general path
PRODUCT_SIZE = 4096  # values of a program's (rows, columns, BLOCK_K) product tile: 32 float32 per thread at 4 warps


@triton.jit
def _summed(h_ptr, res_ptr, rows, ks, mask, stride_h, stride_r, HAS_RES: tl.constexpr):
    """h (+ residual) at (rows, ks) as float32, the sum rounded to the activation dtype as the residual stream is."""
    s = tl.load(h_ptr + rows[:, None] * stride_h + ks[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r = tl.load(res_ptr + rows[:, None] * stride_r + ks[None, :], mask=mask, other=0.0).to(tl.float32)
        s = (s + r).to(h_ptr.dtype.element_ty).to(tl.float32)
    return s


@triton.jit
def _x_block(
    h_ptr,
    res_ptr,
    g_ptr,
    rows,
    ks,
    mask,
    in_k,
    stride_h,
    stride_r,
    rstd,
    x_scale,
    NORM: tl.constexpr,
    HAS_RES: tl.constexpr,
    ACT_FP8: tl.constexpr,
):
    """The block (rows, ks) of the projection's input as float32: rmsnorm(h + residual) * g rounded to the
    activation dtype (or h itself), then quantized to fp8 with the row scales when ACT_FP8."""
    if NORM:
        s = _summed(h_ptr, res_ptr, rows, ks, mask, stride_h, stride_r, HAS_RES)
        g = tl.load(g_ptr + ks, mask=in_k, other=0.0).to(tl.float32)
        x = (s * rstd[:, None] * g[None, :]).to(h_ptr.dtype.element_ty).to(tl.float32)
    else:
        x = tl.load(h_ptr + rows[:, None] * stride_h + ks[None, :], mask=mask, other=0.0).to(tl.float32)
    if ACT_FP8:
        x = quantize_rows(x, x_scale, 2)
    return x


@triton.jit
def _row_stats(
    h_ptr,
    res_ptr,
    res_out_ptr,
    g_ptr,
    rows,
    is_row,
    is_writer,
    K,
    eps,
    stride_h,
    stride_r,
    stride_ro,
    NORM: tl.constexpr,
    HAS_RES: tl.constexpr,
    ACT_FP8: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Each row's 1 / rms and fp8 scale (BLOCK_M,) (ones where unused); the writer program also stores the
    residual sum, which every program computes alike."""
    rstd = tl.full((BLOCK_M,), 1.0, tl.float32)
    if NORM:
        sumsq = tl.zeros((BLOCK_M,), tl.float32)
        for start in range(0, K, BLOCK_K):
            ks = start + tl.arange(0, BLOCK_K)
            mask = is_row[:, None] & (ks[None, :] < K)
            s = _summed(h_ptr, res_ptr, rows, ks, mask, stride_h, stride_r, HAS_RES)
            if HAS_RES:
                out_ptr = res_out_ptr + rows[:, None] * stride_ro + ks[None, :]
                tl.store(out_ptr, s.to(res_out_ptr.dtype.element_ty), mask=mask & is_writer)
            sumsq += tl.sum(s * s, axis=1)
        rstd = tl.rsqrt(sumsq / K + eps)
    x_scale = tl.full((BLOCK_M,), 1.0, tl.float32)
    if ACT_FP8:
        amax = tl.zeros((BLOCK_M,), tl.float32)
        for start in range(0, K, BLOCK_K):
            ks = start + tl.arange(0, BLOCK_K)
            in_k = ks < K
            mask = is_row[:, None] & in_k[None, :]
            x = _x_block(
                h_ptr, res_ptr, g_ptr, rows, ks, mask, in_k, stride_h, stride_r, rstd, x_scale, NORM, HAS_RES, False
            )
            amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1))
        x_scale = scale_of(amax, 448.0)
    return rstd, x_scale


@triton.jit
def _dot(acc, x, w_ptr, w_offsets, is_col, ks, in_k):
    """acc (M, N) + x (M, BLOCK_K) @ W[(N,) rows at w_offsets, ks]^T, in float32 on CUDA cores."""
    w = tl.load(w_ptr + w_offsets[:, None] + ks[None, :], mask=is_col[:, None] & in_k[None, :], other=0.0)
    return acc + tl.sum(x[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)


@triton.jit
def _scaled(acc, w_scale_ptr, cols, is_col, x_scale, W_FORMAT: tl.constexpr):
    """The products times the weight's channel scales (and fp8's row scales)."""
    if W_FORMAT != 0:
        acc = acc * tl.load(w_scale_ptr + cols, mask=is_col, other=0.0)[None, :]
    if W_FORMAT == 2:
        acc = acc * x_scale[:, None]
    return acc


@triton.jit
def _norm_linear_kernel(
    h_ptr,
    res_ptr,
    res_out_ptr,
    g_ptr,
    w_ptr,
    w_scale_ptr,
    bias_ptr,
    out_ptr,
    M,
    N,
    K,
    eps,
    stride_h,
    stride_r,
    stride_ro,
    stride_w,
    stride_o,
    NORM: tl.constexpr,
    HAS_RES: tl.constexpr,
    W_FORMAT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # one program: BLOCK_N output columns of every row
    pid = tl.program_id(0)
    rows = tl.arange(0, BLOCK_M)
    is_row = rows < M
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    is_col = cols < N
    rstd, x_scale = _row_stats(
        h_ptr,
        res_ptr,
        res_out_ptr,
        g_ptr,
        rows,
        is_row,
        pid == 0,
        K,
        eps,
        stride_h,
        stride_r,
        stride_ro,
        NORM,
        HAS_RES,
        W_FORMAT == 2,
        BLOCK_M,
        BLOCK_K,
    )
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    w_offsets = cols.to(tl.int64) * stride_w
    for start in range(0, K, BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        in_k = ks < K
        mask = is_row[:, None] & in_k[None, :]
        x = _x_block(
            h_ptr,
            res_ptr,
            g_ptr,
            rows,
            ks,
            mask,
            in_k,
            stride_h,
            stride_r,
            rstd,
            x_scale,
            NORM,
            HAS_RES,
            W_FORMAT == 2,
        )
        acc = _dot(acc, x, w_ptr, w_offsets, is_col, ks, in_k)
    acc = _scaled(acc, w_scale_ptr, cols, is_col, x_scale, W_FORMAT)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=is_col, other=0.0).to(tl.float32)[None, :]
    y = acc.to(h_ptr.dtype.element_ty)  # the projection's output dtype, then the buffer's (float32 logits)
    tl.store(
        out_ptr + rows[:, None] * stride_o + cols[None, :],
        y.to(out_ptr.dtype.element_ty),
        mask=is_row[:, None] & is_col[None, :],
    )


@triton.jit
def _gate_up_silu_kernel(
    h_ptr,
    res_ptr,
    res_out_ptr,
    g_ptr,
    w_ptr,
    w_scale_ptr,
    out_ptr,
    M,
    N,
    K,
    eps,
    stride_h,
    stride_r,
    stride_ro,
    stride_w,
    stride_o,
    HAS_RES: tl.constexpr,
    W_FORMAT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # one program: BLOCK_N columns of silu(gate) * up for every row, from weight rows n (gate) and N + n (up)
    pid = tl.program_id(0)
    rows = tl.arange(0, BLOCK_M)
    is_row = rows < M
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    is_col = cols < N
    rstd, x_scale = _row_stats(
        h_ptr,
        res_ptr,
        res_out_ptr,
        g_ptr,
        rows,
        is_row,
        pid == 0,
        K,
        eps,
        stride_h,
        stride_r,
        stride_ro,
        True,
        HAS_RES,
        W_FORMAT == 2,
        BLOCK_M,
        BLOCK_K,
    )
    gate = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    up = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    gate_offsets = cols.to(tl.int64) * stride_w
    up_offsets = (cols + N).to(tl.int64) * stride_w
    for start in range(0, K, BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        in_k = ks < K
        mask = is_row[:, None] & in_k[None, :]
        x = _x_block(
            h_ptr,
            res_ptr,
            g_ptr,
            rows,
            ks,
            mask,
            in_k,
            stride_h,
            stride_r,
            rstd,
            x_scale,
            True,
            HAS_RES,
            W_FORMAT == 2,
        )
        gate = _dot(gate, x, w_ptr, gate_offsets, is_col, ks, in_k)
        up = _dot(up, x, w_ptr, up_offsets, is_col, ks, in_k)
    dtype = h_ptr.dtype.element_ty
    gate = _scaled(gate, w_scale_ptr, cols, is_col, x_scale, W_FORMAT).to(dtype).to(tl.float32)
    up = _scaled(up, w_scale_ptr, cols + N, is_col, x_scale, W_FORMAT).to(dtype).to(tl.float32)
    out = gate * tl.sigmoid(gate) * up
    tl.store(
        out_ptr + rows[:, None] * stride_o + cols[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=is_row[:, None] & is_col[None, :],
    )


@triton.jit
def _qkv_rope_kernel(
    h_ptr,
    res_ptr,
    res_out_ptr,
    g_ptr,
    w_ptr,
    w_scale_ptr,
    bias_ptr,
    positions_ptr,
    cos_sin_ptr,
    slots_ptr,
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    k_scale_ptr,
    v_scale_ptr,
    M,
    K,
    eps,
    num_q_heads,
    num_kv_heads,
    stride_h,
    stride_r,
    stride_ro,
    stride_w,
    stride_cos_sin,
    stride_q_token,
    stride_q_head,
    stride_kc_slot,
    stride_kc_head,
    stride_vc_slot,
    stride_vc_head,
    stride_ks_slot,
    stride_vs_slot,
    HAS_RES: tl.constexpr,
    W_FORMAT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    KV_FORMAT: tl.constexpr,
    HALF_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # one program per head of the projection's output (q heads, then k heads, then v heads), every row
    head = tl.program_id(0)
    rows = tl.arange(0, BLOCK_M)
    is_row = rows < M
    dims = tl.arange(0, HALF_D)
    is_dim = dims < HALF_D
    rstd, x_scale = _row_stats(
        h_ptr,
        res_ptr,
        res_out_ptr,
        g_ptr,
        rows,
        is_row,
        head == 0,
        K,
        eps,
        stride_h,
        stride_r,
        stride_ro,
        True,
        HAS_RES,
        W_FORMAT == 2,
        BLOCK_M,
        BLOCK_K,
    )
    first = head * 2 * HALF_D + dims  # the head's output columns of its first half; + HALF_D the second
    first_offsets = first.to(tl.int64) * stride_w
    second_offsets = (first + HALF_D).to(tl.int64) * stride_w
    x1 = tl.zeros((BLOCK_M, HALF_D), tl.float32)
    x2 = tl.zeros((BLOCK_M, HALF_D), tl.float32)
    for start in range(0, K, BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        in_k = ks < K
        mask = is_row[:, None] & in_k[None, :]
        x = _x_block(
            h_ptr,
            res_ptr,
            g_ptr,
            rows,
            ks,
            mask,
            in_k,
            stride_h,
            stride_r,
            rstd,
            x_scale,
            True,
            HAS_RES,
            W_FORMAT == 2,
        )
        x1 = _dot(x1, x, w_ptr, first_offsets, is_dim, ks, in_k)
        x2 = _dot(x2, x, w_ptr, second_offsets, is_dim, ks, in_k)
    dtype = h_ptr.dtype.element_ty
    x1 = _scaled(x1, w_scale_ptr, first, is_dim, x_scale, W_FORMAT).to(dtype).to(tl.float32)
    x2 = _scaled(x2, w_scale_ptr, first + HALF_D, is_dim, x_scale, W_FORMAT).to(dtype).to(tl.float32)
    if HAS_BIAS:  # added after the projection's rounding, as the rotary kernel adds it
        x1 = (x1 + tl.load(bias_ptr + first).to(tl.float32)[None, :]).to(dtype).to(tl.float32)
        x2 = (x2 + tl.load(bias_ptr + first + HALF_D).to(tl.float32)[None, :]).to(dtype).to(tl.float32)
    # q and k heads rotate at each row's position; v heads pass through
    pos = tl.load(positions_ptr + rows, mask=is_row, other=0).to(tl.int64)
    cos = tl.load(cos_sin_ptr + pos[:, None] * stride_cos_sin + dims[None, :], mask=is_row[:, None], other=1.0)
    sin = tl.load(cos_sin_ptr + pos[:, None] * stride_cos_sin + HALF_D + dims[None, :], mask=is_row[:, None], other=0.0)
    is_rotated = head < num_q_heads + num_kv_heads
    r1 = tl.where(is_rotated, (x1 * cos - x2 * sin).to(dtype).to(tl.float32), x1)
    r2 = tl.where(is_rotated, (x2 * cos + x1 * sin).to(dtype).to(tl.float32), x2)
    q_rows = q_ptr + rows.to(tl.int64)[:, None] * stride_q_token + head * stride_q_head + dims[None, :]
    is_q = is_row[:, None] & (head < num_q_heads)
    tl.store(q_rows, r1.to(q_ptr.dtype.element_ty), mask=is_q)
    tl.store(q_rows + HALF_D, r2.to(q_ptr.dtype.element_ty), mask=is_q)
    slot = tl.load(slots_ptr + rows, mask=is_row, other=-1).to(tl.int64)  # -1: a padding row, not stored
    is_stored = is_row & (slot >= 0)
    k_head = head - num_q_heads
    v_head = k_head - num_kv_heads
    is_k = is_stored & (k_head >= 0) & (v_head < 0)
    is_v = is_stored & (v_head >= 0)
    k_offsets = slot * stride_kc_slot + k_head * stride_kc_head
    v_offsets = slot * stride_vc_slot + v_head * stride_vc_head
    store_halves(r1, r2, k_cache_ptr, k_scale_ptr, k_offsets, slot * stride_ks_slot + k_head, is_k, HALF_D, KV_FORMAT)
    store_halves(r1, r2, v_cache_ptr, v_scale_ptr, v_offsets, slot * stride_vs_slot + v_head, is_v, HALF_D, KV_FORMAT)


def weight_format(weight: torch.Tensor, dtype: torch.dtype) -> int:
    """The kernels' W_FORMAT: 0 for a weight in the activation dtype, else its quantized format's code."""
    fmt = FORMAT_OF_DTYPE.get(weight.dtype)
    assert fmt or weight.dtype == dtype, f"a {weight.dtype} weight for {dtype} activations"
    return FORMAT_CODE[fmt] if fmt else 0


def _blocks(num_rows: int, num_cols: int, k: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K): every row in one block; enough column blocks to give each SM about two
    programs (a small product is bound by how many SMs stream the weight); BLOCK_K from the product tile left."""
    block_m = triton.next_power_of_2(num_rows)
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132
    block_n = max(2, min(32, triton.next_power_of_2(max(num_cols // (2 * sms), 1))))
    block_k = max(16, min(triton.next_power_of_2(k), PRODUCT_SIZE // (block_m * block_n)))
    return block_m, block_n, block_k


def _check(h: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None) -> int:
    assert h.dim() == 2 and h.stride(1) == 1 and 0 < h.shape[0] <= MAX_ROWS, f"h must be [1..{MAX_ROWS}, K]"
    assert weight.dim() == 2 and weight.stride(1) == 1 and weight.shape[1] == h.shape[1]
    assert residual is None or (residual.shape == h.shape and residual.stride(1) == 1 and residual.dtype == h.dtype)
    return weight_format(weight, h.dtype)


def _norm_args(h, residual, norm_weight):
    """(residual, residual_out, norm weight) pointers: placeholders where unused; residual_out is None without one."""
    residual_out = None if residual is None else torch.empty_like(h)
    return (
        h if residual is None else residual,
        h if residual_out is None else residual_out,
        h if norm_weight is None else norm_weight,
        residual_out,
    )


def norm_linear_triton(
    h: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    eps: float = 0.0,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """h [M, K] -> (rmsnorm(h + residual) * norm_weight @ W^T + bias [M, N] in out_dtype (default h's), the
    residual sum or h itself); without norm_weight (h @ W^T + bias, None)."""
    w_format = _check(h, weight, residual)
    assert norm_weight is not None or residual is None, "a residual is added before the norm"
    (num_rows, k), n = h.shape, weight.shape[0]
    out = torch.empty((num_rows, n), dtype=out_dtype or h.dtype, device=h.device)
    res, res_out, g, residual_out = _norm_args(h, residual, norm_weight)
    block_m, block_n, block_k = _blocks(num_rows, n, k, h.device)
    _norm_linear_kernel[(triton.cdiv(n, block_n),)](
        h, res, res_out, g, weight, weight if weight_scale is None else weight_scale, weight if bias is None else bias,
        out, num_rows, n, k, eps, h.stride(0), res.stride(0), res_out.stride(0), weight.stride(0), out.stride(0),
        NORM=norm_weight is not None, HAS_RES=residual is not None, W_FORMAT=w_format, HAS_BIAS=bias is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4,
    )  # fmt: skip
    if norm_weight is None:
        return out, None
    return out, h if residual is None else residual_out


def gate_up_silu_triton(
    h: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """h [M, H] -> (silu(gate) * up [M, I] of rmsnorm(h + residual) * norm_weight @ W^T with W [2I, H] (gate rows,
    then up rows), the residual sum or h itself)."""
    w_format = _check(h, weight, residual)
    (num_rows, k), n = h.shape, weight.shape[0] // 2
    out = torch.empty((num_rows, n), dtype=h.dtype, device=h.device)
    res, res_out, g, residual_out = _norm_args(h, residual, norm_weight)
    block_m, block_n, block_k = _blocks(num_rows, n, k, h.device)
    block_k = max(16, block_k // 2)  # two product tiles, gate and up
    _gate_up_silu_kernel[(triton.cdiv(n, block_n),)](
        h, res, res_out, g, weight, weight if weight_scale is None else weight_scale, out, num_rows, n, k, eps,
        h.stride(0), res.stride(0), res_out.stride(0), weight.stride(0), out.stride(0),
        HAS_RES=residual is not None, W_FORMAT=w_format, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=4,
    )  # fmt: skip
    return out, h if residual is None else residual_out


def qkv_rope_triton(
    h: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """h [M, H] -> (q [M, Hq, D] rotated, the residual sum or h itself); the rotated k and v of each row are
    written to the cache at its slot (-1: not stored), quantized with a scale per head for an int8 or fp8 cache."""
    w_format = _check(h, weight, residual)
    (num_rows, k), (_, num_kv_heads, head_dim) = h.shape, k_cache.shape
    num_q_heads = weight.shape[0] // head_dim - 2 * num_kv_heads
    assert head_dim >= 16 and head_dim & (head_dim - 1) == 0, f"head_dim must be a power of two >= 16, got {head_dim}"
    assert bias is None or bias.shape == (weight.shape[0],) and bias.is_contiguous()
    assert positions.shape == (num_rows,) and cos_sin_cache.shape[1] == head_dim and cos_sin_cache.stride(1) == 1
    kv_format = check_kv_store(
        num_rows, num_kv_heads, head_dim, h.dtype, k_cache, v_cache, slot_mapping, k_scale, v_scale
    )
    if not kv_format:
        k_scale = v_scale = cos_sin_cache  # placeholders the kernel never touches
    q = torch.empty((num_rows, num_q_heads, head_dim), dtype=h.dtype, device=h.device)
    res, res_out, g, residual_out = _norm_args(h, residual, norm_weight)
    block_m = triton.next_power_of_2(num_rows)
    block_k = max(16, min(triton.next_power_of_2(k), PRODUCT_SIZE // (block_m * head_dim)))
    _qkv_rope_kernel[(num_q_heads + 2 * num_kv_heads,)](
        h, res, res_out, g, weight, weight if weight_scale is None else weight_scale, weight if bias is None else bias,
        positions, cos_sin_cache, slot_mapping, q, k_cache, v_cache, k_scale, v_scale, num_rows, k, eps,
        num_q_heads, num_kv_heads, h.stride(0), res.stride(0), res_out.stride(0), weight.stride(0),
        cos_sin_cache.stride(0), q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0),
        v_cache.stride(1), k_scale.stride(0), v_scale.stride(0),
        HAS_RES=residual is not None, W_FORMAT=w_format, HAS_BIAS=bias is not None, KV_FORMAT=kv_format,
        HALF_D=head_dim // 2, BLOCK_M=block_m, BLOCK_K=block_k, num_warps=4,
    )  # fmt: skip
    return q, h if residual is None else residual_out


def linear_ref(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor | None, bias: torch.Tensor | None):
    """The general path's product for a weight in the compute dtype, fp8 (w8a8) or int8 (weight-only)."""
    fmt = FORMAT_OF_DTYPE.get(weight.dtype)
    if fmt == FP8:
        return fp8_linear_ref(x, weight, weight_scale, bias)
    if fmt == INT8:
        return int8_linear_ref(x, weight, weight_scale, bias)
    return F.linear(x.float(), weight.float(), None if bias is None else bias.float()).to(x.dtype)


def _norm_ref(h, norm_weight, eps, residual):
    x, residual_out = rms_norm_ref(h, norm_weight, eps, residual)
    return x, h if residual is None else residual_out


def norm_linear_ref(
    h, weight, weight_scale=None, bias=None, norm_weight=None, eps=0.0, residual=None, out_dtype=None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    x, residual_out = (h, None) if norm_weight is None else _norm_ref(h, norm_weight, eps, residual)
    return linear_ref(x, weight, weight_scale, bias).to(out_dtype or h.dtype), residual_out


def gate_up_silu_ref(h, weight, weight_scale, norm_weight, eps, residual=None) -> tuple[torch.Tensor, torch.Tensor]:
    x, residual_out = _norm_ref(h, norm_weight, eps, residual)
    return silu_and_mul_ref(linear_ref(x, weight, weight_scale, None)), residual_out


def qkv_rope_ref(
    h, weight, weight_scale, bias, norm_weight, eps, residual, positions, cos_sin_cache, slot_mapping, k_cache,
    v_cache, k_scale=None, v_scale=None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    x, residual_out = _norm_ref(h, norm_weight, eps, residual)
    num_kv_heads, head_dim = k_cache.shape[1:]
    qkv = linear_ref(x, weight, weight_scale, None).view(h.shape[0], -1, head_dim)  # (M, Hq + 2 Hkv, D)
    q, k, v = qkv.split([qkv.shape[1] - 2 * num_kv_heads, num_kv_heads, num_kv_heads], dim=1)
    apply_rotary_ref(q, k, positions, cos_sin_cache, v, k_cache, v_cache, slot_mapping, bias, k_scale, v_scale)
    return q.contiguous(), residual_out
