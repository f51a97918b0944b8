"""Entry points of the flow's paged kernels: the Triton kernel for CUDA tensors, the torch reference otherwise
(use_triton=True forces the kernel: on CPU tensors under TRITON_INTERPRET=1, as the tests do)."""

import torch

from light_tts.kernels.flow_attention import flow_attention_ref, flow_attention_triton
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
