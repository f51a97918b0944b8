"""Entry points of the flow's (and HiFT's) kernels: the Triton kernel for CUDA tensors, the torch reference otherwise
(use_triton=True forces the kernel: on CPU tensors under TRITON_INTERPRET=1, as the tests do)."""

import torch

from light_tts.kernels.dispatch import is_triton
from light_tts.kernels.flow.flow_attention import flow_attention_partials, flow_attention_ref, flow_attention_triton
from light_tts.kernels.flow.flow_block_tail import block_tail_ref, block_tail_triton
from light_tts.kernels.flow.flow_cfm_step import cfm_step_ref, cfm_step_triton
from light_tts.kernels.flow.flow_dit import (
    ada_modulate_ref,
    ada_modulate_triton,
    cfg_update_ref,
    cfg_update_triton,
    rotary_head0_ref,
    rotary_head0_triton,
)
from light_tts.kernels.flow.flow_fused import (
    add_layer_norm_ref,
    add_layer_norm_triton,
    gather_taps_ref,
    gather_taps_triton,
    layer_norm_mish_ref,
    layer_norm_mish_triton,
    snake_ref,
    snake_triton,
)
from light_tts.kernels.flow.flow_kv_store import store_pages_ref, store_pages_triton
from light_tts.kernels.flow.flow_pos_conv import pos_conv_ref, pos_conv_triton
from light_tts.kernels.flow.flow_qkv_store import qkv_store_ref, qkv_store_triton
from light_tts.kernels.flow.flow_relpos_attention import relpos_attention_ref, relpos_attention_triton
from light_tts.kernels.flow.flow_tap_conv import save_rows_ref, save_rows_triton, tap_conv_ref, tap_conv_triton
from light_tts.kernels.flow.hift_noise import keyed_noise_ref, keyed_noise_triton


def store_pages(src, pool, scale, items, use_triton: bool | None = None) -> None:
    (store_pages_triton if is_triton(src, use_triton) else store_pages_ref)(src, pool, scale, items)


def flow_attention(
    q, kv, scale, page_table, rows, work_row, work_block, chunk: int, block_m: int, use_triton: bool | None = None
) -> torch.Tensor:
    impl = flow_attention_triton if is_triton(q, use_triton) else flow_attention_ref
    return impl(q, kv, scale, page_table, rows, work_row, work_block, chunk, block_m)


def relpos_attention(
    q,
    kv,
    table,
    bias_u,
    bias_v,
    page_table,
    rows,
    work_row,
    work_block,
    chunk: int,
    block_m: int,
    use_triton: bool | None = None,
) -> torch.Tensor:
    impl = relpos_attention_triton if is_triton(q, use_triton) else relpos_attention_ref
    return impl(q, kv, table, bias_u, bias_v, page_table, rows, work_row, work_block, chunk, block_m)


def add_layer_norm(x, delta, bias, norm, use_triton: bool | None = None):
    """(x + delta [+ bias], norm(that)) in one pass (x, delta [M, C] contiguous; bias [C] or None)."""
    impl = add_layer_norm_triton if is_triton(x, use_triton) else add_layer_norm_ref
    return impl(x, delta, bias, norm)


def pos_conv(ext, out_idx, taps, bias, use_triton: bool | None = None):
    """mish(grouped conv1d) of ext [Lx, C] at positions out_idx, weight as flow_pos_conv.pos_conv_taps gives it."""
    return (pos_conv_triton if is_triton(ext, use_triton) else pos_conv_ref)(ext, out_idx, taps, bias)


def layer_norm_mish(y, norm, add=None, residual=None, use_triton: bool | None = None):
    """mish(norm(y)) [+ add (per channel)] [+ residual] in one pass."""
    impl = layer_norm_mish_triton if is_triton(y, use_triton) else layer_norm_mish_ref
    return impl(y, norm, add, residual)


def gather_taps(x, tails, tail_read, taps, use_triton: bool | None = None):
    """The im2col matrix of a causal conv over packed rows (see flow_inputs.py)."""
    impl = gather_taps_triton if is_triton(x, use_triton) else gather_taps_ref
    return impl(x, tails, tail_read, taps)


def snake(x, alpha, use_triton: bool | None = None):
    impl = snake_triton if is_triton(x, use_triton) else snake_ref
    return impl(x, alpha)


def keyed_noise(seeds, offsets, num_samples: int, num_harmonics: int, use_triton: bool | None = None):
    """HiFT's (initial phases [B, H], noise [B, num_samples, H]) from each row's (seed, first sample index)."""
    impl = keyed_noise_triton if is_triton(seeds, use_triton) else keyed_noise_ref
    return impl(seeds, offsets, num_samples, num_harmonics)


# ---- the fused estimator's launches (decode/flow/fused_estimator.py) ----


def qkv_store(h, w_qkv, pool, scale, items, num_heads: int, bias=None, use_triton: bool | None = None):
    """q of the packed rows; their keys and values go straight into their pages."""
    impl = qkv_store_triton if is_triton(h, use_triton) else qkv_store_ref
    return impl(h, w_qkv, pool, scale, items, num_heads, bias)


def attention_partials(
    q, kv, scale, page_table, rows, work_row, work_block, chunk: int, block_m: int, use_triton: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(o, None), or the unmerged split partials (mid_o, mid_lse) that block_tail merges."""
    if is_triton(q, use_triton):
        return flow_attention_partials(q, kv, scale, page_table, rows, work_row, work_block, chunk, block_m)
    return flow_attention_ref(q, kv, scale, page_table, rows, work_row, work_block, chunk, block_m), None


def block_tail(
    x,
    o,
    mid_lse,
    w_out,
    b_out,
    norm3,
    w1,
    b1,
    w2,
    b2,
    next_norm=None,
    act: str = "gelu",
    use_triton: bool | None = None,
):
    """A transformer block after its attention: (x2, next_norm(x2) or None)."""
    impl = block_tail_triton if is_triton(x, use_triton) else block_tail_ref
    return impl(x, o, mid_lse, w_out, b_out, norm3, w1, b1, w2, b2, next_norm, act)


def tap_conv(
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
    use_triton: bool | None = None,
):
    """A causal conv with its norm, activation, time bias or residual, next norm and a deferred tail save."""
    impl = tap_conv_triton if is_triton(x, use_triton) else tap_conv_ref
    return impl(x, tails, tail_read, taps, weight, bias, norm, add, res, next_norm, save)


def save_rows(x, tails, src, dst, use_triton: bool | None = None) -> None:
    (save_rows_triton if is_triton(x, use_triton) else save_rows_ref)(x, tails, src, dst)


def cfm_step(h, weight, bias, x, est_in, dt: float, rate: float, use_triton: bool | None = None) -> None:
    """Final projection of both CFG branches, the guided Euler update of x, x into the next step's input."""
    (cfm_step_triton if is_triton(h, use_triton) else cfm_step_ref)(h, weight, bias, x, est_in, dt, rate)


# ---- CosyVoice3's DiT (decode/dit/paged_dit.py) ----


def ada_modulate(h, gate, y, scale1p, shift, eps: float, use_triton: bool | None = None):
    """(h + gate y, or h when gate is None; LayerNorm(that) scale1p + shift) in one pass."""
    impl = ada_modulate_triton if is_triton(h, use_triton) else ada_modulate_ref
    return impl(h, gate, y, scale1p, shift, eps)


def rotary_head0(qkv, cos, sin, use_triton: bool | None = None) -> None:
    """Rotates head 0 of q and k in the packed qkv [M, 3, heads, dim_head] in place (cos, sin [M, dim_head])."""
    (rotary_head0_triton if is_triton(qkv, use_triton) else rotary_head0_ref)(qkv, cos, sin)


def cfg_update(v, x, est_in, dt: float, rate: float, use_triton: bool | None = None) -> None:
    """The guided Euler update of x [Mf, 80] from both branches' velocity v [2 Mf, 80]; x into est_in's first
    columns, both branches."""
    (cfg_update_triton if is_triton(v, use_triton) else cfg_update_ref)(v, x, est_in, dt, rate)
