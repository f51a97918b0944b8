"""Everything of an estimator transformer block after its attention kernel, in one launch:

    o = merge(attention partials)                  (flash-decoding splits; or the attention output as is)
    x1 = x + o W_out^T + b_out                     (the residual stream)
    h = LayerNorm3(x1)
    x2 = x1 + act(h W1^T + b1) W2^T + b2           (the feed-forward, its hidden never leaves the program; GELU
                                                    in the estimator, SiLU in the encoder's conformer blocks)
    out = (x2, LayerNorm_next(x2))                 (the next block's normed input, when there is one)

One program owns BLOCK_M whole rows (all C channels: the LayerNorms need them), so the block's six unfused
launches (merge, out-projection, add + norm, FF1, GELU, FF2, add + norm) become one and the hidden [M, 4C]
activations are never written. Each matmul's result is rounded to the activation dtype where the unfused path
rounds it (its output tensor), so in float32 the two agree to float rounding.
"""

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from light_tts.kernels.flow.flow_attention import merge_splits_ref


@triton.jit
def row_layer_norm(x, w_ptr, b_ptr, cols, C: tl.constexpr, eps):
    """LayerNorm of whole rows x [R, C] (float32) with weight and bias at w_ptr, b_ptr."""
    mean = tl.sum(x, axis=1) / C
    centred = x - mean[:, None]
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / C + eps)
    w = tl.load(w_ptr + cols).to(tl.float32)
    b = tl.load(b_ptr + cols).to(tl.float32)
    return centred * rstd[:, None] * w[None, :] + b[None, :]


@triton.jit
def _activation(x, SILU: tl.constexpr):
    # if/else with one return: Triton's compiler goes on past a return inside a constexpr if (its interpreter does
    # not), so an early return would give GELU for SiLU on a GPU
    if SILU:
        y = x / (1.0 + tl.exp(-x))
    else:
        y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))  # GELU (exact)
    return y


@triton.jit
def _block_tail_kernel(
    x_ptr,
    o_ptr,
    lse_ptr,
    w_out_ptr,
    b_out_ptr,
    n3_w_ptr,
    n3_b_ptr,
    w1_ptr,
    b1_ptr,
    w2_ptr,
    b2_ptr,
    nn_w_ptr,
    nn_b_ptr,
    out_x_ptr,
    out_h_ptr,
    num_rows,
    eps3,
    eps_next,
    stride_om,
    stride_oh,
    stride_os,
    C: tl.constexpr,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HIDDEN: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_H: tl.constexpr,
    HAS_NEXT: tl.constexpr,
    SILU: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    is_row = rows < num_rows
    cols = tl.arange(0, C)
    dims = tl.arange(0, HEAD_DIM)
    act = out_x_ptr.dtype.element_ty
    # attention output (merged per head) times W_out [C, H D]: K runs over the heads
    acc = tl.zeros((BLOCK_M, C), tl.float32)
    for head in range(NUM_HEADS):
        if NUM_SPLITS == 1:
            o = tl.load(
                o_ptr + rows[:, None] * stride_om + head * stride_oh + dims[None, :], mask=is_row[:, None], other=0.0
            )
        else:  # flash-decoding partials: weights 2^(lse - max) over the splits
            lse_base = lse_ptr + (rows * NUM_HEADS + head) * NUM_SPLITS
            top = tl.full((BLOCK_M,), float("-inf"), tl.float32)
            for s in tl.static_range(NUM_SPLITS):
                top = tl.maximum(top, tl.load(lse_base + s, mask=is_row, other=float("-inf")))
            top = tl.where(top == float("-inf"), 0.0, top)
            num = tl.zeros((BLOCK_M, HEAD_DIM), tl.float32)
            den = tl.zeros((BLOCK_M,), tl.float32)
            for s in tl.static_range(NUM_SPLITS):
                w = tl.exp2(tl.load(lse_base + s, mask=is_row, other=float("-inf")) - top)
                part = tl.load(
                    o_ptr + rows[:, None] * stride_om + head * stride_oh + s * stride_os + dims[None, :],
                    mask=is_row[:, None],
                    other=0.0,
                )
                num += w[:, None] * part
                den += w
            o = (num / tl.where(den == 0.0, 1.0, den)[:, None]).to(act)
        w_out = tl.load(w_out_ptr + cols[:, None] * (NUM_HEADS * HEAD_DIM) + head * HEAD_DIM + dims[None, :])
        acc += tl.dot(o, tl.trans(w_out), input_precision=DOT_PRECISION)
    mask = is_row[:, None]
    x = tl.load(x_ptr + rows[:, None] * C + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    b_out = tl.load(b_out_ptr + cols).to(tl.float32)
    x1 = x + acc.to(act).to(tl.float32) + b_out[None, :]
    h = row_layer_norm(x1, n3_w_ptr, n3_b_ptr, cols, C, eps3).to(act)  # of the sum, as add_layer_norm
    x1 = x1.to(act)  # the residual stream is kept in the activation dtype (as the per-op path stores it)
    # the feed-forward, BLOCK_H hidden units at a time
    acc = tl.zeros((BLOCK_M, C), tl.float32)
    for j0 in range(0, HIDDEN, BLOCK_H):
        js = j0 + tl.arange(0, BLOCK_H)
        w1 = tl.load(w1_ptr + js[:, None] * C + cols[None, :])  # [BLOCK_H, C] of W1 [HIDDEN, C]
        g = tl.dot(h, tl.trans(w1), input_precision=DOT_PRECISION) + tl.load(b1_ptr + js).to(tl.float32)[None, :]
        g = _activation(g, SILU).to(act)
        w2 = tl.load(w2_ptr + cols[:, None] * HIDDEN + js[None, :])  # [C, BLOCK_H] of W2 [C, HIDDEN]
        acc += tl.dot(g, tl.trans(w2), input_precision=DOT_PRECISION)
    b2 = tl.load(b2_ptr + cols).to(tl.float32)
    x2 = x1.to(tl.float32) + acc.to(act).to(tl.float32) + b2[None, :]
    tl.store(out_x_ptr + rows[:, None] * C + cols[None, :], x2.to(act), mask=mask)
    if HAS_NEXT:
        h2 = row_layer_norm(x2, nn_w_ptr, nn_b_ptr, cols, C, eps_next)
        tl.store(out_h_ptr + rows[:, None] * C + cols[None, :], h2.to(act), mask=mask)


def rows_per_program(num_rows: int, block_m: int | None = None, large: int = 64) -> int:
    """Whole-row kernels' BLOCK_M: small passes want many programs (each streams the weights from L2), large ones
    fewer re-reads of the weights (`large` rows: as many as fit in registers, per kernel_compile.py). Triton's
    interpreter pays per program and per op: one large block there (the kernel tests pass small ones)."""
    if block_m is not None:
        return block_m
    if os.environ.get("TRITON_INTERPRET") == "1":
        return 128
    return 16 if num_rows <= 2048 else large


def block_tail_triton(
    x, o, mid_lse, w_out, b_out, norm3, w1, b1, w2, b2, next_norm=None, act: str = "gelu", block_m: int | None = None
):
    """x [M, C] residual stream; o [M, H, D] attention output (mid_lse None) or its split partials [M, H, S, D]
    float32 with mid_lse [M, H, S]; w_out [C, H D], w1 [hidden, C], w2 [C, hidden] (nn.Linear layouts,
    contiguous); norm3 / next_norm: nn.LayerNorm; act: "gelu" or "silu" -> (x2 [M, C], next_norm(x2) or None)."""
    m, c = x.shape
    num_heads, head_dim = o.shape[1], o.shape[-1]
    hidden = w1.shape[0]
    splits = 1 if mid_lse is None else o.shape[2]
    assert x.is_contiguous() and o.stride(-1) == 1 and c & (c - 1) == 0 and 16 <= c <= 512
    assert w_out.shape == (c, num_heads * head_dim) and w1.shape == (hidden, c) and w2.shape == (c, hidden)
    assert w_out.is_contiguous() and w1.is_contiguous() and w2.is_contiguous() and hidden % 16 == 0
    assert mid_lse is None or (o.dtype == torch.float32 and mid_lse.is_contiguous() and o.is_contiguous())
    out_x = torch.empty_like(x)
    out_h = torch.empty_like(x) if next_norm is not None else out_x
    nn_ = next_norm if next_norm is not None else norm3
    assert act in ("gelu", "silu")
    block_m = rows_per_program(m, block_m, large=64 if c <= 256 else 16)
    block_h = 32 if hidden % 32 == 0 else 16  # two W tiles per step, pipelined
    if os.environ.get("TRITON_INTERPRET") == "1" and hidden % 128 == 0:
        block_h = 128
    _block_tail_kernel[(triton.cdiv(m, block_m),)](
        x,
        o,
        mid_lse if mid_lse is not None else o,
        w_out,
        b_out,
        norm3.weight,
        norm3.bias,
        w1,
        b1,
        w2,
        b2,
        nn_.weight,
        nn_.bias,
        out_x,
        out_h,
        m,
        norm3.eps,
        nn_.eps,
        o.stride(0),
        o.stride(1),
        o.stride(2) if splits > 1 else 0,
        C=c,
        NUM_HEADS=num_heads,
        HEAD_DIM=head_dim,
        HIDDEN=hidden,
        NUM_SPLITS=splits,
        BLOCK_M=block_m,
        BLOCK_H=block_h,
        HAS_NEXT=next_norm is not None,
        SILU=act == "silu",
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=8,
        num_stages=2,
    )
    return out_x, (out_h if next_norm is not None else None)


def block_tail_ref(x, o, mid_lse, w_out, b_out, norm3, w1, b1, w2, b2, next_norm=None, act: str = "gelu"):
    """The unfused path's arithmetic: merge, out-projection, add + norm, FF1 + activation, FF2, add (+ norm)."""
    m = x.shape[0]
    if mid_lse is not None:
        o = merge_splits_ref(o, mid_lse).to(x.dtype)
    x1 = x + F.linear(o.reshape(m, -1), w_out) + b_out
    f = F.linear((F.silu if act == "silu" else F.gelu)(F.linear(norm3(x1), w1, b1)), w2)
    x2 = x1 + f + b2
    return x2, (next_norm(x2) if next_norm is not None else None)
