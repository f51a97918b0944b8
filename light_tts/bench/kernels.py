"""GPU micro-benchmark of the LM kernels at Qwen2.5-0.5B shapes, Triton vs the torch reference (median of do_bench);
`sweep`: the launch choices at Orpheus' shapes (bench/engines/kernel_launches.py).

python -m light_tts.bench.kernels --out kernels.json
python -m light_tts.bench.kernels sweep --out sweep.json [--sections attention,sampler] [--batches 1,256]
"""

import argparse
import json
import random
import sys

import torch
import triton

from light_tts.bench.engines import kernel_launches
from light_tts.kernels.llm import ops

NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM, HIDDEN, INTERMEDIATE = 14, 2, 64, 896, 4864


def bench_ms(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def make_kv(seq_lens: list[int], dtype: torch.dtype):
    return kernel_launches.make_kv(seq_lens, dtype, NUM_KV_HEADS, HEAD_DIM)


def bench_decode(batch: int, dtype: torch.dtype) -> dict:
    seq_lens = [random.randint(300, 1000) for _ in range(batch)]
    k_cache, v_cache, req_to_token = make_kv(seq_lens, dtype)
    q = torch.randn(batch, NUM_Q_HEADS, HEAD_DIM, device="cuda", dtype=dtype)
    b_req_idx = torch.arange(batch, dtype=torch.int32, device="cuda")
    b_seq_len = torch.tensor(seq_lens, dtype=torch.int32, device="cuda")
    args = (q, k_cache, v_cache, req_to_token, b_req_idx, b_seq_len, HEAD_DIM**-0.5, 1000)
    kv_bytes = 2 * sum(seq_lens) * NUM_KV_HEADS * HEAD_DIM * k_cache.element_size()
    row = {
        "kernel": f"decode_attention B={batch} ctx=300-1000",
        "triton_ms": bench_ms(lambda: ops.decode_attention(*args, use_triton=True)),
        "torch_ms": bench_ms(lambda: ops.decode_attention(*args, use_triton=False)),
        # the engine replays decode from a CUDA graph, which removes the host launch cost seen above
        "triton_graph_ms": triton.testing.do_bench_cudagraph(
            lambda: ops.decode_attention(*args, use_triton=True), rep=100, return_mode="median"
        ),
    }
    row["triton_graph_kv_GBps"] = kv_bytes / row["triton_graph_ms"] / 1e6
    return row


def bench_prefill(num_tokens: int, dtype: torch.dtype) -> dict:
    k_cache, v_cache, req_to_token = make_kv([num_tokens], dtype)
    q = torch.randn(num_tokens, NUM_Q_HEADS, HEAD_DIM, device="cuda", dtype=dtype)
    as_i32 = lambda xs: torch.tensor(xs, dtype=torch.int32, device="cuda")  # noqa: E731
    args = (
        q,
        k_cache,
        v_cache,
        req_to_token,
        as_i32([0]),
        as_i32([0]),
        as_i32([num_tokens]),
        as_i32([0]),
        HEAD_DIM**-0.5,
        num_tokens,
    )
    causal_flops = 2 * 2 * NUM_Q_HEADS * HEAD_DIM * num_tokens * (num_tokens + 1) / 2
    row = {
        "kernel": f"prefill_attention T={num_tokens}",
        "triton_ms": bench_ms(lambda: ops.prefill_attention(*args, use_triton=True)),
        "torch_ms": bench_ms(lambda: ops.prefill_attention(*args, use_triton=False)),
    }
    row["triton_TFLOPs"] = causal_flops / row["triton_ms"] / 1e9
    return row


def bench_elementwise(dtype: torch.dtype, num_tokens: int = 256) -> list[dict]:
    x = torch.randn(num_tokens, HIDDEN, device="cuda", dtype=dtype)
    residual = torch.randn_like(x)
    weight = torch.randn(HIDDEN, device="cuda", dtype=dtype)
    gate_up = torch.randn(num_tokens, 2 * INTERMEDIATE, device="cuda", dtype=dtype)
    return [
        {
            "kernel": f"rms_norm+residual T={num_tokens} H={HIDDEN}",
            "triton_ms": bench_ms(lambda: ops.rms_norm(x, weight, 1e-6, residual, use_triton=True)),
            "torch_ms": bench_ms(lambda: ops.rms_norm(x, weight, 1e-6, residual, use_triton=False)),
        },
        {
            "kernel": f"silu_and_mul T={num_tokens} I={INTERMEDIATE}",
            "triton_ms": bench_ms(lambda: ops.silu_and_mul(gate_up, use_triton=True)),
            "torch_ms": bench_ms(lambda: ops.silu_and_mul(gate_up, use_triton=False)),
        },
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sweep"]:
        return kernel_launches.main(argv[1:])
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="`sweep --help`: the launch sweep's own flags"
    )
    parser.add_argument("--out", required=True, help="path of the JSON results")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    random.seed(0)
    torch.manual_seed(0)
    rows = [bench_decode(batch, dtype) for batch in (1, 64, 256)]
    rows += [bench_prefill(num_tokens, dtype) for num_tokens in (300, 1000)]
    rows += bench_elementwise(dtype)
    print(f"{'kernel':<40} {'triton ms':>10} {'torch ms':>10} {'speedup':>8}  extra")
    for row in rows:
        extra = {k: round(v, 4) for k, v in row.items() if k not in ("kernel", "triton_ms", "torch_ms")}
        print(
            f"{row['kernel']:<40} {row['triton_ms']:>10.4f} {row['torch_ms']:>10.4f} "
            f"{row['torch_ms'] / row['triton_ms']:>7.1f}x  {extra or ''}"
        )
    result = {
        "device": torch.cuda.get_device_name(),
        "dtype": args.dtype,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "rows": rows,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
