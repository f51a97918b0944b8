"""Fused row-wise kernels of the flow estimator (fewer launches and fewer passes over the activations):

- add_layer_norm: x' = x + delta + bias, h = LayerNorm(x') -> (x', h): a transformer block's residual add and the
  next LayerNorm in one pass;
- layer_norm_mish: out = mish(LayerNorm(y)) + add + residual: a CausalBlock1D after its conv, with the resnet's
  time bias (a per-channel vector) or the resnet's 1x1 residual;
- gather_taps: the im2col matrix of a causal conv over packed rows, [M, k * C], reading each tap from the packed
  input or the row's cached tail (flow_inputs.py's taps), in one pass;
- snake: HiFT's x + sin^2(alpha x) / (alpha + 1e-9), per channel.

Each computes in float32 and rounds once; the torch references below round where torch's ops do, so the two
agree to the rounding of the activation dtype.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl


@triton.jit
def _mish(x):
    """x * tanh(softplus(x)) = x * n(n + 2) / (n(n + 2) + 2) with n = e^x (exact form, no overflow past 20)."""
    n = tl.exp(tl.minimum(x, 20.0))
    t = n * (n + 2.0)
    return tl.where(x > 20.0, x, x * t / (t + 2.0))


@triton.jit
def _layer_norm_kernel(
    x_ptr,
    delta_ptr,
    bias_ptr,
    w_ptr,
    b_ptr,
    resid_ptr,
    out_x_ptr,
    out_h_ptr,
    num_rows,
    eps,
    C: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_R: tl.constexpr,
    HAS_DELTA: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    MISH: tl.constexpr,
    HAS_RESID: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    is_row = rows < num_rows
    is_col = cols < C
    mask = is_row[:, None] & is_col[None, :]
    offs = rows[:, None] * C + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_DELTA:  # the residual add before the norm (add_layer_norm)
        x += tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            x += tl.load(bias_ptr + cols, mask=is_col, other=0.0).to(tl.float32)[None, :]
        tl.store(out_x_ptr + offs, x.to(out_x_ptr.dtype.element_ty), mask=mask)
    mean = tl.sum(x, axis=1) / C
    centred = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / C + eps)
    w = tl.load(w_ptr + cols, mask=is_col, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=is_col, other=0.0).to(tl.float32)
    h = centred * rstd[:, None] * w[None, :] + b[None, :]
    if MISH:
        h = _mish(h)
        if HAS_BIAS:  # after the activation: the resnet's time bias
            h += tl.load(bias_ptr + cols, mask=is_col, other=0.0).to(tl.float32)[None, :]
        if HAS_RESID:
            h += tl.load(resid_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_h_ptr + offs, h.to(out_h_ptr.dtype.element_ty), mask=mask)


def _launch_norm(x, delta, bias, norm, resid, mish: bool):
    assert x.is_contiguous() and x.dim() == 2
    m, c = x.shape
    out_h = torch.empty_like(x)
    out_x = torch.empty_like(x) if delta is not None else out_h
    block_c = triton.next_power_of_2(c)
    block_r = max(1, min(16, 8192 // block_c))
    _layer_norm_kernel[(triton.cdiv(m, block_r),)](
        x,
        delta if delta is not None else x,
        bias if bias is not None else x,
        norm.weight,
        norm.bias,
        resid if resid is not None else x,
        out_x,
        out_h,
        m,
        norm.eps,
        C=c,
        BLOCK_C=block_c,
        BLOCK_R=block_r,
        HAS_DELTA=delta is not None,
        HAS_BIAS=bias is not None,
        MISH=mish,
        HAS_RESID=resid is not None,
        num_warps=4,
    )
    return out_x, out_h


def add_layer_norm_triton(x, delta, bias, norm):
    return _launch_norm(x, delta, bias, norm, None, mish=False)


def add_layer_norm_ref(x, delta, bias, norm):
    x = x + delta if bias is None else x + delta + bias
    return x, norm(x)


def layer_norm_mish_triton(y, norm, add=None, residual=None):
    return _launch_norm(y, None, add, norm, residual, mish=True)[1]


def layer_norm_mish_ref(y, norm, add=None, residual=None):
    out = F.mish(norm(y))
    if add is not None:
        out = out + add
    return out if residual is None else out + residual


@triton.jit
def _gather_taps_kernel(
    x_ptr,
    tails_ptr,
    tail_read_ptr,
    taps_ptr,
    out_ptr,
    num_rows,
    num_inputs,
    num_tails,
    C: tl.constexpr,
    K: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    tap = tl.program_id(1)
    cols = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    is_row = rows < num_rows
    is_col = cols < C
    idx = tl.load(taps_ptr + rows * K + tap, mask=is_row, other=0).to(tl.int64)
    from_x = idx < num_inputs
    from_tail = (idx >= num_inputs) & (idx < num_inputs + num_tails)
    # both sources are read at a clamped (valid) row and the right one is selected: combining the row/column
    # mask with masks made from loaded indices trips Triton 3.6's layout pass
    x_row = tl.where(from_x, idx, 0)
    tail_row = tl.load(tail_read_ptr + tl.where(from_tail, idx - num_inputs, 0), mask=is_row, other=0).to(tl.int64)
    mask = is_row[:, None] & is_col[None, :]
    vx = tl.load(x_ptr + x_row[:, None] * C + cols[None, :], mask=mask, other=0.0)
    vt = tl.load(tails_ptr + tail_row[:, None] * C + cols[None, :], mask=mask, other=0.0)
    v = tl.where(from_x[:, None], vx, tl.where(from_tail[:, None], vt, tl.zeros_like(vt)))
    tl.store(out_ptr + rows[:, None] * (K * C) + tap * C + cols[None, :], v, mask=mask)


def gather_taps_triton(
    x: torch.Tensor, tails: torch.Tensor, tail_read: torch.Tensor, taps: torch.Tensor
) -> torch.Tensor:
    """x [N, C], tails [E, C] (a slot buffer, flat), tail_read [T] (its rows in the extended input), taps [M, K]
    into [x; tails[tail_read]; zero] -> [M, K * C]."""
    assert x.is_contiguous() and tails.is_contiguous() and taps.is_contiguous()
    m, k = taps.shape
    c = x.shape[1]
    out = torch.empty((m, k * c), dtype=x.dtype, device=x.device)
    block_c = min(128, triton.next_power_of_2(c))
    block_r = 32
    _gather_taps_kernel[(triton.cdiv(m, block_r), k, triton.cdiv(c, block_c))](
        x,
        tails,
        tail_read,
        taps,
        out,
        m,
        x.shape[0],
        tail_read.shape[0],
        C=c,
        K=k,
        BLOCK_C=block_c,
        BLOCK_R=block_r,
        num_warps=4,
    )
    return out


def gather_taps_ref(x, tails, tail_read, taps):
    ext = torch.cat([x, tails[tail_read], x.new_zeros(1, x.shape[1])])
    return ext[taps].reshape(taps.shape[0], -1)


@triton.jit
def _snake_kernel(x_ptr, alpha_ptr, inv_ptr, out_ptr, num, T, C, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < num
    ch = (offs // T) % C
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    a = tl.load(alpha_ptr + ch, mask=mask, other=1.0).to(tl.float32)
    inv = tl.load(inv_ptr + ch, mask=mask, other=1.0).to(tl.float32)
    s = tl.sin(x * a)
    tl.store(out_ptr + offs, (x + inv * (s * s)).to(out_ptr.dtype.element_ty), mask=mask)


def snake_triton(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """x [B, C, T] contiguous, alpha [C]."""
    assert x.is_contiguous() and x.dim() == 3
    out = torch.empty_like(x)
    inv = 1.0 / (alpha + 1e-9)
    block = 1024
    _snake_kernel[(triton.cdiv(x.numel(), block),)](
        x, alpha, inv, out, x.numel(), x.shape[2], x.shape[1], BLOCK=block, num_warps=4
    )
    return out


def snake_ref(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    alpha = alpha[None, :, None]
    return x + (1.0 / (alpha + 1e-9)) * torch.sin(x * alpha).pow(2)
