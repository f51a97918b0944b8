"""Compiles the decode engine's fused Triton kernels for a GPU on a host without one (Triton's own ptxas) and reports
registers, spilled bytes and shared memory per kernel: what Triton's interpreter cannot show (spills, shared memory
over the 227 KB limit, constructs only the GPU compiler rejects).

    python -m light_tts.bench.kernel_compile [--arch 90] [--out compile.json]

Each launcher runs on CPU tensors of the full-size model's shapes with its kernel's launch intercepted: the
captured arguments make the signature, which is compiled for the target (no argument specialisation, so the
numbers are an upper bound of what a real launch compiles). Must run without TRITON_INTERPRET.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

TRITON_TYPES = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
    torch.int32: "i32",
    torch.int64: "i64",
    torch.float8_e4m3fn: "fp8e4nv",
    torch.bool: "i1",
    torch.uint8: "u8",
}


@contextmanager
def captured_launches():
    """Replaces JITFunction.run: every launch records (kernel, bound arguments, options) instead of running."""
    from triton.runtime.jit import JITFunction

    launches = []
    original = JITFunction.run

    def capture(self, *args, grid, warmup, **kwargs):
        options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
        bound = dict(zip(self.arg_names, args))
        bound.update(kwargs)
        launches.append((self, bound, options))

    JITFunction.run = capture
    try:
        yield launches
    finally:
        JITFunction.run = original


def compile_launch(fn, bound: dict, options: dict, arch: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constexprs = {}, {}
    for param in fn.params:
        value = bound[param.name]
        if param.is_constexpr:
            signature[param.name], constexprs[param.name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = "*" + TRITON_TYPES[value.dtype]
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            signature[param.name] = "i64" if abs(value) >= 2**31 else "i32"
        else:
            signature[param.name] = "fp32"
    kernel = triton.compile(
        ASTSource(fn=fn, signature=signature, constexprs=constexprs),
        target=GPUTarget("cuda", arch, 32),
        options=options,
    )
    return {"shared_bytes": kernel.metadata.shared, **ptxas_report(kernel.asm["ptx"], arch)}


def ptxas_report(ptx: str, arch: int) -> dict:
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(arch).path
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        suffix = "a" if arch >= 90 else ""
        out = subprocess.run(
            [ptxas, f"-arch=sm_{arch}{suffix}", "-v", str(src), "-o", str(Path(tmp) / "k.o")],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    regs = re.search(r"Used (\d+) registers", out)
    spills = re.search(r"(\d+) bytes spill stores", out)
    return {"registers": int(regs.group(1)) if regs else None, "spill_bytes": int(spills.group(1)) if spills else 0}


def fused_launches(dtype: torch.dtype, rows: int, splits: int, kv_dtype: torch.dtype) -> list[tuple[str, callable]]:
    """The fused estimator's launches at the full-size model's shapes (C 256, 8 heads of 64, 4C hidden), HiFT's
    keyed noise, CosyVoice3's DiT row kernels (C 1024, 16 heads of 64) and positional conv; with fp8 pages, also the
    LLM kernels at Orpheus' shapes that a bf16 model runs with an fp8 cache and fp8 weights (decode attention over
    24/8 heads of 128, the fp8 linear's 16-row tile, the nucleus sampler over 156,940 ids)."""
    from light_tts.kernels.flow.flow_attention import flow_attention_partials
    from light_tts.kernels.flow.flow_block_tail import block_tail_triton
    from light_tts.kernels.flow.flow_cfm_step import cfm_step_triton
    from light_tts.kernels.flow.flow_dit import ada_modulate_triton, cfg_update_triton, rotary_head0_triton
    from light_tts.kernels.flow.flow_pos_conv import pos_conv_triton
    from light_tts.kernels.flow.flow_qkv_store import qkv_store_triton
    from light_tts.kernels.flow.flow_tap_conv import save_rows_triton, tap_conv_triton
    from light_tts.kernels.flow.hift_noise import keyed_noise_triton

    c, heads, d, page = 256, 8, 64, 50
    t = lambda *shape, dt=dtype: torch.zeros(*shape, dtype=dt)  # noqa: E731
    i32 = lambda n: torch.zeros(n, dtype=torch.int32)  # noqa: E731
    norm = torch.nn.LayerNorm(c).to(dtype)
    pool = t(4, 2, 2, heads, page, d, dt=kv_dtype)
    enc_pool, enc_norm = t(4, 2, 1, heads, 25, d), torch.nn.LayerNorm(512).to(dtype)
    scale = torch.ones(4, 2, 2, heads) if kv_dtype == torch.float8_e4m3fn else None
    items = {k: i32(8) for k in ("page", "branch", "row", "len")}
    attn_rows = {
        k: i32(4) for k in ("q_start", "num_q", "pos0", "ctx", "stream", "branch", "mode", "skip_lo", "skip_hi")
    }
    o = t(rows, heads, splits, d, dt=torch.float32) if splits > 1 else t(rows, heads, d)
    lse = torch.zeros(rows, heads, splits) if splits > 1 else None
    taps = torch.zeros(rows, 3, dtype=torch.int64)
    idx = torch.zeros(8, dtype=torch.int64)
    dit = 1024
    return [
        ("qkv_store", lambda: qkv_store_triton(t(rows, c), t(3 * heads * d, c), pool, scale, items, heads)),
        (
            "attention",
            lambda: flow_attention_partials(
                t(rows, heads, d), pool, scale, i32(8).view(2, 4), attn_rows, i32(4), i32(4), page, 64, splits
            ),
        ),
        (
            "block_tail",
            lambda: block_tail_triton(
                t(rows, c), o, lse, t(c, heads * d), t(c), norm, t(4 * c, c), t(4 * c), t(c, 4 * c), t(c), norm
            ),
        ),
        (
            "tap_conv resnet1 (320 in)",
            lambda: tap_conv_triton(t(rows, 320), t(8, 320), idx, taps, t(c, 960), t(c), norm, add=t(c)),
        ),
        (
            "tap_conv resnet2 (+1x1, norm, save)",
            lambda: tap_conv_triton(
                t(rows, c),
                t(8, c),
                idx,
                taps,
                t(c, 3 * c),
                t(c),
                norm,
                res=(t(rows, 2 * c), t(c, 2 * c), t(c)),
                next_norm=norm,
                save=(t(rows, 2 * c), t(8, 2 * c), idx, idx),
            ),
        ),
        ("tap_conv up (512 in)", lambda: tap_conv_triton(t(rows, 2 * c), t(8, 2 * c), idx, taps, t(c, 6 * c), t(c))),
        ("save_rows", lambda: save_rows_triton(t(rows, c), t(8, c), idx, idx)),
        (
            "encoder qkv_store (512, bias)",
            lambda: qkv_store_triton(t(rows // 4, 512), t(1536, 512), enc_pool, None, items, heads, bias=t(1536)),
        ),
        (
            "encoder block_tail (512, SiLU)",
            lambda: block_tail_triton(
                t(rows // 4, 512),
                t(rows // 4, heads, d),
                None,
                t(512, 512),
                t(512),
                enc_norm,
                t(2048, 512),
                t(2048),
                t(512, 2048),
                t(512),
                enc_norm,
                act="silu",
            ),
        ),
        (
            "cfm_step",
            lambda: cfm_step_triton(t(rows, c), t(80, c), t(80), torch.zeros(rows // 2, 80), t(rows, 320), 0.1, 0.7),
        ),
        ("dit ada_modulate", lambda: ada_modulate_triton(t(rows, dit), t(dit), t(rows, dit), t(dit), t(dit), 1e-6)),
        (
            "dit rotary_head0",
            lambda: rotary_head0_triton(t(rows, 3, 16, 64), torch.zeros(rows, 64), torch.zeros(rows, 64)),
        ),
        ("dit cfg_update", lambda: cfg_update_triton(t(rows, 80), torch.zeros(rows // 2, 80), t(rows, 320), 0.1, 0.7)),
        (
            "hift keyed_noise",
            lambda: keyed_noise_triton(torch.zeros(4, dtype=torch.int64), torch.zeros(4, dtype=torch.int64), 27840, 9),
        ),
        (
            "dit pos_conv",
            lambda: pos_conv_triton(t(rows + 30, dit), torch.zeros(rows, dtype=torch.int64), t(16, 31, 64, 64), t(dit)),
        ),
    ] + (llm_launches() + snac_launches() if kv_dtype == torch.float8_e4m3fn else [])


def llm_launches() -> list[tuple[str, callable]]:
    """The LLM kernels a bf16 Orpheus model runs with fp8 weights and an fp8 KV cache (fused_launches' docstring)."""
    from light_tts.kernels.llm.decode_attention import decode_attention_triton
    from light_tts.kernels.llm.nucleus_sampling import NUM_META, NUM_ROUNDS, nucleus_sample_triton
    from light_tts.kernels.llm.quant_linear import quant_linear_triton

    bf16, fp8, slots, rows = torch.bfloat16, torch.float8_e4m3fn, 4096, 64
    i32 = lambda n: torch.zeros(n, dtype=torch.int32)  # noqa: E731
    cache = lambda: torch.zeros(slots, 8, 128, dtype=fp8)  # noqa: E731
    return [
        (
            "llm decode_attention (bf16 q, fp8 KV)",
            lambda: decode_attention_triton(
                torch.zeros(rows, 24, 128, dtype=bf16),
                cache(),
                cache(),
                torch.zeros(rows + 1, 1024, dtype=torch.int32),
                i32(rows),
                i32(rows),
                0.088,
                k_scale=torch.zeros(slots, 8),
                v_scale=torch.zeros(slots, 8),
            ),
        ),
        (
            "llm fp8 linear (16-row tile)",
            lambda: quant_linear_triton(
                torch.zeros(16, 3072, dtype=bf16), torch.zeros(16384, 3072, dtype=fp8), torch.zeros(16384), None, True
            ),
        ),
        (
            "llm nucleus sampler",
            lambda: nucleus_sample_triton(
                torch.zeros(rows, 156940),
                torch.zeros(rows, NUM_META + NUM_ROUNDS, dtype=torch.int64),
                torch.zeros(rows + 1, 156940, dtype=torch.bool),
                0.6,
                0.8,
                1.1,
            ),
        ),
    ] + small_batch_launches()


def small_batch_launches() -> list[tuple[str, callable]]:
    """The small-batch decoder kernels at Orpheus' shapes: fp8 weights and KV at one row, bf16 at eight."""
    from light_tts.kernels.llm.small_batch import gate_up_silu_triton, norm_linear_triton, qkv_rope_triton

    bf16, fp8, slots = torch.bfloat16, torch.float8_e4m3fn, 4096
    h = lambda rows: torch.zeros(rows, 3072, dtype=bf16)  # noqa: E731
    cache = lambda: torch.zeros(slots, 8, 128, dtype=fp8)  # noqa: E731
    qkv = (torch.zeros(5120, 3072, dtype=fp8), torch.zeros(5120), None, torch.zeros(3072, dtype=bf16), 1e-5, h(1))
    rope = (torch.zeros(1, dtype=torch.int64), torch.zeros(4096, 128), torch.zeros(1, dtype=torch.int64))
    return [
        (
            "llm small-batch qkv+rope (fp8, fp8 KV, 1 row)",
            lambda: qkv_rope_triton(h(1), *qkv, *rope, cache(), cache(), torch.zeros(slots, 8), torch.zeros(slots, 8)),
        ),
        (
            "llm small-batch gate_up+silu (fp8, 1 row)",
            lambda: gate_up_silu_triton(
                h(1), torch.zeros(16384, 3072, dtype=fp8), torch.zeros(16384), torch.zeros(3072, dtype=bf16), 1e-5, h(1)
            ),
        ),
        (
            "llm small-batch linear (bf16, 8 rows)",
            lambda: norm_linear_triton(torch.zeros(8, 8192, dtype=bf16), torch.zeros(3072, 8192, dtype=bf16)),
        ),
        (
            "llm small-batch norm+head (bf16, 1 row)",
            lambda: norm_linear_triton(
                h(1),
                torch.zeros(8192, 3072, dtype=bf16),
                None,
                None,
                torch.zeros(3072, dtype=bf16),
                1e-5,
                h(1),
                torch.float32,
            ),
        ),  # fmt: skip
    ]


def snac_launches() -> list[tuple[str, callable]]:
    """Orpheus's fused SNAC kernels (float32) at SNAC 24 kHz's widest block (1024 -> 512 channels) and longest."""
    from light_tts.kernels.codec.snac_ops import head_triton, snake_in_triton, unit_in_triton

    f32 = lambda *shape: torch.zeros(*shape)  # noqa: E731
    noise = (torch.zeros(4, dtype=torch.int64), torch.zeros(4, dtype=torch.int64), 3)
    return [
        (
            "snac unit_in (noise)",
            lambda: unit_in_triton(f32(4, 512, 128), f32(4, 512, 128), None, noise, *_unit(512), 1),
        ),
        (
            "snac unit_in (bias)",
            lambda: unit_in_triton(f32(4, 64, 8192), f32(4, 64, 8192), f32(64), None, *_unit(64), 9),
        ),
        ("snac snake_in", lambda: snake_in_triton(f32(4, 1024, 16), f32(4, 1024, 16), f32(1024), f32(1024))),
        ("snac head", lambda: head_triton(f32(4, 64, 8192), f32(4, 64, 8192), f32(64), f32(64), f32(64, 7), 0.0)),
    ]


def _unit(c: int) -> tuple[torch.Tensor, ...]:
    return torch.ones(c), torch.zeros(c, 7), torch.zeros(c), torch.ones(c)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--only", default="", help="compile only configs/launches whose name contains this")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("run without TRITON_INTERPRET=1 (this compiles for the GPU)")
    configs = [
        ("fp16 b1", torch.float16, 100, 16, torch.float16),
        ("fp16 b256", torch.float16, 25600, 1, torch.float16),
        ("fp16 fp8-pages b16", torch.float16, 1600, 4, torch.float8_e4m3fn),
        ("bf16 b64", torch.bfloat16, 6400, 2, torch.bfloat16),
        ("fp32 b1", torch.float32, 100, 16, torch.float32),
    ]
    report, worst = [], 0
    for name, dtype, rows, splits, kv_dtype in configs:
        for kernel, launch in fused_launches(dtype, rows, splits, kv_dtype):
            if args.only and args.only not in f"{name} {kernel}":
                continue
            with captured_launches() as launches:
                launch()
            for fn, bound, options in launches:
                result = {
                    "config": name,
                    "launch": kernel,
                    "kernel": fn.__name__,
                    **options,
                    **compile_launch(fn, bound, options, args.arch),
                }
                report.append(result)
                worst = max(worst, result["spill_bytes"])
                print(
                    f"{name:20s} {kernel:36s} {fn.__name__:24s} regs {result['registers']:4} spills "
                    f"{result['spill_bytes']:6} B  shared {result['shared_bytes'] / 1024:6.1f} KB",
                    flush=True,
                )
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    over = [r for r in report if r["shared_bytes"] > 227 * 1024]
    print(f"{len(report)} compiled for sm_{args.arch}; worst spill {worst} B; {len(over)} over 227 KB shared")
    return 1 if over else 0


if __name__ == "__main__":
    raise SystemExit(main())
