"""Quantized kernels vs their torch references (Triton's interpreter on the CPU): fp8 rounding, per-token activation
quantization, the fp8 (w8a8) and int8 (weight-only) linear layers, and the int8 / fp8 KV cache as the store,
rotary and attention kernels write and read it."""

import os

import pytest
import torch
import triton
import triton.language as tl
from test_kernels import (
    ATTN_BLOCKS,
    ATTN_DTYPES,
    DECODE_LAUNCH,
    DECODE_LENS,
    DEVICE,
    HEAD_SHAPES,
    IS_CUDA,
    PREFILL_SEQS,
    make_decode_case,
    make_prefill_case,
    randn,
    tolerance,
)
from test_kernels import DTYPES as FLOAT_DTYPES

from light_tts.kernels.llm import ops
from light_tts.kernels.llm.decode_attention import decode_attention_triton
from light_tts.kernels.llm.prefill_attention import prefill_attention_triton
from light_tts.kernels.llm.quant import (
    DTYPES,
    QMAX,
    dequantize_ref,
    per_token_fp8_ref,
    per_token_fp8_triton,
    quantize_ref,
    quantize_weight,
    round_e4m3,
    row_scale_ref,
)
from light_tts.kernels.llm.quant_linear import FP8_TRITON_MAX_ROWS, fp8_linear_scaled_mm, quant_linear_triton

if not IS_CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("the kernels need a GPU or TRITON_INTERPRET=1 (conftest.py sets it)", allow_module_level=True)

FORMATS = ["int8", "fp8"]
# the interpreter's tl.dot multiplies bf16 bit patterns as integers: bf16 inputs to a bf16 dot only when compiled
DOT_DTYPES = FLOAT_DTYPES if IS_CUDA else [torch.float32, torch.float16]
ROWS = [1, 3, 16, 40, 300] if IS_CUDA else [1, 3, 16, 40]  # GEMV tiles (< 16 rows), tensor-core tiles
LINEAR_SHAPE = (896, 1152) if IS_CUDA else (96, 40)  # (K, N); Qwen2.5-0.5B's qkv on CUDA


def rel_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.float() - ref.float()).norm() / ref.float().norm())


@triton.jit
def _round_e4m3_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, round_e4m3(tl.load(x_ptr + offs, mask=offs < n)), mask=offs < n)


def test_round_e4m3_is_torchs_rounding():
    """Every e4m3 value, the midpoints between neighbours (ties to even), subnormals, values past +-448."""
    exact = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    exact = exact[~exact.isnan()].sort().values
    x = torch.cat(
        [
            exact,
            (exact[1:] + exact[:-1]) / 2,
            torch.randn(4000) * torch.exp(torch.randn(4000) * 4),
            torch.tensor([460.0, -1e6, 2.0**-10, -(2.0**-10) * 3]),
        ]
    ).to(DEVICE)
    out = torch.empty_like(x)
    _round_e4m3_kernel[(triton.cdiv(x.numel(), 1024),)](x, out, x.numel(), BLOCK=1024)
    expected = x.clamp(-448, 448).to(torch.float8_e4m3fn).float()
    assert torch.equal(out, expected)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_per_token_fp8(dtype):
    x = randn(7, 300, dtype=dtype) * torch.logspace(-3, 3, 7, device=DEVICE)[:, None].to(dtype)
    x[2] = 0  # a zero row: a tiny scale, zeros out
    q, scale = per_token_fp8_triton(x)
    q_ref, scale_ref = per_token_fp8_ref(x)
    assert torch.equal(scale, scale_ref) and torch.equal(q.float(), q_ref.float())
    assert (q[2].float() == 0).all() and (q.float().abs().amax(dim=1)[[0, 1, 3]] == 448).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_quantize_weight_per_channel(fmt):
    w = torch.randn(64, 128) * torch.logspace(-2, 2, 64)[:, None]  # channels of very different sizes
    q, scale = quantize_weight(w, fmt)
    assert q.dtype == DTYPES[fmt] and scale.shape == (64,)
    err = (dequantize_ref(q, scale) - w).abs()
    # half a step: int8's step is the scale; e4m3's is 2^-3 of the value's power of two (2^-9 below 2^-6)
    half_step = scale[:, None] / 2 if fmt == "int8" else w.abs() * 2**-4 + scale[:, None] * 2**-10
    assert (err <= half_step * 1.0001).all() and (err > 0).any()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("num_rows", ROWS)
@pytest.mark.parametrize("dtype", DOT_DTYPES)
def test_quant_linear_matches_reference(fmt, num_rows, dtype):
    k, n = LINEAR_SHAPE
    w = torch.randn(n, k, device=DEVICE) / k**0.5
    w_q, w_scale = quantize_weight(w, fmt)
    x, bias = randn(num_rows, k, dtype=dtype), randn(n, dtype=dtype)
    linear = ops.fp8_linear if fmt == "fp8" else ops.int8_linear
    out = quant_linear_triton(x, w_q, w_scale, bias, act_fp8=fmt == "fp8")
    ref = linear(x, w_q, w_scale, bias, use_triton=False)
    assert out.dtype == dtype and rel_l2(out, ref) < {torch.float32: 1e-5}.get(dtype, 2e-3)
    # and the quantization error against the unquantized layer: a few % for fp8, under 1% for int8
    assert rel_l2(ref, torch.nn.functional.linear(x.float(), w, bias.float())) < {"fp8": 0.06, "int8": 0.01}[fmt]
    if IS_CUDA:  # through the dispatcher: above FP8_TRITON_MAX_ROWS rows fp8 runs torch._scaled_mm (bf16 out)
        is_scaled_mm = fmt == "fp8" and num_rows > FP8_TRITON_MAX_ROWS
        assert rel_l2(linear(x, w_q, w_scale, bias), ref) < (
            1e-5 if dtype == torch.float32 and not is_scaled_mm else 1e-2
        )


def test_fp8_scaled_mm_path():
    """Per-token quantization kernel + torch._scaled_mm with row-wise scales (torch's CPU build runs it too), bias
    fused in bf16."""
    k, n = LINEAR_SHAPE
    w_q, w_scale = quantize_weight(torch.randn(n, k, device=DEVICE), "fp8")
    x, bias = randn(40, k, dtype=torch.bfloat16), randn(n, dtype=torch.bfloat16)
    assert (
        rel_l2(fp8_linear_scaled_mm(x, w_q, w_scale, bias), ops.fp8_linear(x, w_q, w_scale, bias, use_triton=False))
        < 1e-2
    )


def test_linear_ops_run_the_reference_on_cpu_tensors():
    w_q, w_scale = quantize_weight(torch.randn(8, 32), "fp8")
    x = torch.randn(2, 32)
    assert torch.equal(ops.fp8_linear(x, w_q, w_scale), ops.fp8_linear(x, w_q, w_scale, use_triton=False))


def quantize_cache(cache: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A cache [slots, Hkv, D] quantized per (slot, head), as the store kernels write it -> (codes, scales)."""
    scale = row_scale_ref(cache, fmt)
    return quantize_ref(cache, scale, fmt), scale


def empty_quantized_cache(num_slots: int, num_kv_heads: int, head_dim: int, fmt: str):
    """Cache codes filled with a value quantization never writes (int8 -128, fp8 NaN), scales with NaN."""
    fill = -128 if fmt == "int8" else float("nan")
    codes = torch.full((num_slots, num_kv_heads, head_dim), fill, dtype=DTYPES[fmt], device=DEVICE)
    return codes, torch.full((num_slots, num_kv_heads), float("nan"), device=DEVICE)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_store_kv_quantized(fmt, dtype):
    num_tokens, num_kv_heads, head_dim, num_slots = 10, 2, 16, 40
    k, v = (
        randn(num_tokens, num_kv_heads, head_dim, dtype=dtype),
        randn(num_tokens, num_kv_heads, head_dim, dtype=dtype),
    )
    k[4, 1] = 0  # a zero head
    slots = torch.randperm(num_slots, device=DEVICE)[:num_tokens]
    slots[3] = -1  # padding token
    caches = [empty_quantized_cache(num_slots, num_kv_heads, head_dim, fmt) for _ in range(4)]
    (k_c, k_s), (v_c, v_s), (k_c_ref, k_s_ref), (v_c_ref, v_s_ref) = caches
    ops.store_kv(k, v, k_c, v_c, slots, k_s, v_s, use_triton=True)
    ops.store_kv(k, v, k_c_ref, v_c_ref, slots, k_s_ref, v_s_ref, use_triton=False)
    for got, expected in ((k_c, k_c_ref), (v_c, v_c_ref), (k_s, k_s_ref), (v_s, v_s_ref)):
        torch.testing.assert_close(got.float(), expected.float(), atol=0, rtol=0, equal_nan=True)
    stored, is_real = slots[slots >= 0], slots >= 0
    assert k_s.isnan().sum() == (num_slots - 9) * num_kv_heads  # nothing written for padding or other slots
    for codes, scales, x in ((k_c, k_s, k), (v_c, v_s, v)):
        err = (dequantize_ref(codes[stored], scales[stored]) - x[is_real].float()).abs()
        assert (err <= scales[stored][..., None] * (0.5 if fmt == "int8" else 16) + 1e-6).all()
        assert (codes[stored].float().abs().amax(dim=-1)[scales[stored] > 1e-6] == QMAX[fmt]).all()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_apply_rotary_stores_quantized_kv(fmt, dtype):
    num_q_heads, num_kv_heads, head_dim = HEAD_SHAPES[1]
    num_tokens, num_slots = 9, 30
    qkv = randn(num_tokens, (num_q_heads + 2 * num_kv_heads) * head_dim, dtype=dtype)
    positions = torch.randint(1, 2048, (num_tokens,), device=DEVICE)
    slots = torch.randperm(num_slots, device=DEVICE)[:num_tokens]
    slots[2] = -1
    bias, cos_sin = randn(qkv.shape[1], dtype=dtype), ops.build_cos_sin_cache(2048, head_dim, 1e6, DEVICE)
    results = []
    for use_triton in (True, False):
        q, k, v = (
            x.view(num_tokens, -1, head_dim)
            for x in qkv.clone().split(
                [num_q_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1
            )
        )
        (k_c, k_s), (v_c, v_s) = (empty_quantized_cache(num_slots, num_kv_heads, head_dim, fmt) for _ in range(2))
        ops.apply_rotary(q, k, positions, cos_sin, v, k_c, v_c, slots, bias, k_s, v_s, use_triton=use_triton)
        results.append(((dequantize_ref(k_c, k_s), k_s), (dequantize_ref(v_c, v_s), v_s), k))
    codes_per_step = 1 if fmt == "int8" else 32  # the largest e4m3 step is 32 at scale 1
    for (got, scale), (expected, _) in zip(results[0][:2], results[1][:2]):
        # the kernel's rotation rounds like the reference's up to an ulp of the dtype: half a step each way, that ulp
        bound = scale.nan_to_num()[..., None] * codes_per_step + 2 * torch.finfo(dtype).eps * expected.abs()
        assert (((got - expected).abs() <= bound) | expected.isnan()).all()
        assert (got.isnan() == expected.isnan()).all()
        assert got.isnan().sum() == (num_slots - num_tokens + 1) * num_kv_heads * head_dim  # only real slots
    (k_deq, k_s), _, k = results[0]
    is_real = slots >= 0
    assert (
        (k_deq[slots[is_real]] - k[is_real].float()).abs() <= k_s[slots[is_real]][..., None] * codes_per_step / 2 + 1e-6
    ).all()


ATTN_QUANT_ERR = {"int8": 0.03, "fp8": 0.15}  # max |output change| of attention over a quantized random cache
# (cache format, q dtype): every pair compiled; two in the (slow) interpreter
ATTN_CASES = (
    [(f, d) for f in FORMATS for d in ATTN_DTYPES] if IS_CUDA else [("int8", torch.float32), ("fp8", torch.float16)]
)
# decode attention rounds a bf16 q to fp16 for its dots over a quantized cache: the interpreter runs that case too
# (its bf16 dot is wrong, but no bf16 dot is left)
DECODE_ATTN_CASES = ATTN_CASES if IS_CUDA else ATTN_CASES + [("fp8", torch.bfloat16)]


@pytest.mark.parametrize("fmt, dtype", DECODE_ATTN_CASES)
def test_decode_attention_reads_quantized_kv(fmt, dtype, poisoned_empty):
    q, k_cache, v_cache, *meta = make_decode_case(HEAD_SHAPES[1], dtype)
    (k_q, k_s), (v_q, v_s) = quantize_cache(k_cache, fmt), quantize_cache(v_cache, fmt)
    out = decode_attention_triton(
        q,
        k_q,
        v_q,
        *meta,
        max_seq_len=max(DECODE_LENS),
        k_scale=k_s,
        v_scale=v_s,
        launch=DECODE_LAUNCH,
    )
    ref = ops.decode_attention(q, k_q, v_q, *meta, k_scale=k_s, v_scale=v_s, use_triton=False)
    torch.testing.assert_close(out, ref, **tolerance(dtype))
    unquantized = ops.decode_attention(q, k_cache, v_cache, *meta, use_triton=False)
    assert (out.float() - unquantized.float()).abs().max() < ATTN_QUANT_ERR[fmt]
    assert (out[meta[2] == 0] == 0).all()  # padding rows


@pytest.mark.parametrize("fmt, dtype", ATTN_CASES)
def test_prefill_attention_reads_quantized_kv(fmt, dtype, poisoned_empty):
    q, k_cache, v_cache, *meta = make_prefill_case(HEAD_SHAPES[1], dtype)
    (k_q, k_s), (v_q, v_s) = quantize_cache(k_cache, fmt), quantize_cache(v_cache, fmt)
    out = prefill_attention_triton(
        q, k_q, v_q, *meta, max_new_len=max(n for n, _ in PREFILL_SEQS), k_scale=k_s, v_scale=v_s, **ATTN_BLOCKS
    )
    ref = ops.prefill_attention(q, k_q, v_q, *meta, k_scale=k_s, v_scale=v_s, use_triton=False)
    torch.testing.assert_close(out, ref, **tolerance(dtype))
    unquantized = ops.prefill_attention(q, k_cache, v_cache, *meta, use_triton=False)
    assert (out.float() - unquantized.float()).abs().max() < ATTN_QUANT_ERR[fmt]


def test_gemm_bench_runs(tmp_path):
    """light_tts.bench.quant_gemm at tiny shapes (on the CPU: the interpreter, only that it runs)."""
    import json

    from light_tts.bench.quant_gemm import main

    main(
        [
            "--out",
            str(tmp_path / "g.json"),
            "--shapes",
            "tiny",
            "--rows",
            "1,16",
            "--dtype",
            "float32",
            "--device",
            DEVICE.type,
            "--no_sweep",
        ]
    )
    rows = json.loads((tmp_path / "g.json").read_text())["rows"]
    assert len(rows) == 2 * 2 and all(r["fp8_triton_ms"] > 0 and r["int8_triton_ms"] > 0 for r in rows)


@pytest.mark.skipif(IS_CUDA, reason="the CPU check of the bench")
def test_quant_gemm_bench_runs_on_the_cpu(tmp_path):
    """`light_tts.bench.quant_gemm --device cpu` (the interpreter, tiny shapes) runs and writes a row per shape and
    row count, the tile it times by default among them."""
    import json

    from light_tts.bench.quant_gemm import main

    main(
        [
            "--out",
            str(tmp_path / "q.json"),
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--shapes",
            "tiny",
            "--rows",
            "1,17",
        ]
    )
    rows = json.loads((tmp_path / "q.json").read_text())["rows"]
    assert [(r["proj"], r["rows"]) for r in rows] == [("qkv", 1), ("qkv", 17), ("down", 1), ("down", 17)]
    assert [r["fp8_triton_best_tile"]["BLOCK_M"] for r in rows] == [1, 32, 1, 32]  # the default tiles (no sweep)


def test_small_batches_take_the_16_row_tile():
    """Up to 16 rows one 16-row tensor-core tile (the thin tiles collapsed at 2-8 rows on an H100), except fp8 at
    one row, whose thin tile was faster there (docs/quantization.md)."""
    from light_tts.kernels.llm.quant_linear import choose_blocks

    assert choose_blocks(1, act_fp8=True)["BLOCK_M"] == 1
    assert all(choose_blocks(rows, act_fp8=fp8)["BLOCK_M"] == 16 for rows in range(2, 17) for fp8 in (False, True))
    assert choose_blocks(1, act_fp8=False)["BLOCK_M"] == 16
    assert choose_blocks(17)["BLOCK_M"] == 32 and choose_blocks(300)["BLOCK_M"] == 64


def test_kernel_sweep_runs_every_launch_against_the_default(tmp_path):
    """`bench.kernels sweep` at its smoke size: each KV format's alternative launch gives the default's output (the
    sweep asserts it) and the sampler's the default's ids; the best launch per group is reported."""
    import json

    from light_tts.bench.kernels import main

    out = tmp_path / "sweep.json"
    assert main(["sweep", "--out", str(out), "--device", "cpu", "--smoke", "--batches", "2", "--contexts", "40"]) == 0
    result = json.loads(out.read_text())
    assert {r["kv"] for r in result["attention"]["rows"]} == {"bf16", "fp8", "int8"}
    assert len(result["attention"]["best"]) == 3 and len(result["sampler"]["rows"]) == 2
    assert all(r["agree"] == 1.0 for r in result["sampler"]["rows"])
