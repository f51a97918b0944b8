"""The LLM's small-batch kernels (kernels/llm/small_batch.py) against the general path's launches they replace, one
decoder layer of CosyVoice2's Qwen2-0.5B and of Orpheus' Llama-3B, bf16 and fp8 weights: `bench.quant_gemm
--small_batch` (on the CPU, under the interpreter at --shapes tiny, it only checks that it runs).

Each op runs as a CUDA graph of at least REPEATS launches, replayed: the time per launch with the graph's launch
gaps, as a decode step's graph pays them. The launches cycle through copies of the weights that add up to more than
COLD_BYTES, so every launch reads its weight from HBM, as a step's 24-28 layers do (one copy would stay in the 50 MB
L2 across launches and flatter small products). Per layer: qkv (norm + projection + rotary + K/V store), o_proj,
gate_up (norm + projection + SiLU), down_proj. The sweep also times the launch settings around the defaults (for
the first shape at the first row count) and reports the best per op.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from light_tts.kernels.llm import ops, small_batch
from light_tts.kernels.llm.quant import quantize_weight

# name: (hidden, (q heads, kv heads, head dim), intermediate, qkv bias)
SHAPES = {
    "qwen0.5b": (896, (14, 2, 64), 4864, True),
    "llama3b": (3072, (24, 8, 128), 8192, False),
    "tiny": (96, (6, 2, 16), 112, True),
}
REPEATS = 20
COLD_BYTES = 128 << 20  # more than twice the L2 of an H100 or H200
OPS = ("qkv", "o", "gate_up", "down")


def time_ms(fn, device: torch.device, repeats: int = REPEATS, iters: int = 10) -> float:
    """ms per call of fn: a CUDA graph of `repeats` calls replayed (on a CPU: plain calls, for the smoke run)."""
    fn()
    if device.type != "cuda":
        return float("nan")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / (iters * repeats)


class Layer:
    """One decoder layer's weights (bf16 or fp8 with scales; each projection in copies that a run of launches
    cycles through), its norms, a bf16 KV cache and a batch of rows."""

    def __init__(self, shape: str, fmt: str, rows: int, device: torch.device):
        hidden, (self.hq, self.hkv, self.d), inter, has_bias = SHAPES[shape]
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        r = lambda *s: torch.randn(*s, device=device) * 0.05  # noqa: E731
        q_size = self.hq * self.d

        def weights(n, k):
            w = r(n, k)
            w = (w.to(dtype), None) if fmt == "none" else quantize_weight(w, fmt)
            num_copies = -(-COLD_BYTES // w[0].nbytes) if device.type == "cuda" else 1
            return [w] + [tuple(t if t is None else t.clone() for t in w) for _ in range(num_copies - 1)]

        self.copies = {
            "qkv": weights(q_size + 2 * self.hkv * self.d, hidden),
            "o": weights(hidden, q_size),
            "gate_up": weights(2 * inter, hidden),
            "down": weights(hidden, inter),
        }
        self.calls = dict.fromkeys(self.copies, 0)
        self.bias = r(q_size + 2 * self.hkv * self.d).to(dtype) if has_bias else None
        self.g1, self.g2 = (1 + r(hidden)).to(dtype), (1 + r(hidden)).to(dtype)
        self.h, self.res = r(rows, hidden).to(dtype), r(rows, hidden).to(dtype)
        self.attn, self.act = r(rows, q_size).to(dtype), r(rows, inter).to(dtype)
        self.k_cache, self.v_cache = (torch.zeros(4096, self.hkv, self.d, dtype=dtype, device=device) for _ in "kv")
        self.positions = torch.arange(rows, device=device) + 300
        self.slots = torch.arange(rows, device=device) + 100
        self.cos_sin = ops.build_cos_sin_cache(4096, self.d, 1e6, device)

    def repeats(self, op: str) -> int:
        """Launches a timed graph of op holds: every copy once, at least REPEATS."""
        return max(REPEATS, len(self.copies[op]))

    def next(self, op: str) -> tuple:
        """The next copy of op's (weight, scale)."""
        self.calls[op] += 1
        return self.copies[op][self.calls[op] % len(self.copies[op])]

    def linear(self, x, w):
        weight, scale = w
        return F.linear(x, weight) if scale is None else ops.fp8_linear(x, weight, scale)

    def general(self) -> dict:
        """The general path's launches per op (DecoderLayer.forward)."""

        def qkv():
            x, _ = ops.rms_norm(self.h, self.g1, 1e-6, self.res)
            q, k, v = self.linear(x, self.next("qkv")).split(
                [self.hq * self.d, self.hkv * self.d, self.hkv * self.d], -1
            )
            q, k, v = (t.view(len(x), -1, self.d) for t in (q, k, v))
            ops.apply_rotary(q, k, self.positions, self.cos_sin, v, self.k_cache, self.v_cache, self.slots, self.bias)

        def gate_up():
            x, _ = ops.rms_norm(self.h, self.g2, 1e-6, self.res)
            ops.silu_and_mul(self.linear(x, self.next("gate_up")))

        return {
            "qkv": qkv,
            "o": lambda: self.linear(self.attn, self.next("o")),
            "gate_up": gate_up,
            "down": lambda: self.linear(self.act, self.next("down")),
        }

    def fused(self, launches: dict | None = None) -> dict:
        """The small-batch kernels per op, with launch settings per op (None: the defaults)."""
        launches = launches or {}
        qkv_args = (self.bias, self.g1, 1e-6, self.res, self.positions, self.cos_sin, self.slots)
        return {
            "qkv": lambda: small_batch.qkv_rope_triton(
                self.h, *self.next("qkv"), *qkv_args, self.k_cache, self.v_cache, launch=launches.get("qkv")
            ),
            "o": lambda: small_batch.norm_linear_triton(self.attn, *self.next("o"), launch=launches.get("o")),
            "gate_up": lambda: small_batch.gate_up_silu_triton(
                self.h, *self.next("gate_up"), self.g2, 1e-6, self.res, launch=launches.get("gate_up")
            ),
            "down": lambda: small_batch.norm_linear_triton(self.act, *self.next("down"), launch=launches.get("down")),
        }

    def candidates(self, op: str) -> list[dict]:
        """Launch settings around the defaults."""
        if op == "qkv":
            return [dict(BLOCK_K=bk, num_warps=w) for bk, w in itertools.product((32, 64, 128, 256), (4, 8))]
        settings = [*itertools.product((4, 8, 16, 32), (2048, 8192), (4,)), *((bn, 4096, 8) for bn in (4, 8, 16, 32))]
        return [dict(BLOCK_N=bn, BLOCK_K=budget // bn, num_warps=w) for bn, budget, w in settings]


def run(shape: str, fmt: str, rows: int, device: torch.device, sweep: bool) -> dict:
    layer = Layer(shape, fmt, rows, device)
    general = {op: time_ms(fn, device, layer.repeats(op)) for op, fn in layer.general().items()}
    fused = {op: time_ms(fn, device, layer.repeats(op)) for op, fn in layer.fused().items()}
    result = {
        "shape": shape,
        "weights": fmt,
        "rows": rows,
        "general_us": {op: 1e3 * ms for op, ms in general.items()},
        "fused_us": {op: 1e3 * ms for op, ms in fused.items()},
    }
    if sweep:
        best = {}
        for op in OPS:
            timed = [(time_ms(layer.fused({op: c})[op], device, layer.repeats(op)), c) for c in layer.candidates(op)]
            ms, launch = min(timed, key=lambda t: t[0])
            best[op] = {"us": 1e3 * ms, "launch": launch}
        result["best"] = best
    return result


def bench_all(shapes: list[str], rows: list[int], weights: list[str], device: torch.device, sweep: bool) -> list:
    """run() per (shape, weight format, rows), printed as it goes; the sweep at the first shape's first rows."""
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    runs = []
    for shape, fmt in itertools.product(shapes, weights):
        for i, n in enumerate(rows):
            r = run(shape, fmt, n, device, sweep and i == 0 and shape == shapes[0])
            runs.append(r)
            g, f = r["general_us"], r["fused_us"]
            print(
                f"{name} {shape} {fmt} rows {n}: general "
                + " ".join(f"{op} {g[op]:.1f}" for op in OPS)
                + f" = {sum(g.values()):.1f} us; fused "
                + " ".join(f"{op} {f[op]:.1f}" for op in OPS)
                + f" = {sum(f.values()):.1f} us"
            )
            for op, b in r.get("best", {}).items():
                print(f"    best {op}: {b['us']:.1f} us with {b['launch']}")
    return runs
