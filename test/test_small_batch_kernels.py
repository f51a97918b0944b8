"""The small-batch decoder kernels (kernels/llm/small_batch.py) against the general path's references they replace:
norm + projection, norm + gate_up + silu, and norm + qkv + bias + rotary + K/V store, with weights in the compute
dtype, int8 and fp8, and a KV cache in the compute dtype, int8 and fp8 (Triton's interpreter on the CPU)."""

import pytest
import torch
from test_kernels import DEVICE, IS_CUDA, randn
from test_quant_kernels import empty_quantized_cache, rel_l2

from light_tts.kernels.llm import ops
from light_tts.kernels.llm.quant import dequantize_ref, quantize_weight
from light_tts.kernels.llm.small_batch import MAX_ROWS

WEIGHTS = ["none", "int8", "fp8"]
# Triton's interpreter casts float32 to bf16 by truncation (the GPU rounds to nearest), so the kernels' bf16
# roundings are tested compiled only; fp16 (rounded alike in both) stands in on the CPU
DTYPES = [torch.float32, torch.bfloat16] if IS_CUDA else [torch.float32, torch.float16]
ROWS = [1, 3]
# (hidden, out features): off the power-of-two tiles, so the masks matter; Qwen2.5-0.5B's o_proj on CUDA
SHAPE = (896, 896) if IS_CUDA else (96, 40)
HEADS = (14, 2, 64) if IS_CUDA else (6, 2, 16)  # (q heads, kv heads, head_dim)
# what the kernel may differ from the reference by: summation order, then a rounding of the dtype it stores
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 8e-3}


def make_weight(n: int, k: int, fmt: str, dtype: torch.dtype):
    """(weight, scale or None) of a random [n, k] projection in the compute dtype or quantized."""
    w = torch.randn(n, k, device=DEVICE) / k**0.5
    if fmt == "none":
        return w.to(dtype), None
    return quantize_weight(w, fmt)


def both(op, *args, **kwargs):
    """The op through its kernel and through its reference."""
    return op(*args, **kwargs, use_triton=True), op(*args, **kwargs, use_triton=False)


@pytest.mark.parametrize("fmt", WEIGHTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_rows", ROWS)
@pytest.mark.parametrize("prologue", ["none", "norm", "norm+residual"])
def test_norm_linear(fmt, dtype, num_rows, prologue):
    k, n = SHAPE
    weight, scale = make_weight(n, k, fmt, dtype)
    h, bias = randn(num_rows, k, dtype=dtype), randn(n, dtype=dtype)
    norm = randn(k, dtype=dtype) if prologue != "none" else None
    residual = randn(num_rows, k, dtype=dtype) if prologue == "norm+residual" else None
    (out, res), (ref, ref_res) = both(ops.norm_linear, h, weight, scale, bias, norm, 1e-6, residual)
    assert out.dtype == dtype and out.shape == (num_rows, n)
    assert rel_l2(out, ref) < TOLERANCE[dtype]
    if prologue == "none":
        assert res is None and ref_res is None
    else:  # the residual sum is one rounded add, bit for bit (or h itself without a residual)
        assert torch.equal(res, ref_res) and (residual is not None or res is h)


def test_norm_linear_head_writes_float32_logits():
    """The final norm + head: float32 logits of the head's output dtype, as F.linear(...).float() gives."""
    k, n = SHAPE
    weight, _ = make_weight(n, k, "none", torch.float32)
    dtype = DTYPES[1]
    h, residual, norm = (randn(*shape, dtype=dtype) for shape in ((2, k), (2, k), (k,)))
    (out, _), (ref, _) = both(ops.norm_linear, h, weight.to(dtype), None, None, norm, 1e-6, residual, torch.float32)
    assert out.dtype == torch.float32 and torch.equal(out, out.to(dtype).float())  # values of the head's dtype
    assert rel_l2(out, ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("fmt", WEIGHTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_rows, with_residual", [(1, False), (MAX_ROWS, True)])
def test_gate_up_silu(fmt, dtype, num_rows, with_residual):
    k, n = SHAPE
    weight, scale = make_weight(2 * n, k, fmt, dtype)
    h, norm = randn(num_rows, k, dtype=dtype), randn(k, dtype=dtype)
    residual = randn(num_rows, k, dtype=dtype) if with_residual else None
    (out, res), (ref, ref_res) = both(ops.gate_up_silu, h, weight, scale, norm, 1e-6, residual)
    assert out.shape == (num_rows, n) and rel_l2(out, ref) < TOLERANCE[dtype]
    assert torch.equal(res, ref_res)


def kv_cache(num_slots: int, num_kv_heads: int, head_dim: int, kv: str, dtype: torch.dtype):
    """(cache, scales) filled with NaN, so that any slot written by mistake shows."""
    if kv != "auto":
        return empty_quantized_cache(num_slots, num_kv_heads, head_dim, kv)
    return torch.full((num_slots, num_kv_heads, head_dim), float("nan"), dtype=dtype, device=DEVICE), None


@pytest.mark.parametrize("fmt", WEIGHTS)
@pytest.mark.parametrize("kv", ["auto", "int8", "fp8"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_qkv_rope_stores_what_the_general_path_stores(fmt, kv, dtype):
    num_q_heads, num_kv_heads, head_dim = HEADS
    k, num_rows, num_slots = SHAPE[0], 3, 12
    weight, scale = make_weight((num_q_heads + 2 * num_kv_heads) * head_dim, k, fmt, dtype)
    bias = randn(weight.shape[0], dtype=dtype) if fmt != "int8" else None  # Qwen2's bias; Llama has none
    h, residual, norm = randn(num_rows, k, dtype=dtype), randn(num_rows, k, dtype=dtype), randn(k, dtype=dtype)
    positions = torch.tensor([5, 300, 2047], device=DEVICE)
    slots = torch.tensor([7, -1, 2], device=DEVICE)  # the middle row is padding: nothing stored
    cos_sin = ops.build_cos_sin_cache(2048, head_dim, 1e6, DEVICE)
    results = []
    for use_triton in (True, False):
        (k_c, k_s), (v_c, v_s) = (kv_cache(num_slots, num_kv_heads, head_dim, kv, dtype) for _ in range(2))
        q, res = ops.qkv_rope(
            h, weight, scale, bias, norm, 1e-6, residual, positions, cos_sin, slots, k_c, v_c, k_s, v_s,
            use_triton=use_triton,
        )  # fmt: skip
        results.append((q, res, dequantize_ref(k_c, k_s), dequantize_ref(v_c, v_s)))
    (q, res, k_got, v_got), (q_ref, res_ref, k_ref, v_ref) = results
    assert q.shape == (num_rows, num_q_heads, head_dim) and rel_l2(q, q_ref) < TOLERANCE[dtype]
    assert torch.equal(res, res_ref)
    stored = torch.tensor([7, 2])
    for got, ref in ((k_got, k_ref), (v_got, v_ref)):
        unwritten = torch.ones(num_slots, dtype=torch.bool)
        unwritten[stored] = False
        assert got[unwritten].isnan().all() and not got[stored].isnan().any()  # the padding row wrote nothing
        # a quantized head's code can land one step apart where the two roundings straddle a boundary
        bound = {"auto": TOLERANCE[dtype], "int8": 2e-2, "fp8": 6e-2}[kv]
        assert rel_l2(got[stored], ref[stored]) < bound


def test_rows_past_the_limit_are_refused():
    k, n = SHAPE
    weight, _ = make_weight(n, k, "none", torch.float32)
    with pytest.raises(AssertionError, match="h must be"):
        ops.norm_linear(randn(MAX_ROWS + 1, k), weight, use_triton=True)


def test_bench_runs_on_the_cpu(tmp_path):
    """`bench.quant_gemm --small_batch` (its GPU numbers are in docs/performance.md) runs every op of both paths."""
    import json

    from light_tts.bench.engines.small_batch_ops import OPS
    from light_tts.bench.quant_gemm import main

    out = tmp_path / "sb.json"
    main(["--out", str(out), "--small_batch", "--device", str(DEVICE), "--shapes", "tiny", "--rows", "2", "--no_sweep"])
    (run,) = [r for r in json.loads(out.read_text())["runs"] if r["weights"] == "fp8"]
    assert run["rows"] == 2 and set(run["general_us"]) == set(run["fused_us"]) == set(OPS)
