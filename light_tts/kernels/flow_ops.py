"""Entry points of the flow's (and HiFT's) kernels: the Triton kernel for CUDA tensors, the torch reference otherwise
(use_triton=True forces the kernel: on CPU tensors under TRITON_INTERPRET=1, as the tests do)."""

import torch

from light_tts.kernels.flow_attention import flow_attention_ref, flow_attention_triton
from light_tts.kernels.flow_fused import (add_layer_norm_ref, add_layer_norm_triton, gather_taps_ref,
                                          gather_taps_triton, layer_norm_mish_ref, layer_norm_mish_triton, snake_ref,
                                          snake_triton)
from light_tts.kernels.flow_kv_store import store_pages_ref, store_pages_triton
from light_tts.kernels.flow_relpos_attention import relpos_attention_ref, relpos_attention_triton
from light_tts.kernels.ops import _is_triton


def store_pages(src, pool, scale, items, use_triton: bool | None = None) -> None:
    (store_pages_triton if _is_triton(src, use_triton) else store_pages_ref)(src, pool, scale, items)


def flow_attention(q, kv, scale, page_table, rows, work_row, work_block, chunk: int, block_m: int,
                   use_triton: bool | None = None) -> torch.Tensor:
    impl = flow_attention_triton if _is_triton(q, use_triton) else flow_attention_ref
    return impl(q, kv, scale, page_table, rows, work_row, work_block, chunk, block_m)


def relpos_attention(q, kv, table, bias_u, bias_v, page_table, rows, work_row, work_block, chunk: int,
                     block_m: int, use_triton: bool | None = None) -> torch.Tensor:
    impl = relpos_attention_triton if _is_triton(q, use_triton) else relpos_attention_ref
    return impl(q, kv, table, bias_u, bias_v, page_table, rows, work_row, work_block, chunk, block_m)


def add_layer_norm(x, delta, bias, norm, use_triton: bool | None = None):
    """(x + delta [+ bias], norm(that)) in one pass (x, delta [M, C] contiguous; bias [C] or None)."""
    impl = add_layer_norm_triton if _is_triton(x, use_triton) else add_layer_norm_ref
    return impl(x, delta, bias, norm)


def layer_norm_mish(y, norm, add=None, residual=None, use_triton: bool | None = None):
    """mish(norm(y)) [+ add (per channel)] [+ residual] in one pass."""
    impl = layer_norm_mish_triton if _is_triton(y, use_triton) else layer_norm_mish_ref
    return impl(y, norm, add, residual)


def gather_taps(x, tails, tail_read, taps, use_triton: bool | None = None):
    """The im2col matrix of a causal conv over packed rows (see flow_inputs.py)."""
    impl = gather_taps_triton if _is_triton(x, use_triton) else gather_taps_ref
    return impl(x, tails, tail_read, taps)


def snake(x, alpha, use_triton: bool | None = None):
    impl = snake_triton if _is_triton(x, use_triton) else snake_ref
    return impl(x, alpha)
