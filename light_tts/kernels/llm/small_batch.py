"""Decoder-layer kernels for small decode batches (a few rows): each projection is one matrix-vector launch with the
work around it folded in, so a batch-1 step launches about half the kernels of the general path (which a step of
one row is bound by: ~277 launches of ~4 us for Qwen2-0.5B, docs/performance.md).

- norm_linear: out = rmsnorm(h + residual) @ W^T + bias, the norm (and the residual add, written out by one
  program) in the prologue of every program; without a norm weight a plain product (o_proj, down_proj).
- qkv_rope: rmsnorm + the qkv projection + its bias + rotary + the K/V store, a program per head and row (the
  rotation pairs dimension d with d + D/2 and a quantized cache takes a scale per head, so a head stays in one).
- gate_up_silu: rmsnorm + the gate_up projection + silu(gate) * up, a program's gate and up columns side by side.

A program computes a block of one row's outputs (a row's programs re-read the weight from L2, which a few rows
afford), summing elementwise partial products over K and reducing them once at the end. Triton pipelines only the
loads that feed tensor-core products, so the loops do it by hand: each weight block is loaded one iteration ahead
of its products, and the first before the row's statistics, so that two blocks' reads are in flight.

Weights are in the compute dtype, int8 or fp8, with a float32 scale per output channel (quant.py). Products run on
CUDA cores in float32: a few rows give tensor cores nothing to do, so quantized weights multiply the unquantized
activations (weight-only, fp8 too: the general fp8 path's per-token activation quantization serves fp8 tensor
cores, and here it only cost time, ~2x bf16's, docs/performance.md; the products are the more exact). Rounding
follows the general path: the residual sum, the normalised row and each projection's output are rounded to the
activation dtype where those kernels store them. The references compose the general path's references (for fp8,
its int8 weight-only product), so a test holds each kernel to what it replaces.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from light_tts.kernels.llm.activation import silu_and_mul_ref
from light_tts.kernels.llm.kv_store import check_kv_store
from light_tts.kernels.llm.quant import FORMAT_CODE, FORMAT_OF_DTYPE
from light_tts.kernels.llm.quant_linear import int8_linear_ref
from light_tts.kernels.llm.rmsnorm import rms_norm_ref
from light_tts.kernels.llm.rotary import apply_rotary_ref, store_halves

MAX_ROWS = 8  # one program per (row, block of outputs): past a few rows the weight's re-reads outweigh the launches
STATS_BLOCK = 1024  # a row's values the prologue reads at once (one pass for Qwen2-0.5B; more would cost registers)


@triton.jit
def _summed(h_ptr, res_ptr, ks, in_k, HAS_RES: tl.constexpr):
    """A row's h (+ residual) at ks as float32, the sum rounded to the activation dtype as the residual stream is."""
    s = tl.load(h_ptr + ks, mask=in_k, other=0.0).to(tl.float32)
    if HAS_RES:
        r = tl.load(res_ptr + ks, mask=in_k, other=0.0).to(tl.float32)
        s = (s + r).to(h_ptr.dtype.element_ty).to(tl.float32)
    return s


@triton.jit
def _x_block(h_ptr, res_ptr, g_ptr, ks, in_k, rstd, NORM: tl.constexpr, HAS_RES: tl.constexpr):
    """A row's projection input at ks as float32: rmsnorm(h + residual) * g rounded to the activation dtype (or h
    itself)."""
    if NORM:
        s = _summed(h_ptr, res_ptr, ks, in_k, HAS_RES)
        g = tl.load(g_ptr + ks, mask=in_k, other=0.0).to(tl.float32)
        x = (s * rstd * g).to(h_ptr.dtype.element_ty).to(tl.float32)
    else:
        x = tl.load(h_ptr + ks, mask=in_k, other=0.0).to(tl.float32)
    return x


@triton.jit
def _row_stats(
    h_ptr, res_ptr, res_out_ptr, is_writer, K, eps, NORM: tl.constexpr, HAS_RES: tl.constexpr, BLOCK_S: tl.constexpr
):  # fmt: skip
    """A row's 1 / rms (1.0 without a norm); the writer program also stores the residual sum, which every program
    of the row computes alike."""
    rstd = 1.0
    if NORM:
        sumsq = tl.zeros((BLOCK_S,), tl.float32)
        for start in range(0, K, BLOCK_S):
            ks = start + tl.arange(0, BLOCK_S)
            in_k = ks < K
            s = _summed(h_ptr, res_ptr, ks, in_k, HAS_RES)
            if HAS_RES:
                tl.store(res_out_ptr + ks, s.to(res_out_ptr.dtype.element_ty), mask=in_k & is_writer)
            sumsq += s * s
        rstd = tl.rsqrt(tl.sum(sumsq, axis=0) / K + eps)
    return rstd


@triton.jit
def _w_block(w_ptr, w_offsets, is_col, ks, K):
    """W's rows at w_offsets (N,), columns ks (BLOCK_K,): zeros past K, and no memory access where all are."""
    return tl.load(w_ptr + w_offsets[:, None] + ks[None, :], mask=is_col[:, None] & (ks < K)[None, :], other=0.0)


@triton.jit
def _dot(acc, x, w):
    """acc (N, BLOCK_K) + the products of x (BLOCK_K,) with a weight block (N, BLOCK_K); summed over K once, after
    the loop."""
    return acc + w.to(tl.float32) * x[None, :]


@triton.jit
def _scaled(y, w_scale_ptr, cols, is_col, W_FORMAT: tl.constexpr):
    """The summed products (N,) times a quantized weight's channel scales."""
    if W_FORMAT != 0:
        y = y * tl.load(w_scale_ptr + cols, mask=is_col, other=0.0)
    return y


@triton.jit
def _two_products(
    h_ptr, res_ptr, res_out_ptr, g_ptr, w_ptr, offsets1, offsets2, is_col, is_writer, K, eps, HAS_RES: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """The products of a row's normalised input with two blocks of BLOCK_N rows of W, at offsets1 and offsets2, each
    summed over K (gate_up's gate and up columns, qkv_rope's two halves of a head)."""
    w1 = _w_block(w_ptr, offsets1, is_col, tl.arange(0, BLOCK_K), K)  # in flight during the statistics
    w2 = _w_block(w_ptr, offsets2, is_col, tl.arange(0, BLOCK_K), K)
    rstd = _row_stats(h_ptr, res_ptr, res_out_ptr, is_writer, K, eps, True, HAS_RES, BLOCK_S)
    acc1 = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    acc2 = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    for start in range(0, K, BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        next1 = _w_block(w_ptr, offsets1, is_col, ks + BLOCK_K, K)  # one block ahead
        next2 = _w_block(w_ptr, offsets2, is_col, ks + BLOCK_K, K)
        x = _x_block(h_ptr, res_ptr, g_ptr, ks, ks < K, rstd, True, HAS_RES)
        acc1 = _dot(acc1, x, w1)
        acc2 = _dot(acc2, x, w2)
        w1, w2 = next1, next2
    return tl.sum(acc1, axis=1), tl.sum(acc2, axis=1)


@triton.jit
def _norm_linear_kernel(
    h_ptr, res_ptr, res_out_ptr, g_ptr, w_ptr, w_scale_ptr, bias_ptr, out_ptr, N, K, eps, stride_h, stride_r,
    stride_ro, stride_w, stride_o, NORM: tl.constexpr, HAS_RES: tl.constexpr, W_FORMAT: tl.constexpr,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    # one program: BLOCK_N outputs of one row
    pid, row = tl.program_id(0), tl.program_id(1).to(tl.int64)
    h_ptr, res_ptr, res_out_ptr = h_ptr + row * stride_h, res_ptr + row * stride_r, res_out_ptr + row * stride_ro
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    is_col = cols < N
    w_offsets = cols.to(tl.int64) * stride_w
    w = _w_block(w_ptr, w_offsets, is_col, tl.arange(0, BLOCK_K), K)  # in flight during the row's statistics
    rstd = _row_stats(h_ptr, res_ptr, res_out_ptr, pid == 0, K, eps, NORM, HAS_RES, BLOCK_S)
    acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    for start in range(0, K, BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        w_next = _w_block(w_ptr, w_offsets, is_col, ks + BLOCK_K, K)  # one block ahead: two loads in flight
        x = _x_block(h_ptr, res_ptr, g_ptr, ks, ks < K, rstd, NORM, HAS_RES)
        acc = _dot(acc, x, w)
        w = w_next
    y = _scaled(tl.sum(acc, axis=1), w_scale_ptr, cols, is_col, W_FORMAT)
    if HAS_BIAS:
        y += tl.load(bias_ptr + cols, mask=is_col, other=0.0).to(tl.float32)
    y = y.to(h_ptr.dtype.element_ty)  # the projection's output dtype, then the buffer's (float32 logits)
    tl.store(out_ptr + row * stride_o + cols, y.to(out_ptr.dtype.element_ty), mask=is_col)


@triton.jit
def _gate_up_silu_kernel(
    h_ptr, res_ptr, res_out_ptr, g_ptr, w_ptr, w_scale_ptr, out_ptr, N, K, eps, stride_h, stride_r, stride_ro,
    stride_w, stride_o, HAS_RES: tl.constexpr, W_FORMAT: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    # one program: BLOCK_N columns of silu(gate) * up of one row, from weight rows n (gate) and N + n (up)
    pid, row = tl.program_id(0), tl.program_id(1).to(tl.int64)
    h_ptr, res_ptr, res_out_ptr = h_ptr + row * stride_h, res_ptr + row * stride_r, res_out_ptr + row * stride_ro
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    is_col = cols < N
    gate, up = _two_products(
        h_ptr, res_ptr, res_out_ptr, g_ptr, w_ptr, cols.to(tl.int64) * stride_w, (cols + N).to(tl.int64) * stride_w,
        is_col, pid == 0, K, eps, HAS_RES, BLOCK_N, BLOCK_K, BLOCK_S,
    )  # fmt: skip
    dtype = h_ptr.dtype.element_ty
    g = _scaled(gate, w_scale_ptr, cols, is_col, W_FORMAT).to(dtype).to(tl.float32)
    u = _scaled(up, w_scale_ptr, cols + N, is_col, W_FORMAT).to(dtype).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, (g * tl.sigmoid(g) * u).to(out_ptr.dtype.element_ty), mask=is_col)


@triton.jit
def _qkv_rope_kernel(
    h_ptr, res_ptr, res_out_ptr, g_ptr, w_ptr, w_scale_ptr, bias_ptr, positions_ptr, cos_sin_ptr, slots_ptr,
    q_ptr, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr, K, eps, num_q_heads, num_kv_heads, stride_h,
    stride_r, stride_ro, stride_w, stride_cos_sin, stride_q_token, stride_q_head, stride_kc_slot, stride_kc_head,
    stride_vc_slot, stride_vc_head, stride_ks_slot, stride_vs_slot, HAS_RES: tl.constexpr, W_FORMAT: tl.constexpr,
    HAS_BIAS: tl.constexpr, KV_FORMAT: tl.constexpr, HALF_D: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_S: tl.constexpr,
):  # fmt: skip
    # one program: one head of the projection's output (q heads, then k heads, then v heads) of one row
    head, row = tl.program_id(0), tl.program_id(1).to(tl.int64)
    h_ptr, res_ptr, res_out_ptr = h_ptr + row * stride_h, res_ptr + row * stride_r, res_out_ptr + row * stride_ro
    dims = tl.arange(0, HALF_D)
    is_dim = dims < HALF_D
    first = head * 2 * HALF_D + dims  # the head's output columns of its first half; + HALF_D the second
    acc1, acc2 = _two_products(
        h_ptr, res_ptr, res_out_ptr, g_ptr, w_ptr, first.to(tl.int64) * stride_w,
        (first + HALF_D).to(tl.int64) * stride_w, is_dim, head == 0, K, eps, HAS_RES, HALF_D, BLOCK_K, BLOCK_S,
    )  # fmt: skip
    dtype = h_ptr.dtype.element_ty
    x1 = _scaled(acc1, w_scale_ptr, first, is_dim, W_FORMAT).to(dtype).to(tl.float32)
    x2 = _scaled(acc2, w_scale_ptr, first + HALF_D, is_dim, W_FORMAT).to(dtype).to(tl.float32)
    if HAS_BIAS:  # added after the projection's rounding, as the rotary kernel adds it
        x1 = (x1 + tl.load(bias_ptr + first).to(tl.float32)).to(dtype).to(tl.float32)
        x2 = (x2 + tl.load(bias_ptr + first + HALF_D).to(tl.float32)).to(dtype).to(tl.float32)
    # q and k heads rotate at the row's position; v heads pass through
    cos_sin_ptr += tl.load(positions_ptr + row).to(tl.int64) * stride_cos_sin
    cos, sin = tl.load(cos_sin_ptr + dims), tl.load(cos_sin_ptr + HALF_D + dims)
    is_rotated = head < num_q_heads + num_kv_heads
    r1 = tl.where(is_rotated, (x1 * cos - x2 * sin).to(dtype).to(tl.float32), x1)[None, :]  # (1, D/2)
    r2 = tl.where(is_rotated, (x2 * cos + x1 * sin).to(dtype).to(tl.float32), x2)[None, :]
    one = tl.zeros((1,), tl.int64)  # store_halves writes rows (R,): here one
    q_offsets = row * stride_q_token + head * stride_q_head + one
    store_halves(r1, r2, q_ptr, q_ptr, q_offsets, q_offsets, (head + one) < num_q_heads, HALF_D, 0)
    slot = tl.load(slots_ptr + row).to(tl.int64) + one  # -1: a padding row, not stored
    k_head = head - num_q_heads
    v_head = k_head - num_kv_heads
    is_k = (slot >= 0) & (k_head >= 0) & (v_head < 0)
    is_v = (slot >= 0) & (v_head >= 0)
    k_offsets = slot * stride_kc_slot + k_head * stride_kc_head
    v_offsets = slot * stride_vc_slot + v_head * stride_vc_head
    store_halves(r1, r2, k_cache_ptr, k_scale_ptr, k_offsets, slot * stride_ks_slot + k_head, is_k, HALF_D, KV_FORMAT)
    store_halves(r1, r2, v_cache_ptr, v_scale_ptr, v_offsets, slot * stride_vs_slot + v_head, is_v, HALF_D, KV_FORMAT)


def weight_format(weight: torch.Tensor, dtype: torch.dtype) -> int:
    """The kernels' W_FORMAT: 0 for a weight in the activation dtype, else its quantized format's code."""
    fmt = FORMAT_OF_DTYPE.get(weight.dtype)
    assert fmt or weight.dtype == dtype, f"a {weight.dtype} weight for {dtype} activations"
    return FORMAT_CODE[fmt] if fmt else 0


# Launch settings from the sweep of `bench.quant_gemm --small_batch` on an H100 (docs/performance.md, seventh and
# eighth sessions): at one row of Qwen2-0.5B, thin column blocks (4-8 outputs, many programs) with long K blocks for
# the products of K = 896-4864. With weight-only products an fp8 weight costs what a bf16 one does but its bytes, so
# both take the same settings.


def linear_launch(num_cols: int, k: int) -> dict:
    """norm_linear's BLOCK_N (outputs a program sums), BLOCK_K and warps."""
    wide = num_cols > 4096  # an output head: 6,564 (CosyVoice2) to 156,940 (Orpheus) columns
    return dict(
        BLOCK_N=16 if wide else 4, BLOCK_K=min(triton.next_power_of_2(k), 256 if wide else 1024),
        num_warps=4 if wide else 8,
    )  # fmt: skip


def gate_up_launch(k: int) -> dict:
    """gate_up_silu's settings: two (BLOCK_N, BLOCK_K) tiles of partial products, gate and up."""
    return dict(BLOCK_N=8, BLOCK_K=min(triton.next_power_of_2(k), 256), num_warps=4)


def qkv_launch(head_dim: int, k: int) -> dict:
    """qkv_rope's settings: a head's two halves of partial products, (D/2, BLOCK_K) each. 256 for Qwen2's heads
    of 64 (the sweep's best); a head of 128 (Llama's) takes 64, which keeps both halves' blocks and the next ones in
    registers (128 spills, kernel_compile)."""
    return dict(BLOCK_K=min(triton.next_power_of_2(k), 256 if head_dim <= 64 else 64), num_warps=8)


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
    launch: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """h [M, K] -> (rmsnorm(h + residual) * norm_weight @ W^T + bias [M, N] in out_dtype (default h's), the
    residual sum or h itself); without norm_weight (h @ W^T + bias, None). launch: linear_launch's keys (default:
    its settings)."""
    w_format = _check(h, weight, residual)
    assert norm_weight is not None or residual is None, "a residual is added before the norm"
    (num_rows, k), n = h.shape, weight.shape[0]
    out = torch.empty((num_rows, n), dtype=out_dtype or h.dtype, device=h.device)
    res, res_out, g, residual_out = _norm_args(h, residual, norm_weight)
    launch = launch or linear_launch(n, k)
    _norm_linear_kernel[(triton.cdiv(n, launch["BLOCK_N"]), num_rows)](
        h, res, res_out, g, weight, weight if weight_scale is None else weight_scale, weight if bias is None else bias,
        out, n, k, eps, h.stride(0), res.stride(0), res_out.stride(0), weight.stride(0), out.stride(0),
        NORM=norm_weight is not None, HAS_RES=residual is not None, W_FORMAT=w_format, HAS_BIAS=bias is not None,
        BLOCK_S=min(triton.next_power_of_2(k), STATS_BLOCK), **launch,
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
    launch: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """h [M, H] -> (silu(gate) * up [M, I] of rmsnorm(h + residual) * norm_weight @ W^T with W [2I, H] (gate rows,
    then up rows), the residual sum or h itself). launch: gate_up_launch's keys."""
    w_format = _check(h, weight, residual)
    (num_rows, k), n = h.shape, weight.shape[0] // 2
    out = torch.empty((num_rows, n), dtype=h.dtype, device=h.device)
    res, res_out, g, residual_out = _norm_args(h, residual, norm_weight)
    launch = launch or gate_up_launch(k)
    _gate_up_silu_kernel[(triton.cdiv(n, launch["BLOCK_N"]), num_rows)](
        h, res, res_out, g, weight, weight if weight_scale is None else weight_scale, out, n, k, eps,
        h.stride(0), res.stride(0), res_out.stride(0), weight.stride(0), out.stride(0),
        HAS_RES=residual is not None, W_FORMAT=w_format, BLOCK_S=min(triton.next_power_of_2(k), STATS_BLOCK),
        **launch,
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
    launch: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """h [M, H] -> (q [M, Hq, D] rotated, the residual sum or h itself); the rotated k and v of each row are
    written to the cache at its slot (-1: not stored), quantized with a scale per head for an int8 or fp8 cache.
    launch: qkv_launch's keys."""
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
    _qkv_rope_kernel[(num_q_heads + 2 * num_kv_heads, num_rows)](
        h, res, res_out, g, weight, weight if weight_scale is None else weight_scale, weight if bias is None else bias,
        positions, cos_sin_cache, slot_mapping, q, k_cache, v_cache, k_scale, v_scale, k, eps,
        num_q_heads, num_kv_heads, h.stride(0), res.stride(0), res_out.stride(0), weight.stride(0),
        cos_sin_cache.stride(0), q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0),
        v_cache.stride(1), k_scale.stride(0), v_scale.stride(0),
        HAS_RES=residual is not None, W_FORMAT=w_format, HAS_BIAS=bias is not None, KV_FORMAT=kv_format,
        HALF_D=head_dim // 2, BLOCK_S=min(triton.next_power_of_2(k), STATS_BLOCK),
        **(launch or qkv_launch(head_dim, k)),
    )  # fmt: skip
    return q, h if residual is None else residual_out


def linear_ref(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor | None, bias: torch.Tensor | None):
    """The kernels' product for a weight in the compute dtype, or int8 or fp8 applied weight-only: the general
    int8 path's (its reference takes any quantized dtype; for fp8 the general path quantizes x too)."""
    if weight.dtype in FORMAT_OF_DTYPE:
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
