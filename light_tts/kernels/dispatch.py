"""Which implementation an entry point runs: the Triton kernel or its torch reference. Shared by the LM's entry
points (ops.py) and the flow's and HiFT's (flow_ops.py), so both pick the same way.

use_triton=None picks by device (the kernel for CUDA tensors); use_triton=True forces the kernel (on CPU tensors
only under TRITON_INTERPRET=1, which the kernel tests use); use_triton=False forces the reference.
"""

import os

import torch


def is_triton(x: torch.Tensor, use_triton: bool | None) -> bool:
    if use_triton is None:
        return x.is_cuda
    if use_triton and not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("Triton kernels on CPU tensors need TRITON_INTERPRET=1 set before triton is imported")
    return use_triton
