"""The sweep of the LLM's launch choices at Orpheus' shapes (`python -m light_tts.bench.kernels sweep`): flash-decoding
stage 1 (tokens per iteration, warps, pipelining stages) per KV format, and the nucleus sampler (ids per block, warps),
each against the default launch; and the scattered K/V cache both kernel benchmarks build.

python -m light_tts.bench.kernels sweep --out sweep.json [--sections attention,sampler] [--batches 1,256]
(--device cpu --smoke runs the same code at a tiny size under TRITON_INTERPRET=1.)

Decode attention: Llama-3.2-3B's heads (24 query, 8 kv, 128 dims), every request at the same context, its tokens at
scattered cache slots as after many alloc/free cycles; bf16 q (float32 on the CPU) with a bf16, fp8 or int8 cache
(scales per slot and head). Each launch's output must equal the default launch's within float rounding, or the sweep
stops. The sampler: Orpheus' vocabulary (156,940 ids), float32 logits ~ N(0, --logit_std), a tenth of the ids already
generated, its default temperature 0.6, top-p 0.8 and penalty 1.1; ids agreeing with the default launch are reported
(the block size changes float summation order, which may move a draw that sits on a boundary). The winners become
SPLIT_LAUNCH (per head dim) and SAMPLE_LAUNCH by hand, with the numbers in docs/performance.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
import triton

from light_tts.kernels.interpreter import fix_interpreter
from light_tts.kernels.llm.decode_attention import SplitLaunch, decode_attention_triton, split_launch
from light_tts.kernels.llm.nucleus_sampling import (
    NUM_META,
    NUM_ROUNDS,
    SAMPLE_LAUNCH,
    SampleLaunch,
    nucleus_sample_triton,
)
from light_tts.kernels.llm.quant import DTYPES, quantize_ref, row_scale_ref
from light_tts.sampling import UNIFORM_BITS

SHAPES = {"full": (24, 8, 128, 156_940), "smoke": (4, 2, 16, 300)}  # q heads, kv heads, head dim, vocab
KV_KINDS = ("bf16", "fp8", "int8")
SPLIT_CHOICES = [SplitLaunch(n, w, s) for n, w, s in itertools.product((16, 32, 64), (4, 8), (1, 2, 3))]
# 1 to 16 ids per thread (more spill): a bigger block has more loads in flight in each of the passes' iterations
SAMPLE_CHOICES = [
    SampleLaunch(b, w)
    for b, w in itertools.product((1024, 2048, 4096, 8192), (4, 8, 16, 32))
    if 32 * w <= b <= 16 * 32 * w
]


def time_ms(fn, device: torch.device) -> float:
    if device.type == "cuda":
        return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def make_kv(seq_lens: list[int], dtype: torch.dtype, num_kv_heads: int, head_dim: int, device="cuda"):
    """Random K/V cache with each request's tokens at scattered slots, as after many alloc/free cycles."""
    num_slots = sum(seq_lens)
    k_cache = torch.randn(num_slots, num_kv_heads, head_dim, device=device, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    req_to_token = torch.zeros(len(seq_lens), max(seq_lens), dtype=torch.int32, device=device)
    perm = torch.randperm(num_slots, device=device).to(torch.int32)
    used = 0
    for i, n in enumerate(seq_lens):
        req_to_token[i, :n] = perm[used : used + n]
        used += n
    return k_cache, v_cache, req_to_token


def attention_case(batch: int, context: int, kind: str, shape, device: torch.device):
    """The decode attention's arguments (the cache in `kind`) for `batch` requests of `context` tokens."""
    num_q, num_kv, dim, _ = shape
    torch.manual_seed(batch * 7919 + context)
    act = torch.bfloat16 if device.type == "cuda" else torch.float32  # the interpreter's dots take float32
    k_cache, v_cache, req_to_token = make_kv([context] * batch, act, num_kv, dim, device)
    cache, scales = [k_cache, v_cache], [None, None]
    if kind != "bf16":
        scales = [row_scale_ref(c, kind) for c in cache]
        cache = [quantize_ref(c, s, kind) for c, s in zip(cache, scales)]
        assert cache[0].dtype == DTYPES[kind]
    q = torch.randn(batch, num_q, dim, device=device, dtype=act)
    meta = (
        req_to_token,
        torch.arange(batch, dtype=torch.int32, device=device),
        torch.full((batch,), context, dtype=torch.int32, device=device),
    )
    return (q, cache[0], cache[1], *meta, dim**-0.5, context, scales[0], scales[1])


def sweep_attention(batches, contexts, shape, device, choices) -> list[dict]:
    rows = []
    for kind, batch, context in itertools.product(KV_KINDS, batches, contexts):
        args = attention_case(batch, context, kind, shape, device)
        default = split_launch(shape[2])
        expected = decode_attention_triton(*args, launch=default).float()
        for launch in dict.fromkeys([default, *choices]):  # the default first, once
            try:
                out = decode_attention_triton(*args, launch=launch).float()
            except Exception as e:  # e.g. out of shared memory at this tile: reported, the sweep goes on
                rows.append({"kv": kind, "batch": batch, "context": context, **vars(launch), "error": repr(e)[:300]})
                rows[-1]["is_default"] = False
                print(f"  attn {kind} b{batch} ctx{context} {launch}: FAILED {e!r:.200}", flush=True)
                continue
            err = float((out - expected).abs().max())
            assert err < 2e-2, f"{kind} {launch}: max |diff| {err} against the default launch"
            ms = time_ms(lambda launch=launch, args=args: decode_attention_triton(*args, launch=launch), device)
            rows.append(
                {
                    "kv": kind,
                    "batch": batch,
                    "context": context,
                    **vars(launch),
                    "ms": ms,
                    "is_default": launch == default,
                }
            )
            print(f"  attn {kind} b{batch} ctx{context} {launch}: {ms:.3f} ms", flush=True)
    return rows


def sampler_case(batch: int, vocab: int, logit_std: float, device: torch.device):
    g = torch.Generator(device="cpu").manual_seed(batch)
    logits = (torch.randn(batch, vocab, generator=g) * logit_std).to(device)
    seen = (torch.rand(batch + 1, vocab, generator=g) < 0.1).to(device)
    meta = torch.tensor([[row + 1, 5, 0, vocab, 0] for row in range(batch)], dtype=torch.int64)
    uniforms = torch.randint(0, 1 << UNIFORM_BITS, (batch, NUM_ROUNDS), generator=g)
    packed = torch.cat([meta.view(batch, NUM_META), uniforms], dim=1).to(device)
    return logits, packed, seen, 0.6, 0.8, 1.1


def sweep_sampler(batches, shape, device, logit_std: float, choices) -> list[dict]:
    rows = []
    for batch in batches:
        args = sampler_case(batch, shape[3], logit_std, device)
        expected = nucleus_sample_triton(*args, launch=SAMPLE_LAUNCH)
        for launch in dict.fromkeys([SAMPLE_LAUNCH, *choices]):
            try:
                ids = nucleus_sample_triton(*args, launch=launch)
            except Exception as e:  # a launch that does not compile here is a result too, not the sweep's end
                rows.append({"batch": batch, **vars(launch), "error": repr(e)[:300], "is_default": False})
                print(f"  sampler b{batch} {launch}: FAILED {e!r:.200}", flush=True)
                continue
            agree = float((ids == expected).float().mean())
            ms = time_ms(lambda launch=launch, args=args: nucleus_sample_triton(*args, launch=launch), device)
            rows.append(
                {"batch": batch, **vars(launch), "ms": ms, "agree": agree, "is_default": launch == SAMPLE_LAUNCH}
            )
            print(f"  sampler b{batch} {launch}: {ms:.3f} ms (ids agree {agree:.3f})", flush=True)
    return rows


def best(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Per group of `keys`: the fastest launch beside the default's time."""
    out = []
    for group in sorted({tuple(r[k] for k in keys) for r in rows}):
        members = [r for r in rows if tuple(r[k] for k in keys) == group and "ms" in r]
        fastest = min(members, key=lambda r: r["ms"])
        default = next(r for r in members if r["is_default"])
        out.append({**dict(zip(keys, group)), "best": fastest, "default_ms": default["ms"]})
        print(f"  best {dict(zip(keys, group))}: {fastest['ms']:.3f} ms vs default {default['ms']:.3f}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m light_tts.bench.kernels sweep", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and two launches each (the CPU check)")
    parser.add_argument("--batches", default="1,64,256")
    parser.add_argument("--contexts", default="440,1000")
    parser.add_argument("--logit_std", type=float, default=2.0)
    parser.add_argument("--sections", default="attention,sampler")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        fix_interpreter()
    shape = SHAPES["smoke" if args.smoke else "full"]
    batches = [int(b) for b in args.batches.split(",")]
    contexts = [int(c) for c in args.contexts.split(",")]
    split_choices = [SplitLaunch(16, 4, 1)] if args.smoke else SPLIT_CHOICES
    sample_choices = [SampleLaunch(128, 4)] if args.smoke else SAMPLE_CHOICES
    results: dict = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    for section in args.sections.split(","):  # in the order given: each one's results are written as it ends
        if section == "attention":
            print("== decode attention", flush=True)
            rows = sweep_attention(batches, contexts, shape, device, split_choices)
            results["attention"] = {"rows": rows, "best": best(rows, ("kv", "batch", "context"))}
        elif section == "sampler":
            print("== nucleus sampler", flush=True)
            rows = sweep_sampler(batches, shape, device, args.logit_std, sample_choices)
            results["sampler"] = {"rows": rows, "best": best(rows, ("batch",))}
        else:
            parser.error(f"unknown section {section!r}")
        args.out.write_text(json.dumps(results, indent=1))
    return 0
