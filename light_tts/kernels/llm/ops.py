"""Kernel entry points for the Qwen2 LM engine: the Triton kernel for CUDA tensors, the torch reference otherwise.

use_triton=None picks by device; use_triton=True forces the kernel (on CPU tensors only under TRITON_INTERPRET=1,
which the kernel tests use); use_triton=False forces the reference.
"""

import torch

from light_tts.kernels.dispatch import is_triton
from light_tts.kernels.llm.activation import silu_and_mul_ref, silu_and_mul_triton
from light_tts.kernels.llm.decode_attention import decode_attention_ref, decode_attention_triton
from light_tts.kernels.llm.kv_store import store_kv_ref, store_kv_triton
from light_tts.kernels.llm.nucleus_sampling import nucleus_sample_ref, nucleus_sample_triton
from light_tts.kernels.llm.prefill_attention import prefill_attention_ref, prefill_attention_triton
from light_tts.kernels.llm.quant_linear import (
    FP8_TRITON_MAX_ROWS,
    fp8_linear_ref,
    fp8_linear_scaled_mm,
    int8_linear_ref,
    quant_linear_triton,
    scaled_mm_works,
)
from light_tts.kernels.llm.ras_sampling import ras_first_attempt_ref, ras_first_attempt_triton
from light_tts.kernels.llm.rmsnorm import rms_norm_ref, rms_norm_triton
from light_tts.kernels.llm.rotary import apply_rotary_ref, apply_rotary_triton, build_cos_sin_cache
from light_tts.kernels.llm.small_batch import (
    gate_up_silu_ref,
    gate_up_silu_triton,
    norm_linear_ref,
    norm_linear_triton,
    qkv_rope_ref,
    qkv_rope_triton,
)

__all__ = [
    "rms_norm",
    "apply_rotary",
    "build_cos_sin_cache",
    "silu_and_mul",
    "store_kv",
    "prefill_attention",
    "decode_attention",
    "ras_first_attempt",
    "nucleus_sample",
    "fp8_linear",
    "int8_linear",
    "norm_linear",
    "gate_up_silu",
    "qkv_rope",
]


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
    use_triton: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """out = rmsnorm(x [+ residual]) * weight; returns (out, x + residual) or (out, None)."""
    impl = rms_norm_triton if is_triton(x, use_triton) else rms_norm_ref
    return impl(x, weight, eps, residual)


def apply_rotary(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    v: torch.Tensor | None = None,
    k_cache: torch.Tensor | None = None,
    v_cache: torch.Tensor | None = None,
    slot_mapping: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    use_triton: bool | None = None,
) -> None:
    """Rotates q [T, Hq, D] and k [T, Hkv, D] in place at positions [T]. In the same launch: with bias
    [(Hq + 2 Hkv) * D] (the qkv projection's), first adds it to q, k and v [T, Hkv, D] in place; with the caches
    given, writes the rotated k and v to cache slots slot_mapping [T] (slot -1: not stored), quantized with their
    scales [slots, Hkv] when the cache is int8 or fp8."""
    impl = apply_rotary_triton if is_triton(q, use_triton) else apply_rotary_ref
    impl(q, k, positions, cos_sin_cache, v, k_cache, v_cache, slot_mapping, bias, k_scale, v_scale)


def silu_and_mul(x: torch.Tensor, use_triton: bool | None = None) -> torch.Tensor:
    """[T, 2I] -> silu(gate) * up [T, I]."""
    impl = silu_and_mul_triton if is_triton(x, use_triton) else silu_and_mul_ref
    return impl(x)


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    use_triton: bool | None = None,
) -> None:
    """Writes k, v [T, Hkv, D] to cache slots slot_mapping [T]; slot -1 drops a padding token. An int8 or fp8
    cache gets them quantized, one scale per (token, head) written to k_scale, v_scale [slots, Hkv]."""
    impl = store_kv_triton if is_triton(k, use_triton) else store_kv_ref
    impl(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    b_req_idx: torch.Tensor,
    b_start_loc: torch.Tensor,
    b_seq_len: torch.Tensor,
    b_prefix_len: torch.Tensor,
    sm_scale: float,
    max_new_len: int | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    use_triton: bool | None = None,
) -> torch.Tensor:
    """Causal attention of packed new tokens q [T, Hq, D] over prefix + themselves -> [T, Hq, D]; k_scale and
    v_scale come with an int8 or fp8 cache."""
    impl = prefill_attention_triton if is_triton(q, use_triton) else prefill_attention_ref
    return impl(
        q,
        k_cache,
        v_cache,
        req_to_token,
        b_req_idx,
        b_start_loc,
        b_seq_len,
        b_prefix_len,
        sm_scale,
        max_new_len,
        k_scale,
        v_scale,
    )


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    b_req_idx: torch.Tensor,
    b_seq_len: torch.Tensor,
    sm_scale: float,
    max_seq_len: int | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    use_triton: bool | None = None,
) -> torch.Tensor:
    """One query q [B, Hq, D] per request over its b_seq_len cached tokens -> [B, Hq, D]; empty rows give zeros;
    k_scale and v_scale come with an int8 or fp8 cache."""
    impl = decode_attention_triton if is_triton(q, use_triton) else decode_attention_ref
    return impl(q, k_cache, v_cache, req_to_token, b_req_idx, b_seq_len, sm_scale, max_seq_len, k_scale, v_scale)


def ras_first_attempt(
    scores: torch.Tensor,
    packed: torch.Tensor,
    top_k: int,
    top_p: float,
    min_repeats: float,
    reject_from: int,
    use_triton: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """First sampling attempt of [B, V] float32 log-probs with SamplingInputs.packed [B, 4 + win] -> (ids [B],
    id banned by the repetition fallback or -1 [B]), both int64; greedy rows take the (allowed) argmax."""
    impl = ras_first_attempt_triton if is_triton(scores, use_triton) else ras_first_attempt_ref
    return impl(scores, packed, top_k, top_p, min_repeats, reject_from)


def nucleus_sample(
    logits: torch.Tensor,
    packed: torch.Tensor,
    seen: torch.Tensor,
    temperature: float,
    top_p: float,
    penalty: float,
    use_triton: bool | None = None,
) -> torch.Tensor:
    """One id per row of [B, V] float32 logits: repetition penalty over seen [rows, V] (bool), temperature, top-p,
    within each row's allowed range (packed [B, 5 + rounds], kernels/llm/nucleus_sampling.py) -> ids [B] int64."""
    impl = nucleus_sample_triton if is_triton(logits, use_triton) else nucleus_sample_ref
    return impl(logits, packed, seen, temperature, top_p, penalty)


def fp8_linear(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    use_triton: bool | None = None,
) -> torch.Tensor:
    """x [M, K] @ fp8 weight [N, K] (scales [N]) with x quantized to fp8 per token -> [M, N] in x's dtype: the fused
    Triton kernel up to FP8_TRITON_MAX_ROWS rows (or where torch._scaled_mm cannot run), torch._scaled_mm above."""
    if not is_triton(x, use_triton):
        return fp8_linear_ref(x, w_q, w_scale, bias)
    # _scaled_mm needs K and N multiples of 16 (every LLM projection here)
    if (
        x.is_cuda
        and x.shape[0] > FP8_TRITON_MAX_ROWS
        and x.shape[1] % 16 == 0 == w_q.shape[0] % 16
        and scaled_mm_works(x.device)
    ):
        return fp8_linear_scaled_mm(x, w_q, w_scale, bias)
    return quant_linear_triton(x, w_q, w_scale, bias, act_fp8=True)


def int8_linear(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    use_triton: bool | None = None,
) -> torch.Tensor:
    """x [M, K] @ int8 weight [N, K] (scales [N]), weight-only -> [M, N] in x's dtype."""
    if not is_triton(x, use_triton):
        return int8_linear_ref(x, w_q, w_scale, bias)
    return quant_linear_triton(x, w_q, w_scale, bias, act_fp8=False)


# Small decode batches (kernels/llm/small_batch.py): a weight is in the compute dtype, or int8 / fp8 with its float32
# scale per output channel (weight_scale); the product is w8a8 for fp8 weights, weight-only for int8.


def norm_linear(
    h: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    eps: float = 0.0,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    use_triton: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """rmsnorm(h [+ residual]) * norm_weight @ W^T + bias -> (out [M, N], the residual sum or h); without
    norm_weight h @ W^T + bias -> (out, None). One launch for up to small_batch.MAX_ROWS rows."""
    impl = norm_linear_triton if is_triton(h, use_triton) else norm_linear_ref
    return impl(h, weight, weight_scale, bias, norm_weight, eps, residual, out_dtype)


def gate_up_silu(
    h: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
    use_triton: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """silu(gate) * up of rmsnorm(h [+ residual]) * norm_weight @ W^T (W: gate rows, then up rows) -> (out [M, I],
    the residual sum or h). One launch."""
    impl = gate_up_silu_triton if is_triton(h, use_triton) else gate_up_silu_ref
    return impl(h, weight, weight_scale, norm_weight, eps, residual)


def qkv_rope(
    h: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    use_triton: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The qkv projection of rmsnorm(h [+ residual]), its bias, rotary and the K/V store in one launch -> (q [M,
    Hq, D], the residual sum or h); k and v go to the cache at slot_mapping (-1: not stored)."""
    impl = qkv_rope_triton if is_triton(h, use_triton) else qkv_rope_ref
    return impl(
        h,
        weight,
        weight_scale,
        bias,
        norm_weight,
        eps,
        residual,
        positions,
        cos_sin_cache,
        slot_mapping,
        k_cache,
        v_cache,
        k_scale,
        v_scale,
    )
