"""The quantized linear layers against the unquantized one, at an LLM's projection shapes and decode batch sizes.

python -m light_tts.bench.quant_gemm --out gemm.json [--shapes qwen0.5b,llama3b] [--rows 1,2,4,8,16,32,64,128,256]
python -m light_tts.bench.quant_gemm --out small_batch.json --small_batch --rows 1,4

Per (projection, rows): the time of F.linear in --dtype (cuBLAS), fp8 through the Triton kernel (quantization of x
in its prologue), fp8 through per-token quantization + torch._scaled_mm, int8 weight-only through the Triton
kernel and through dequantize + F.linear, each timed inside a CUDA graph (the engine replays graphs, so Python's
launch cost is left out), plus the fastest tile of the Triton kernel among a few. What it is for: choosing
FP8_TRITON_MAX_ROWS and choose_blocks (kernels/llm/quant_linear.py) on the GPU that will serve. `TRITON_INTERPRET=1
... --device cpu --dtype float32 --shapes tiny` (the interpreter) only checks that it runs.

--small_batch times the small-batch decoder launches instead (kernels/llm/small_batch.py, --llm_small_batch_rows,
rows <= 8), op by op against the general path's launches, bf16 and fp8 weights read from HBM, with the sweep of
their launch settings unless --no_sweep (bench/engines/small_batch_ops.py).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import triton

from light_tts.kernels.interpreter import fix_interpreter
from light_tts.kernels.llm.quant import quantize_weight
from light_tts.kernels.llm.quant_linear import (
    choose_blocks,
    fp8_linear_scaled_mm,
    int8_linear_dequant,
    quant_linear_triton,
    scaled_mm_works,
)

# (name, K, N) of each projection: qkv, o, gate_up, down
SHAPES = {
    "qwen0.5b": [("qkv", 896, 1152), ("o", 896, 896), ("gate_up", 896, 9728), ("down", 4864, 896)],
    "llama3b": [("qkv", 3072, 5120), ("o", 3072, 3072), ("gate_up", 3072, 16384), ("down", 8192, 3072)],
    "tiny": [("qkv", 64, 128), ("down", 160, 64)],
}


def time_ms(fn, device: str) -> float:
    if device == "cuda":
        return triton.testing.do_bench_cudagraph(fn, rep=20)
    start = time.perf_counter()  # the CPU only checks that it runs: one call
    fn()
    return (time.perf_counter() - start) * 1e3


def tiles(rows: int) -> list[dict]:
    """fp8 tile candidates for the Triton kernel at this many rows (the default first): tensor-core tiles by width,
    depth and pipeline stages; below 16 rows also a thin CUDA-core tile."""
    default = choose_blocks(rows, act_fp8=True)
    block_m = 16 if rows <= 16 else default["BLOCK_M"]
    others = [
        dict(BLOCK_M=block_m, BLOCK_N=n, BLOCK_K=k, num_stages=st)
        for n in ((16, 32, 64) if block_m <= 16 else (32, 64, 128))
        for k in (64, 128, 256)
        for st in (2, 3, 4)
    ]
    if rows < 16:
        thin_m = triton.next_power_of_2(rows)
        others.append(dict(BLOCK_M=thin_m, BLOCK_N=8, BLOCK_K=512 // thin_m, num_stages=3))
    return [default] + [t for t in others if t != default]


def bench_shape(name: str, k: int, n: int, rows: int, dtype: torch.dtype, device: str, sweep: bool) -> dict:
    w = torch.randn(n, k, device=device, dtype=dtype) / k**0.5
    x = torch.randn(rows, k, device=device, dtype=dtype)
    fp8_w, fp8_s = quantize_weight(w, "fp8")
    int8_w, int8_s = quantize_weight(w, "int8")
    result = {
        "proj": name,
        "K": k,
        "N": n,
        "rows": rows,
        "unquantized_ms": time_ms(lambda: torch.nn.functional.linear(x, w), device),
        "int8_triton_ms": time_ms(lambda: quant_linear_triton(x, int8_w, int8_s, None, act_fp8=False), device),
        "int8_dequant_ms": time_ms(lambda: int8_linear_dequant(x, int8_w, int8_s, None), device),
    }
    if device == "cuda" and scaled_mm_works(torch.device(device)):
        result["fp8_scaled_mm_ms"] = time_ms(lambda: fp8_linear_scaled_mm(x, fp8_w, fp8_s, None), device)
    fp8_tiles = [
        (time_ms(lambda t=t: quant_linear_triton(x, fp8_w, fp8_s, None, act_fp8=True, blocks=t), device), t)
        for t in (tiles(rows) if sweep else tiles(rows)[:1])
    ]
    result["fp8_triton_ms"] = fp8_tiles[0][0]  # the default tile
    result["fp8_triton_best_ms"], result["fp8_triton_best_tile"] = min(fp8_tiles, key=lambda r: r[0])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shapes", default="qwen0.5b,llama3b", help=f"of {sorted(SHAPES)}")
    parser.add_argument("--rows", default="1,2,4,8,16,32,64,128,256")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no_sweep", action="store_true", help="time the default tile of the Triton kernel only")
    parser.add_argument(
        "--small_batch", action="store_true", help="the small-batch decoder launches against the general path's"
    )
    args = parser.parse_args(argv)
    if args.device == "cpu":
        fix_interpreter()
    if args.small_batch:
        return bench_small_batch(args)
    dtype = getattr(torch, args.dtype)
    results = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "dtype": args.dtype,
        "rows": [],
    }
    for model in args.shapes.split(","):
        for name, k, n in SHAPES[model]:
            for rows in (int(r) for r in args.rows.split(",")):
                r = {
                    "model": model,
                    **bench_shape(
                        name, k, n, rows, dtype, args.device, sweep=args.device == "cuda" and not args.no_sweep
                    ),
                }
                results["rows"].append(r)
                print_row(r, args.dtype)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


def bench_small_batch(args: argparse.Namespace) -> None:
    from light_tts.bench.engines.small_batch_ops import bench_all

    device = torch.device(args.device)
    rows = [int(r) for r in args.rows.split(",")]
    assert max(rows) <= 8, "--small_batch: at most 8 rows (kernels/llm/small_batch.py MAX_ROWS)"
    runs = bench_all(args.shapes.split(","), rows, ["none", "fp8"], device, sweep=not args.no_sweep)
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


def print_row(r: dict, dtype: str) -> None:
    us = {
        key: r.get(key, float("nan")) * 1e3
        for key in (
            "unquantized_ms",
            "fp8_triton_ms",
            "fp8_triton_best_ms",
            "fp8_scaled_mm_ms",
            "int8_triton_ms",
            "int8_dequant_ms",
        )
    }
    print(
        f"{r['model']} {r['proj']:>7} {r['K']:>5}x{r['N']:<5} rows {r['rows']:>3} (us): {dtype} "
        f"{us['unquantized_ms']:.1f}  fp8 triton {us['fp8_triton_ms']:.1f} (best {us['fp8_triton_best_ms']:.1f} "
        f"{r['fp8_triton_best_tile']})  fp8 scaled_mm {us['fp8_scaled_mm_ms']:.1f}  int8 triton "
        f"{us['int8_triton_ms']:.1f}  int8 dequant {us['int8_dequant_ms']:.1f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
