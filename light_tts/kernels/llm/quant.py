"""Quantization formats shared by the quantized GEMMs and the quantized KV cache: fp8 (e4m3) and int8, symmetric,
with a float32 scale per row (a weight's output channel, a token's activations, a cached token's head).

value ~= q * scale with scale = max(amax, AMAX_FLOOR) / QMAX, q = round_to_format(value / scale). Rounding is to
nearest, ties to even, after clamping to +-QMAX, in torch and in the kernels alike: the @triton.jit helpers compute
the rounded value in float32 arithmetic, which is exact on the GPU and also right in Triton's interpreter (whose
own float32 -> fp8 cast gets rounding that carries into the exponent wrong), so kernels and references agree
bit for bit up to the float32 division.
"""

import torch
import triton
import triton.language as tl

FP8 = "fp8"
INT8 = "int8"
FORMATS = (FP8, INT8)
DTYPES = {FP8: torch.float8_e4m3fn, INT8: torch.int8}
QMAX = {FP8: 448.0, INT8: 127.0}  # largest finite e4m3 value; int8 stays symmetric (-128 unused)
AMAX_FLOOR = 1e-12  # an all-zero row gets a tiny positive scale instead of 0 (q = 0, no division by zero)
FORMAT_OF_DTYPE = {dtype: fmt for fmt, dtype in DTYPES.items()}
FORMAT_CODE = {INT8: 1, FP8: 2}  # the kernels' FORMAT constexpr (0: not quantized)


@triton.jit
def round_e4m3(x):
    """float32 -> the nearest e4m3 value (ties to even, saturating at +-448), still as float32."""
    x = tl.minimum(tl.maximum(x, -448.0), 448.0)
    bits = x.to(tl.int32, bitcast=True)
    # keep 3 of float32's 23 mantissa bits: add half an e4m3 ulp (minus one, plus the kept lsb: ties to even) and
    # clear the 20 low bits; a carry into the exponent is the right result
    bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576
    # below 2^-6 the step is a fixed 2^-9, float32's ulp at 24576 = 1.5 * 2^14: adding and subtracting it rounds
    subnormal = (x + 24576.0) - 24576.0
    return tl.where(tl.abs(x) < 0.015625, subnormal, bits.to(tl.float32, bitcast=True))


@triton.jit
def round_int8(x):
    """float32 -> the nearest integer in [-127, 127] (ties to even), still as float32."""
    x = tl.minimum(tl.maximum(x, -127.0), 127.0)
    return (x + 12582912.0) - 12582912.0  # float32's ulp at 12582912 = 1.5 * 2^23 is 1


@triton.jit
def scale_of(amax, qmax: tl.constexpr):
    """The scale of rows with absolute maximum amax (IEEE division, as torch's: CUDA's default is approximate)."""
    return tl.math.div_rn(tl.maximum(amax, 1e-12), qmax)


@triton.jit
def format_scale(amax, FORMAT: tl.constexpr):
    """scale_of for FORMAT's QMAX (FORMAT_CODE: 1 int8, 2 fp8)."""
    # if/else with one return: Triton's compiler goes on past a return inside a constexpr if (the interpreter does
    # not), so an early return would hand back the last branch's value on a GPU
    if FORMAT == 1:
        scale = scale_of(amax, 127.0)
    else:
        scale = scale_of(amax, 448.0)
    return scale


@triton.jit
def quantize_rows(x, scale, FORMAT: tl.constexpr):
    """x (R, C) float32 divided by its row scale (R,) and rounded to FORMAT (FORMAT_CODE: 1 int8, 2 fp8), as
    float32."""
    y = tl.math.div_rn(x, scale[:, None])  # IEEE division, as torch's (the default one is approximate on CUDA)
    if FORMAT == 1:  # if/else with one return, as format_scale
        out = round_int8(y)
    else:
        out = round_e4m3(y)
    return out


@triton.jit
def quantize_by_row(x, FORMAT: tl.constexpr):
    """x (R, C) float32 -> (x / scale rounded to FORMAT, as float32; scale (R,) from each row's amax)."""
    scale = format_scale(tl.max(tl.abs(x), axis=1), FORMAT)
    return quantize_rows(x, scale, FORMAT), scale


def row_scale_ref(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """Scale of each row of x [..., C] (over the last dim), float32 [...]."""
    return x.float().abs().amax(dim=-1).clamp(min=AMAX_FLOOR) / QMAX[fmt]


def quantize_ref(x: torch.Tensor, scale: torch.Tensor, fmt: str) -> torch.Tensor:
    """x [..., C] / scale [...] rounded to fmt (torch's own rounding), in fmt's dtype."""
    y = (x.float() / scale[..., None]).clamp(-QMAX[fmt], QMAX[fmt])
    return y.round().to(torch.int8) if fmt == INT8 else y.to(torch.float8_e4m3fn)


def quantize_weight(weight: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel quantization of a Linear weight [N, K] -> (q [N, K] in fmt's dtype, scale [N] float32)."""
    scale = row_scale_ref(weight, fmt)
    return quantize_ref(weight, scale, fmt), scale


def round_e4m3_ref(x: torch.Tensor) -> torch.Tensor:
    """torch's float32 -> e4m3 -> float32 round trip, saturating (what round_e4m3 computes)."""
    return x.float().clamp(-448.0, 448.0).to(torch.float8_e4m3fn).float()


@triton.jit
def _per_token_fp8_kernel(x_ptr, q_ptr, scale_ptr, stride_x, stride_q, K, BLOCK_K: tl.constexpr):
    # one program per token: amax over the row, then the quantized row
    row = tl.program_id(0).to(tl.int64)
    amax = tl.zeros((BLOCK_K,), tl.float32)
    for start in range(0, K, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + row * stride_x + cols, mask=cols < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    scale = scale_of(tl.max(amax, axis=0), 448.0)
    for start in range(0, K, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + row * stride_x + cols, mask=cols < K, other=0.0).to(tl.float32)
        q = round_e4m3(tl.math.div_rn(x, scale))
        tl.store(q_ptr + row * stride_q + cols, q.to(q_ptr.dtype.element_ty), mask=cols < K)
    tl.store(scale_ptr + row, scale)


def per_token_fp8_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token fp8 quantization of activations x [M, K] -> (q [M, K] e4m3, scale [M, 1] float32)."""
    assert x.dim() == 2 and x.stride(1) == 1, f"x must be [M, K] with contiguous rows, got {tuple(x.shape)}"
    num_rows, k = x.shape
    q = torch.empty((num_rows, k), dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty((num_rows, 1), dtype=torch.float32, device=x.device)
    if num_rows:
        _per_token_fp8_kernel[(num_rows,)](
            x, q, scale, x.stride(0), q.stride(0), k, BLOCK_K=min(triton.next_power_of_2(k), 1024), num_warps=4
        )
    return q, scale


def per_token_fp8_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = row_scale_ref(x, FP8)
    return quantize_ref(x, scale, FP8), scale[:, None]


def kv_format(k_cache: torch.Tensor, k_scale: torch.Tensor | None) -> int:
    """FORMAT constexpr of a KV cache: 0 for a cache in the compute dtype, else its quantized format's code (the
    scales [num_slots, num_kv_heads] float32 must come with it)."""
    if k_scale is None:
        assert k_cache.dtype not in FORMAT_OF_DTYPE, "a quantized KV cache needs its scales"
        return 0
    fmt = FORMAT_OF_DTYPE[k_cache.dtype]
    assert k_scale.dtype == torch.float32 and k_scale.shape == k_cache.shape[:2] and k_scale.stride(1) == 1, (
        f"KV scales must be [num_slots, num_kv_heads] float32, got {tuple(k_scale.shape)} {k_scale.dtype}"
    )
    return FORMAT_CODE[fmt]


def dequantize_ref(q: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """Quantized values [..., C] times their row scales [...] as float32 (a cache in the compute dtype: .float())."""
    return q.float() if scale is None else q.float() * scale[..., None]
