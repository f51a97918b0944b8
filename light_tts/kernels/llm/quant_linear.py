"""Linear layers with quantized weights: y = x @ dequant(W)^T (+ bias) for W [N, K] in fp8 (e4m3) or int8 with a
float32 scale per output channel (kernels/llm/quant.py). Two modes:

- fp8 (w8a8): the activations are quantized too, per token with a dynamic scale, so y = (q_x @ q_w^T) * s_x * s_w.
  One row runs the Triton kernel below, whose prologue quantizes x (one launch, as the bf16 GEMM it replaces);
  more rows quantize x in one kernel and run torch._scaled_mm on the fp8 tensor cores (FP8_TRITON_MAX_ROWS).
- int8 (weight-only, for GPUs without fp8): y = (x @ q_w^T) * s_w, the weight converted to x's dtype in the kernel
  (exact: |q| <= 127), so only the weight's bytes shrink.

Both accumulate in float32. The Triton kernel multiplies in fp16 (fp8 mode: the rounded activations and the fp8
weights are exact in fp16) or in x's dtype (int8 mode); at one fp8 row it skips tensor cores (a dot product per
output on CUDA cores), and int8 at 1-16 rows fills a 16-row tensor-core tile with masked rows (choose_blocks).
"""

import functools

import torch
import triton
import triton.language as tl

from light_tts.kernels.llm.quant import per_token_fp8_ref, per_token_fp8_triton, quantize_rows, scale_of

# fp8: rows at or below which the fused Triton kernel runs instead of per-token quantization + torch._scaled_mm.
# light_tts.bench.quant_gemm times both (H100, docs/quantization.md): at one row the thin tile wins on 6 of the 8
# Qwen-0.5B / Llama-3B projections (e.g. Llama o 10.6 vs 13.0 us); at 2, 8 and 16 rows _scaled_mm wins on all 8,
# by 1.25-7.3x (Llama down at 2 rows: 26.6 vs 194.7 us): the tensor-core tile's prologue quantizes x per program
FP8_TRITON_MAX_ROWS = 1


@triton.jit
def _quant_linear_kernel(
    x_ptr,
    w_ptr,
    w_scale_ptr,
    bias_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_om,
    ACT_FP8: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    USE_DOT: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # program (block of BLOCK_N outputs, block of BLOCK_M rows)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    is_row, is_col = rows < M, cols < N
    x_rows = x_ptr + rows[:, None].to(tl.int64) * stride_xm  # (BLOCK_M, 1)
    w_rows = w_ptr + cols[:, None].to(tl.int64) * stride_wn  # (BLOCK_N, 1)
    if ACT_FP8:  # each row's scale first: a pass over x, which the second pass then reads from cache
        amax = tl.zeros((BLOCK_M,), tl.float32)
        for start in range(0, K, BLOCK_K):
            ks = start + tl.arange(0, BLOCK_K)
            x = tl.load(x_rows + ks[None, :], mask=is_row[:, None] & (ks[None, :] < K), other=0.0)
            amax = tl.maximum(amax, tl.max(tl.abs(x.to(tl.float32)), axis=1))
        x_scale = scale_of(amax, 448.0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for start in range(0, K, BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        in_k = ks[None, :] < K
        x = tl.load(x_rows + ks[None, :], mask=is_row[:, None] & in_k, other=0.0)
        if ACT_FP8:
            x = quantize_rows(x.to(tl.float32), x_scale, 2)
        w = tl.load(w_rows + ks[None, :], mask=is_col[:, None] & in_k, other=0.0)
        if USE_DOT:
            acc += tl.dot(x.to(DOT_DTYPE), tl.trans(w.to(DOT_DTYPE)), input_precision=DOT_PRECISION)
        else:  # (BLOCK_M, 1, BLOCK_K) * (1, BLOCK_N, BLOCK_K) summed over K
            acc += tl.sum(x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
    acc = acc * tl.load(w_scale_ptr + cols, mask=is_col, other=0.0)[None, :]
    if ACT_FP8:
        acc = acc * x_scale[:, None]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=is_col, other=0.0).to(tl.float32)[None, :]
    tl.store(
        out_ptr + rows[:, None] * stride_om + cols[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=is_row[:, None] & is_col[None, :],
    )


def choose_blocks(num_rows: int, act_fp8: bool = False) -> dict:
    """Tile sizes (and pipeline stages) by batch rows, from `light_tts.bench.quant_gemm` on an H100
    (docs/quantization.md): up to 16 rows one 16-row tensor-core tile, the rows past the batch masked, where thin
    CUDA-core tiles (a dot product per output) collapsed at 2-8 rows (up to 20x bf16) and were slower for int8 at 1
    row too; fp8 at 1 row keeps the thin tile, which beat the 16-row tile there because that tile's prologue
    quantizes 16 rows of x in every program (13 vs 49 us for Qwen's down projection). Wider tiles above 16 rows."""
    if num_rows == 1 and act_fp8:
        return dict(BLOCK_M=1, BLOCK_N=8, BLOCK_K=512, num_stages=3)
    if num_rows <= 16:
        return dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, num_stages=3)
    if num_rows <= 64:
        return dict(BLOCK_M=triton.next_power_of_2(num_rows), BLOCK_N=32, BLOCK_K=128, num_stages=3)
    return dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_stages=3)


def quant_linear_triton(
    x: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    act_fp8: bool,
    blocks: dict | None = None,
) -> torch.Tensor:
    """x [M, K] (float32 / fp16 / bf16), w_q [N, K] fp8 or int8, w_scale [N] float32, bias [N] or None -> [M, N]
    in x's dtype. act_fp8: quantize x per token to fp8 first (w8a8), else weight-only."""
    assert x.dim() == 2 and x.stride(1) == 1 and w_q.dim() == 2 and w_q.stride(1) == 1
    (num_rows, k), n = x.shape, w_q.shape[0]
    assert w_q.shape[1] == k, f"x has {k} features, the weight {w_q.shape[1]}"
    assert w_scale.shape == (n,) and w_scale.dtype == torch.float32
    assert bias is None or bias.shape == (n,)
    out = torch.empty((num_rows, n), dtype=x.dtype, device=x.device)
    if num_rows == 0:
        return out
    blocks = dict(blocks or choose_blocks(num_rows, act_fp8))
    num_stages = blocks.pop("num_stages", 3)
    use_dot = blocks["BLOCK_M"] >= 16
    dot_dtype = (
        tl.float16
        if act_fp8
        else {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[x.dtype]
    )
    grid = (triton.cdiv(n, blocks["BLOCK_N"]), triton.cdiv(num_rows, blocks["BLOCK_M"]))
    _quant_linear_kernel[grid](
        x,
        w_q,
        w_scale,
        w_scale if bias is None else bias,
        out,
        num_rows,
        n,
        k,
        x.stride(0),
        w_q.stride(0),
        out.stride(0),
        ACT_FP8=act_fp8,
        HAS_BIAS=bias is not None,
        USE_DOT=use_dot,
        DOT_DTYPE=dot_dtype,
        DOT_PRECISION="ieee" if dot_dtype == tl.float32 else "tf32",
        num_warps=4,
        num_stages=num_stages,
        **blocks,
    )
    return out


def scaled_mm_works(device: torch.device) -> bool:
    """Whether torch._scaled_mm runs fp8 with row-wise scales here (torch >= 2.5 on compute capability 9.0; its
    support on 8.9 depends on the build), tried once per GPU on a tiny product (at startup: never in a capture)."""
    if device.type != "cuda":
        return False
    return _scaled_mm_works(torch.cuda.current_device() if device.index is None else device.index)


@functools.cache
def _scaled_mm_works(index: int) -> bool:
    device = torch.device("cuda", index)
    if torch.cuda.get_device_capability(device) < (8, 9):
        return False
    a = torch.zeros((16, 32), dtype=torch.float8_e4m3fn, device=device)
    try:
        torch._scaled_mm(
            a,
            a.t(),
            scale_a=torch.ones((16, 1), device=device),
            scale_b=torch.ones((1, 16), device=device),
            out_dtype=torch.bfloat16,
        )
    except RuntimeError:
        return False
    return True


def fp8_linear_scaled_mm(
    x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """Per-token fp8 quantization (one kernel) + torch._scaled_mm (row-wise scales, bf16 out, fp32 accumulation)."""
    x_q, x_scale = per_token_fp8_triton(x)
    fused_bias = bias if bias is not None and bias.dtype == torch.bfloat16 else None
    out = torch._scaled_mm(
        x_q, w_q.t(), scale_a=x_scale, scale_b=w_scale.view(1, -1), bias=fused_bias, out_dtype=torch.bfloat16
    )
    if bias is not None and fused_bias is None:
        out = out + bias
    return out.to(x.dtype)


def fp8_linear_ref(
    x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """The fp8 mode in torch: x quantized per token (torch's rounding), exact fp8 products summed in float32."""
    x_q, x_scale = per_token_fp8_ref(x)
    out = (x_q.float() @ w_q.float().t()) * w_scale * x_scale
    return (out if bias is None else out + bias.float()).to(x.dtype)


def int8_linear_ref(
    x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    out = (x.float() @ w_q.float().t()) * w_scale
    return (out if bias is None else out + bias.float()).to(x.dtype)


def int8_linear_dequant(
    x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """The alternative to the Triton kernel: dequantize the whole weight to x's dtype, then cuBLAS (more bytes
    moved, a tuned GEMM; the bench compares them)."""
    return torch.nn.functional.linear(x, (w_q.to(torch.float32) * w_scale[:, None]).to(x.dtype), bias)
