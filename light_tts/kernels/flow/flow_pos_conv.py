"""CosyVoice3's positional conv (a grouped Conv1d, kernel 31, then Mish) at chosen output positions, in one launch:
Triton kernel, launcher, torch reference.

y[i] = mish(bias + sum_k ext[out[i] + k] @ W[k]) per group of channels, for ext [Lx, C] (the extended sequence
of paged_dit.py: each row's 30 cached inputs, then its new ones) and out [M] (the positions whose outputs are
kept). The weight is given as taps [G, K, C/G (in), C/G (out)] (pos_conv_taps). cuDNN runs the 16-group conv as
16 kernels plus two layout transposes per call (the H100 profile of a 1-second chunk: 320 of them, 12 of its
31 ms); here each program is a tile of outputs of one group, its 31 taps summed by tensor-core dots.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

BLOCK_M = 32


def pos_conv_taps(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Conv1d weight [C (out), C/G (in), K] -> [G, K, C/G (in), C/G (out)], contiguous."""
    c_out, c_in, k = weight.shape
    return weight.view(groups, c_out // groups, c_in, k).permute(0, 3, 2, 1).contiguous()


@triton.jit
def _mish(x):
    """x * tanh(softplus(x)) in float32 (softplus linear past 20, as torch's)."""
    sp = tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))
    return x * (1.0 - 2.0 / (tl.exp(2.0 * sp) + 1.0))


@triton.jit
def _pos_conv_kernel(
    ext_ptr,
    out_idx_ptr,
    w_ptr,
    bias_ptr,
    y_ptr,
    M,
    stride_ext,
    stride_y,
    KERNEL: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_M: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    g = tl.program_id(1)
    is_row = rows < M
    first = tl.load(out_idx_ptr + rows, mask=is_row, other=0).to(tl.int64)
    ch = tl.arange(0, BLOCK_G)  # a group's channels, padded to a dot's 16
    is_ch = ch < GROUP
    w_group = w_ptr + g * KERNEL * GROUP * GROUP
    acc = tl.zeros((BLOCK_M, BLOCK_G), tl.float32)
    for k in range(KERNEL):
        x = tl.load(
            ext_ptr + (first + k)[:, None] * stride_ext + g * GROUP + ch[None, :],
            mask=is_row[:, None] & is_ch[None, :],
            other=0.0,
        )
        w = tl.load(
            w_group + k * GROUP * GROUP + ch[:, None] * GROUP + ch[None, :],
            mask=is_ch[:, None] & is_ch[None, :],
            other=0.0,
        )
        acc += tl.dot(x, w, input_precision=DOT_PRECISION)
    acc += tl.load(bias_ptr + g * GROUP + ch, mask=is_ch, other=0.0).to(tl.float32)[None, :]
    y = _mish(acc)
    tl.store(
        y_ptr + rows[:, None] * stride_y + g * GROUP + ch[None, :],
        y.to(y_ptr.dtype.element_ty),
        mask=is_row[:, None] & is_ch[None, :],
    )


def pos_conv_triton(ext: torch.Tensor, out_idx: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """ext [Lx, C], out_idx [M] int64 (each < Lx - K + 1), taps [G, K, C/G, C/G], bias [C] -> mish(conv)[M, C]."""
    assert ext.dim() == 2 and ext.stride(1) == 1 and taps.is_contiguous() and taps.dtype == ext.dtype
    groups, kernel, group, _ = taps.shape
    assert ext.shape[1] == groups * group
    m = out_idx.shape[0]
    y = torch.empty((m, ext.shape[1]), dtype=ext.dtype, device=ext.device)
    if m == 0:
        return y
    _pos_conv_kernel[(triton.cdiv(m, BLOCK_M), groups)](
        ext,
        out_idx,
        taps,
        bias,
        y,
        m,
        ext.stride(0),
        y.stride(0),
        KERNEL=kernel,
        GROUP=group,
        BLOCK_G=max(16, triton.next_power_of_2(group)),
        BLOCK_M=BLOCK_M,
        DOT_PRECISION="ieee" if ext.dtype == torch.float32 else "tf32",
        num_warps=4,
    )
    return y


def pos_conv_ref(ext: torch.Tensor, out_idx: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The same through F.conv1d over every position, then the chosen ones."""
    groups, kernel, group, _ = taps.shape
    weight = taps.permute(0, 3, 2, 1).reshape(groups * group, group, kernel)
    y = F.conv1d(ext.t().contiguous()[None], weight, bias, groups=groups)[0]  # [C, Lx - K + 1]
    return F.mish(y.t()[out_idx])
