"""A causal conv of the estimator over packed rows in one launch, with what follows it in the U-Net:

    y = im2col(x; taps) W^T + b                     (the taps read the packed input or the row's cached tail)
    y = mish(LayerNorm(y)) [+ add] [+ r W_r^T + b_r]  (a CausalBlock1D; the resnet's time bias or its 1x1 residual)
    out = (y, LayerNorm_next(y))                     (the first transformer block's normed input, when it follows)

The im2col is never written: each program gathers its rows' taps as it multiplies (flow_inputs.py's tap indices
into [x; tails[tail_read]; zero row]). One program owns BLOCK_M whole rows (the LayerNorm needs all channels).

Tail saves: a conv's last inputs must be saved into its tail slots after the conv has read the old tails (a
stream reads and writes the same slot), so a conv's save is deferred and done by the next launch, whose extra
programs copy the rows (conv i+1 never reads conv i's tails); the last one of a call runs as save_rows alone.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from light_tts.kernels.flow.flow_block_tail import row_layer_norm, rows_per_program
from light_tts.kernels.flow.flow_fused import _mish, gather_taps_ref, layer_norm_mish_ref


@triton.jit
def copy_rows(
    src_ptr,
    dst_ptr,
    src_idx_ptr,
    dst_idx_ptr,
    num,
    block,
    C: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """dst[dst_idx[i]] = src[src_idx[i]] for the BLOCK_S entries of block `block` (rows of C channels)."""
    offs = block * BLOCK_S + tl.arange(0, BLOCK_S)
    is_s = offs < num
    src = tl.load(src_idx_ptr + offs, mask=is_s, other=0).to(tl.int64)
    dst = tl.load(dst_idx_ptr + offs, mask=is_s, other=0).to(tl.int64)
    for c0 in range(0, C, BLOCK_K):
        cs = c0 + tl.arange(0, BLOCK_K)
        v = tl.load(src_ptr + src[:, None] * C + cs[None, :], mask=is_s[:, None], other=0.0)
        tl.store(dst_ptr + dst[:, None] * C + cs[None, :], v, mask=is_s[:, None])


@triton.jit
def _tap_conv_kernel(
    x_ptr,
    tails_ptr,
    tail_read_ptr,
    taps_ptr,
    w_ptr,
    bias_ptr,
    norm_w_ptr,
    norm_b_ptr,
    add_ptr,
    r_ptr,
    w_r_ptr,
    b_r_ptr,
    next_w_ptr,
    next_b_ptr,
    out_ptr,
    out_n_ptr,
    save_x_ptr,
    save_tails_ptr,
    save_src_ptr,
    save_dst_ptr,
    num_rows,
    num_inputs,
    num_tails,
    num_saves,
    num_row_blocks,
    eps,
    eps_next,
    CIN: tl.constexpr,
    COUT: tl.constexpr,
    TAPS: tl.constexpr,
    CR: tl.constexpr,
    C_SAVE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_KR: tl.constexpr,
    BLOCK_KS: tl.constexpr,
    BLOCK_S: tl.constexpr,
    NORM_MISH: tl.constexpr,
    HAS_ADD: tl.constexpr,
    HAS_RES: tl.constexpr,
    HAS_NEXT: tl.constexpr,
    HAS_SAVE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    if pid >= num_row_blocks:  # the previous conv's deferred tail save
        if HAS_SAVE:
            copy_rows(
                save_x_ptr,
                save_tails_ptr,
                save_src_ptr,
                save_dst_ptr,
                num_saves,
                pid - num_row_blocks,
                C_SAVE,
                BLOCK_S,
                BLOCK_KS,
            )
        return
    rows = (pid * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    is_row = rows < num_rows
    cols = tl.arange(0, COUT)
    act = out_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_M, COUT), tl.float32)
    for tap in tl.static_range(TAPS):
        idx = tl.load(taps_ptr + rows * TAPS + tap, mask=is_row, other=0).to(tl.int64)
        from_x = idx < num_inputs
        from_tail = (idx >= num_inputs) & (idx < num_inputs + num_tails)
        # both sources are read at a valid row and the right one selected (as gather_taps: masks made from loaded
        # indices trip Triton 3.6's layout pass)
        x_row = tl.where(from_x, idx, 0)
        tail_row = tl.load(tail_read_ptr + tl.where(from_tail, idx - num_inputs, 0), mask=is_row, other=0).to(tl.int64)
        for c0 in range(0, CIN, BLOCK_K):
            cs = c0 + tl.arange(0, BLOCK_K)
            vx = tl.load(x_ptr + x_row[:, None] * CIN + cs[None, :], mask=is_row[:, None], other=0.0)
            vt = tl.load(tails_ptr + tail_row[:, None] * CIN + cs[None, :], mask=is_row[:, None], other=0.0)
            a = tl.where(from_x[:, None], vx, tl.where(from_tail[:, None], vt, 0.0))
            w = tl.load(w_ptr + cols[:, None] * (TAPS * CIN) + tap * CIN + cs[None, :])  # [COUT, BLOCK_K]
            acc += tl.dot(a, tl.trans(w), input_precision=DOT_PRECISION)
    y = (acc + tl.load(bias_ptr + cols).to(tl.float32)[None, :]).to(act).to(tl.float32)
    if NORM_MISH:
        y = _mish(row_layer_norm(y, norm_w_ptr, norm_b_ptr, cols, COUT, eps))
        if HAS_ADD:
            y += tl.load(add_ptr + cols).to(tl.float32)[None, :]
        if HAS_RES:  # the resnet's 1x1 conv of its input, added after the activation
            res = tl.zeros((BLOCK_M, COUT), tl.float32)
            for c0 in range(0, CR, BLOCK_KR):
                cs = c0 + tl.arange(0, BLOCK_KR)
                r = tl.load(r_ptr + rows[:, None] * CR + cs[None, :], mask=is_row[:, None], other=0.0)
                w = tl.load(w_r_ptr + cols[:, None] * CR + cs[None, :])
                res += tl.dot(r, tl.trans(w), input_precision=DOT_PRECISION)
            y += (res + tl.load(b_r_ptr + cols).to(tl.float32)[None, :]).to(act).to(tl.float32)
    mask = is_row[:, None]
    tl.store(out_ptr + rows[:, None] * COUT + cols[None, :], y.to(act), mask=mask)
    if HAS_NEXT:
        h = row_layer_norm(y.to(act).to(tl.float32), next_w_ptr, next_b_ptr, cols, COUT, eps_next)
        tl.store(out_n_ptr + rows[:, None] * COUT + cols[None, :], h.to(act), mask=mask)


@triton.jit
def _save_rows_kernel(
    src_ptr, dst_ptr, src_idx_ptr, dst_idx_ptr, num, C: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr
):
    copy_rows(src_ptr, dst_ptr, src_idx_ptr, dst_idx_ptr, num, tl.program_id(0), C, BLOCK_S, BLOCK_K)


SAVE_BLOCK = 16  # rows copied per save program


def _block_k(c: int) -> int:
    assert c % 16 == 0, f"channels must be a multiple of 16, got {c}"
    return next(b for b in (64, 32, 16) if c % b == 0)


def tap_conv_triton(
    x,
    tails,
    tail_read,
    taps,
    weight,
    bias,
    norm=None,
    add=None,
    res=None,
    next_norm=None,
    save=None,
    block_m: int | None = None,
):
    """x [N, Cin] packed inputs, tails [E, Cin] (the conv's slot buffer, flat), tail_read [T], taps [M, K] into
    [x; tails[tail_read]; zero]; weight [Cout, K Cin] (taps oldest first), bias [Cout]; norm: nn.LayerNorm
    (then mish); add [Cout]; res: (r [M, Cr], w_r [Cout, Cr], b_r); next_norm: nn.LayerNorm of the output;
    save: a deferred tail save (x_prev [N', C'], tails_prev [E', C'], src [S], dst [S]) done in this launch
    -> (out [M, Cout], next_norm(out) or None)."""
    m, taps_k = taps.shape
    cin, cout = x.shape[1], weight.shape[0]
    assert x.is_contiguous() and tails.is_contiguous() and taps.is_contiguous() and weight.is_contiguous()
    assert weight.shape[1] == taps_k * cin and cout & (cout - 1) == 0 and 16 <= cout <= 512 and cin % 16 == 0
    assert norm is not None or (add is None and res is None)
    out = torch.empty((m, cout), dtype=x.dtype, device=x.device)
    out_n = torch.empty_like(out) if next_norm is not None else out
    block_m = rows_per_program(m, block_m, large=32)
    num_row_blocks = triton.cdiv(m, block_m)
    r, w_r, b_r = res if res is not None else (x, weight, bias)
    assert res is None or (r.is_contiguous() and w_r.is_contiguous() and r.shape[0] == m and w_r.shape[0] == cout)
    s_x, s_tails, s_src, s_dst = save if save is not None else (x, tails, tail_read, tail_read)
    num_saves = s_src.numel() if save is not None else 0
    assert save is None or (s_x.is_contiguous() and s_tails.is_contiguous() and s_x.shape[1] == s_tails.shape[1])
    dummy_norm = norm if norm is not None else next_norm
    _tap_conv_kernel[(num_row_blocks + triton.cdiv(num_saves, SAVE_BLOCK),)](
        x,
        tails,
        tail_read,
        taps,
        weight,
        bias,
        dummy_norm.weight if dummy_norm is not None else bias,
        dummy_norm.bias if dummy_norm is not None else bias,
        add if add is not None else bias,
        r,
        w_r,
        b_r,
        next_norm.weight if next_norm is not None else bias,
        next_norm.bias if next_norm is not None else bias,
        out,
        out_n,
        s_x,
        s_tails,
        s_src,
        s_dst,
        m,
        x.shape[0],
        tail_read.shape[0],
        num_saves,
        num_row_blocks,
        norm.eps if norm is not None else 0.0,
        next_norm.eps if next_norm is not None else 0.0,
        CIN=cin,
        COUT=cout,
        TAPS=taps_k,
        CR=r.shape[1],
        C_SAVE=s_x.shape[1],
        BLOCK_M=block_m,
        BLOCK_K=_block_k(cin),
        BLOCK_KR=_block_k(r.shape[1]),
        BLOCK_KS=_block_k(s_x.shape[1]),
        BLOCK_S=SAVE_BLOCK,
        NORM_MISH=norm is not None,
        HAS_ADD=add is not None,
        HAS_RES=res is not None,
        HAS_NEXT=next_norm is not None,
        HAS_SAVE=save is not None,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=8,
        num_stages=2,
    )
    return out, (out_n if next_norm is not None else None)


def save_rows_triton(x, tails, src, dst) -> None:
    """tails[dst] = x[src] (a conv's tail save, when no later launch carries it)."""
    c = x.shape[1]
    assert x.is_contiguous() and tails.is_contiguous() and tails.shape[1] == c
    if src.numel():
        _save_rows_kernel[(triton.cdiv(src.numel(), SAVE_BLOCK),)](
            x, tails, src, dst, src.numel(), C=c, BLOCK_S=SAVE_BLOCK, BLOCK_K=_block_k(c)
        )


def save_rows_ref(x, tails, src, dst) -> None:
    tails.index_copy_(0, dst, x.index_select(0, src))


def tap_conv_ref(x, tails, tail_read, taps, weight, bias, norm=None, add=None, res=None, next_norm=None, save=None):
    """The unfused path: im2col, matmul, LayerNorm + Mish (+ add, + the residual matmul), the next LayerNorm;
    then the deferred save."""
    y = F.linear(gather_taps_ref(x, tails, tail_read, taps), weight, bias)
    if norm is not None:
        residual = F.linear(res[0], res[1], res[2]) if res is not None else None
        y = layer_norm_mish_ref(y, norm, add, residual)
    if save is not None:
        save_rows_ref(*save)
    return y, (next_norm(y) if next_norm is not None else None)
