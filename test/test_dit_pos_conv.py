"""CosyVoice3's positional conv kernel (kernels/flow/flow_pos_conv.py, Triton's interpreter on the CPU) against
F.conv1d + Mish (test_dit_kernels.py runs the whole packed pass with every Triton kernel forced)."""

import pytest
import torch

from light_tts.kernels.flow.flow_pos_conv import pos_conv_ref, pos_conv_taps, pos_conv_triton


@pytest.mark.parametrize("dim, groups, dtype, tol", [(64, 4, torch.float32, 1e-5), (48, 16, torch.float16, 2e-3)])
def test_pos_conv_kernel_equals_conv1d_then_mish(dim, groups, dtype, tol):
    """Several programs, a partial block of outputs, outputs picked out of order and repeated (graph padding reads
    position 0), group widths of 16 and 3 (padded to a dot's 16), large inputs (Mish's linear tail)."""
    g = torch.Generator().manual_seed(0)
    length, kernel = 90, 31
    ext = (torch.randn(length, dim, generator=g) * 3).to(dtype)
    conv = torch.nn.Conv1d(dim, dim, kernel, groups=groups)
    weight, bias = conv.weight.detach().to(dtype), conv.bias.detach().to(dtype)
    out_idx = torch.tensor([59, 0, 3, 3, 17, 0, 40, 58] * 5 + [1])
    expected = torch.nn.functional.mish(
        torch.nn.functional.conv1d(ext.float().t()[None], weight.float(), bias.float(), groups=groups)[0].t()[out_idx]
    )
    taps = pos_conv_taps(weight, groups)
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # the interpreter on the CPU, the kernel on a GPU
    got = pos_conv_triton(ext.to(dev), out_idx.to(dev), taps.to(dev), bias.to(dev)).cpu()
    ref = pos_conv_ref(ext.float(), out_idx, taps.float(), bias.float())
    assert got.dtype == dtype and got.shape == (len(out_idx), dim)
    assert ((ref - expected).norm() / expected.norm()).item() < 1e-6
    assert ((got.float() - expected).norm() / expected.norm()).item() < tol
