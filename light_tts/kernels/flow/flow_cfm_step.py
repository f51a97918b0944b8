"""The end of one CFM step in one launch: the estimator's final 1x1 projection of both CFG branches, the guided Euler
update of x, and x written into the next step's estimator input:

    v_c, v_u = h[r] W_f^T + b_f, h[r + Mf] W_f^T + b_f     (conditioned row r and its unconditioned twin)
    x[r] += dt ((1 + rate) v_c - rate v_u)                 (float32, as CausalConditionalCFM.solve)
    est_in[r, :80] = est_in[r + Mf, :80] = x[r]            (the other columns, mu | speaker | condition, are the
                                                             same for all ten steps and written once per pass)
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from light_tts.kernels.flow.flow_dit import cfg_update_ref, guided_euler_store


@triton.jit
def _cfm_step_kernel(
    h_ptr,
    w_ptr,
    b_ptr,
    x_ptr,
    est_in_ptr,
    num_rows,
    stride_in,
    dt,
    rate,
    C: tl.constexpr,
    MEL: tl.constexpr,
    BLOCK_MEL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    is_row = rows < num_rows
    cols = tl.arange(0, C)
    mels = tl.arange(0, BLOCK_MEL)
    is_mel = mels < MEL
    act = est_in_ptr.dtype.element_ty
    w = tl.load(w_ptr + mels[:, None] * C + cols[None, :], mask=is_mel[:, None], other=0.0)  # [BLOCK_MEL, C]
    b = tl.load(b_ptr + mels, mask=is_mel, other=0.0).to(tl.float32)
    h_c = tl.load(h_ptr + rows[:, None] * C + cols[None, :], mask=is_row[:, None], other=0.0)
    h_u = tl.load(h_ptr + (rows + num_rows)[:, None] * C + cols[None, :], mask=is_row[:, None], other=0.0)
    # the velocity in the activation dtype, as the unfused projection's output
    v_c = (tl.dot(h_c, tl.trans(w), input_precision=DOT_PRECISION) + b[None, :]).to(act).to(tl.float32)
    v_u = (tl.dot(h_u, tl.trans(w), input_precision=DOT_PRECISION) + b[None, :]).to(act).to(tl.float32)
    mask = is_row[:, None] & is_mel[None, :]
    guided_euler_store(v_c, v_u, x_ptr, est_in_ptr, rows, mels, mask, num_rows, stride_in, dt, rate, MEL)


def cfm_step_triton(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    x: torch.Tensor,
    est_in: torch.Tensor,
    dt: float,
    rate: float,
) -> None:
    """h [2 Mf, C] (the final block's output, conditioned rows first), weight [80, C], bias [80], x [Mf, 80] float32
    (updated in place), est_in [2 Mf, >= 80] (its first 80 columns receive x, both branches)."""
    mf, mel = x.shape
    c = h.shape[1]
    assert h.is_contiguous() and h.shape[0] == 2 * mf and weight.shape == (mel, c) and weight.is_contiguous()
    assert x.dtype == torch.float32 and x.is_contiguous() and est_in.stride(1) == 1 and est_in.shape[0] == 2 * mf
    assert c & (c - 1) == 0 and c >= 16
    block_m = 16
    _cfm_step_kernel[(triton.cdiv(mf, block_m),)](
        h,
        weight,
        bias,
        x,
        est_in,
        mf,
        est_in.stride(0),
        dt,
        rate,
        C=c,
        MEL=mel,
        BLOCK_MEL=triton.next_power_of_2(mel),
        BLOCK_M=block_m,
        DOT_PRECISION="ieee" if h.dtype == torch.float32 else "tf32",
        num_warps=8,
    )


def cfm_step_ref(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    x: torch.Tensor,
    est_in: torch.Tensor,
    dt: float,
    rate: float,
) -> None:
    cfg_update_ref(F.linear(h, weight, bias), x, est_in, dt, rate)
