"""Row-wise kernels of CosyVoice3's DiT (decode/dit/paged_dit.py). Its GEMMs are small at low batch, so a block-step
is bound by the number of launches; these fold the elementwise ops between the GEMMs:

- ada_modulate: h' = h + gate y (a block's gated residual, optional) and x = LayerNorm(h') (1 + scale) + shift (the
  next AdaLayerNorm modulation, LayerNorm without affine), writing (h', x) in one pass;
- rotary_head0: the rotary of the first dim_head channels of q and k (x-transformers rotates head 0 only) in place
  in the packed qkv [M, 3, heads, dim_head]: interleaved pairs (a, b) -> (a cos - b sin, b cos + a sin);
- cfg_update: the guided Euler update x += dt ((1 + rate) v_cond - rate v_uncond) of both CFG branches (float32, as
  CausalConditionalCFM.solve) and x written into both branches' rows of the next step's estimator input.

Each computes in float32 and rounds once; the torch references are the unfused ops (numerically today's path).
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """x-transformers' rotate_half: interleaved pairs (a, b) -> (-b, a)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)


@triton.jit
def _ada_modulate_kernel(
    h_ptr,
    gate_ptr,
    y_ptr,
    scale1p_ptr,
    shift_ptr,
    out_h_ptr,
    out_x_ptr,
    num_rows,
    eps,
    C: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_R: tl.constexpr,
    RESIDUAL: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    is_col = cols < C
    mask = (rows < num_rows)[:, None] & is_col[None, :]
    offs = rows[:, None] * C + cols[None, :]
    h = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if RESIDUAL:  # h + gate y, rounded to the stream's dtype as the next block reads it
        gate = tl.load(gate_ptr + cols, mask=is_col, other=0.0).to(tl.float32)
        h += gate[None, :] * tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        h = h.to(out_h_ptr.dtype.element_ty)
        tl.store(out_h_ptr + offs, h, mask=mask)
        h = h.to(tl.float32)
    mean = tl.sum(h, axis=1) / C
    centred = tl.where(mask, h - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / C + eps)
    scale1p = tl.load(scale1p_ptr + cols, mask=is_col, other=0.0).to(tl.float32)
    shift = tl.load(shift_ptr + cols, mask=is_col, other=0.0).to(tl.float32)
    x = centred * rstd[:, None] * scale1p[None, :] + shift[None, :]
    tl.store(out_x_ptr + offs, x.to(out_x_ptr.dtype.element_ty), mask=mask)


def ada_modulate_triton(h, gate, y, scale1p, shift, eps: float):
    assert h.is_contiguous() and h.dim() == 2 and (y is None or y.is_contiguous())
    m, c = h.shape
    out_x = torch.empty_like(h)
    out_h = torch.empty_like(h) if gate is not None else h
    block_c = triton.next_power_of_2(c)
    block_r = max(1, min(16, 2048 // block_c))  # 16 values per thread and tensor
    _ada_modulate_kernel[(triton.cdiv(m, block_r),)](
        h,
        gate if gate is not None else h,
        y if y is not None else h,
        scale1p,
        shift,
        out_h,
        out_x,
        m,
        eps,
        C=c,
        BLOCK_C=block_c,
        BLOCK_R=block_r,
        RESIDUAL=gate is not None,
        num_warps=4,
    )
    return out_h, out_x


def ada_modulate_ref(h, gate, y, scale1p, shift, eps: float):
    if gate is not None:
        h = h + gate * y
    return h, F.layer_norm(h, (h.shape[-1],), eps=eps) * scale1p + shift


@triton.jit
def _rotary_head0_kernel(
    qkv_ptr,
    cos_ptr,
    sin_ptr,
    num_rows,
    stride_row,
    stride_part,
    D: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """Columns of a program: (part, pair) with part 0 = q, 1 = k; each rotates head 0's pair (2 j, 2 j + 1)."""
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = tl.arange(0, 2 * BLOCK_P)
    part, pair = cols // BLOCK_P, cols % BLOCK_P
    mask = (rows < num_rows)[:, None] & (pair < D // 2)[None, :]
    offs = rows[:, None] * stride_row + (part * stride_part + 2 * pair)[None, :]
    t_offs = rows[:, None] * D + 2 * pair[None, :]
    a = tl.load(qkv_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(qkv_ptr + offs + 1, mask=mask, other=0.0).to(tl.float32)
    cos_a, cos_b = tl.load(cos_ptr + t_offs, mask=mask, other=0.0), tl.load(cos_ptr + t_offs + 1, mask=mask, other=0.0)
    sin_a, sin_b = tl.load(sin_ptr + t_offs, mask=mask, other=0.0), tl.load(sin_ptr + t_offs + 1, mask=mask, other=0.0)
    act = qkv_ptr.dtype.element_ty
    tl.store(qkv_ptr + offs, (a * cos_a - b * sin_a).to(act), mask=mask)
    tl.store(qkv_ptr + offs + 1, (b * cos_b + a * sin_b).to(act), mask=mask)


def rotary_head0_triton(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    m, _, _, d = qkv.shape
    assert qkv.stride(3) == 1 and d % 2 == 0 and cos.is_contiguous() and sin.is_contiguous() and cos.shape == (m, d)
    block_p = triton.next_power_of_2(d // 2)
    block_r = 16
    _rotary_head0_kernel[(triton.cdiv(m, block_r),)](
        qkv, cos, sin, m, qkv.stride(0), qkv.stride(1), D=d, BLOCK_P=block_p, BLOCK_R=block_r, num_warps=4
    )


def rotary_head0_ref(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    rot = qkv[:, :2, 0].float()
    qkv[:, :2, 0] = (rot * cos[:, None] + rotate_pairs(rot) * sin[:, None]).to(qkv.dtype)


@triton.jit
def _cfg_update_kernel(
    v_ptr,
    x_ptr,
    est_in_ptr,
    num_rows,
    stride_in,
    dt,
    rate,
    MEL: tl.constexpr,
    BLOCK_MEL: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    mels = tl.arange(0, BLOCK_MEL)
    mask = (rows < num_rows)[:, None] & (mels < MEL)[None, :]
    offs = rows[:, None] * MEL + mels[None, :]
    v_c = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v_u = tl.load(v_ptr + num_rows * MEL + offs, mask=mask, other=0.0).to(tl.float32)
    guided_euler_store(v_c, v_u, x_ptr, est_in_ptr, rows, mels, mask, num_rows, stride_in, dt, rate, MEL)


@triton.jit
def guided_euler_store(v_c, v_u, x_ptr, est_in_ptr, rows, mels, mask, num_rows, stride_in, dt, rate, MEL: tl.constexpr):
    """x += dt ((1 + rate) v_c - rate v_u) (float32) for x [Mf, MEL] at (rows, mels), and x in the activation dtype
    into both CFG branches' first columns of the next step's estimator input (rows and rows + num_rows); shared by
    this kernel and flow_cfm_step's (which computes v from the final block first)."""
    offs = rows[:, None] * MEL + mels[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0) + dt * ((1.0 + rate) * v_c - rate * v_u)
    tl.store(x_ptr + offs, x, mask=mask)
    act = est_in_ptr.dtype.element_ty
    tl.store(est_in_ptr + rows[:, None] * stride_in + mels[None, :], x.to(act), mask=mask)
    tl.store(est_in_ptr + (rows + num_rows)[:, None] * stride_in + mels[None, :], x.to(act), mask=mask)


def cfg_update_triton(v: torch.Tensor, x: torch.Tensor, est_in: torch.Tensor, dt, rate: float) -> None:
    mf, mel = x.shape
    assert v.is_contiguous() and v.shape == (2 * mf, mel) and x.dtype == torch.float32 and x.is_contiguous()
    assert est_in.stride(1) == 1 and est_in.shape[0] == 2 * mf
    block_r = 16
    _cfg_update_kernel[(triton.cdiv(mf, block_r),)](
        v,
        x,
        est_in,
        mf,
        est_in.stride(0),
        float(dt),
        rate,
        MEL=mel,
        BLOCK_MEL=triton.next_power_of_2(mel),
        BLOCK_R=block_r,
        num_warps=4,
    )


def cfg_update_ref(v: torch.Tensor, x: torch.Tensor, est_in: torch.Tensor, dt, rate: float) -> None:
    mf, mel = x.shape
    x += dt * ((1.0 + rate) * v[:mf].float() - rate * v[mf:].float())
    est_in[:mf, :mel] = x
    est_in[mf:, :mel] = x
