"""Benchmark of the paged decode engine (token2wav) at the released dimensions with random weights.

    python -m light_tts.bench.decode --out decode.json [--sections errors,memory,kernels,chunks,flat,throughput]
        [--variants today,new] [--batches 1,4,16,64] [--rows 1,16,64,256] [--device cuda] [--model-dir DIR]

Variants (bench/engines/decode_parts.py VARIANTS, each one engine in the same process): `today` is the per-op flow with
fp32 HiFT and per-request generators, `fused` the fused estimator, `half` adds the fp16 HiFT convolutions and
keyed noise, `new` (the GPU default) adds HiFT overlapped with the next flow pass.

Sections:
- `errors`: the paged Triton path (fp32) against the dense per-stream flow cache; fp16 / bf16 / fp8 pages against
  fp32; the fused flow against the per-op flow (fp32 and fp16); fp16 HiFT against fp32 (keyed noise):
  relative L2 of mel and audio along a 10-second stream with a 5-second prompt.
- `memory`: bytes per page, per stream second, and the pool's capacity in streams of 10 s and 30 s.
- `kernels`: kernels of one 1-second chunk at batch 1 (an eager flow pass, i.e. what its graph replays, and one
  HiFT chunk), per variant. On the CPU: the operators they run.
- `chunks`: ms per engine step of lockstep streams (one 1-second chunk each, 5-second shared prompt, graphs) at
  several batch sizes, per variant; audio seconds per second; batch 1's flow pass and HiFT chunk alone.
- `flat`: per-chunk step time along one 30-second stream (chunk 5 against chunk 30).
- `throughput`: one flow pass + HiFT for R streams at 16 s of context each (25-token chunks), alone and
  overlapped, per variant: audio seconds per second, HiFT's share of the step, and the roofline (achieved TFLOP/s
  and GB/s of the flow pass and of HiFT against the GPU's peak, FLOPs and bytes from the shapes:
  bench/engines/decode_roofline.py). 256 such streams need more pages than one GPU has in fp16, so their page tables
  alias the pool's pages: every stream reads its own 16 pages, spread over all the pool's pages (far more than
  the L2), i.e. the pass reads what 256 real streams read.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from light_tts.bench.engines.decode_parts import (
    PROMPT_TOKENS,
    CausalHiFTRows,
    HiFTRows,
    aliased_specs,
    count_kernels,
    hift_rows,
    make_engine,
    make_prompt,
    model_config,
    one_chunk_spec,
    pass_times,
    rel_l2,
    run_stream,
    sync,
)
from light_tts.bench.engines.decode_roofline import (
    conv_flops_bytes,
    dit_flow_bytes,
    dit_flow_flops,
    flow_bytes,
    flow_flops,
    hift_flops_bytes,
    roofline_row,
)
from light_tts.decode.dit.dit_cache import DiTCacheShape
from light_tts.decode.flow.flow_cache import KV_DTYPES, FlowCacheShape
from light_tts.decode.hift.hift_stage import HiFTStage
from light_tts.models.cosyvoice2.hift.streaming import MEL_CACHE_LEN

# by family: the flow's roofline counts and its flow-cache geometry
FLOW_ROOFLINE = {"cosyvoice2": (flow_flops, flow_bytes), "cosyvoice3": (dit_flow_flops, dit_flow_bytes)}
CACHE_SHAPES = {"cosyvoice2": FlowCacheShape, "cosyvoice3": DiTCacheShape}


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def lockstep(engine, batch: int, num_chunks: int, tag: str) -> float:
    """`batch` streams of one voice fed in lockstep, one 25-token hop per step: ms per step over the steady steps
    (after the first, which carries the prompt's last chunk, and the second). Timed over all of them at once, not
    step by step: an overlapped engine's HiFT runs beside the next step's flow."""
    g = np.random.default_rng(batch)
    ids = [f"{tag}-{i}" for i in range(batch)]
    pad = -PROMPT_TOKENS % 25
    for i, req_id in enumerate(ids):
        engine.add_request(
            req_id, make_prompt(0), seed=i, stream=True, max_tokens=25 * (num_chunks + 1) + pad + 3, prefix_key="voice"
        )
    num_audio, start = 0, 0.0
    for chunk in range(num_chunks):
        for req_id in ids:
            n = 25 + pad + 3 if chunk == 0 else 25
            engine.push_tokens(req_id, g.integers(0, 6561, n).tolist(), is_last=chunk == num_chunks - 1)
        if chunk == 2:
            start = sync(engine.device)
        outs = engine.step()
        assert all(o.error is None for o in outs), [o.error for o in outs][:3]
        num_audio += len(outs)
    elapsed = sync(engine.device) - start
    while engine.num_active():
        num_audio += len(engine.step())
    assert num_audio >= batch * num_chunks, (num_audio, batch, num_chunks)  # one output a chunk
    return elapsed / (num_chunks - 2) * 1e3


def section_errors(cfg, device: str) -> dict:
    """Audio and mel of one 10-second stream against references."""
    tokens = np.random.default_rng(7).integers(0, 6561, 250).tolist()
    out = {}
    ref_engine = make_engine(cfg, "fp32", None, graphs=False, num_pages=64, device=device, variant="today")
    ref_audio, ref_mel = run_stream(ref_engine, tokens)
    session = ref_engine.t2w.session(make_prompt(0), 3, ref_engine.hop_policy)
    dense = np.concatenate(session.feed(tokens) + [session.finish()])
    out["paged_vs_dense_fp32_audio"] = rel_l2(ref_audio, dense)
    del ref_engine, session
    free(torch.device(device))
    cases = [
        ("fused fp32", "fp32", None, "fused"),
        ("fp16", "fp16", None, "today"),
        ("fused fp16", "fp16", None, "fused"),
        ("bf16", "bf16", None, "today"),
        ("fp16+fp8 pages", "fp16", "fp8_e4m3", "today"),
    ]
    for name, dtype, kv, variant in cases:
        engine = make_engine(
            cfg, dtype, kv, graphs=device == "cuda", num_pages=64, max_pass_tokens=1024, device=device, variant=variant
        )
        audio, mel = run_stream(engine, tokens)
        out[f"{name}_vs_fp32_audio"] = rel_l2(audio, ref_audio)
        out[f"{name}_vs_fp32_mel"] = rel_l2(mel, ref_mel)
        del engine
        free(torch.device(device))
    # HiFT's fp16 convolutions against fp32, the same mel and keyed noise
    engines = {
        v: make_engine(cfg, "fp32", None, graphs=False, num_pages=16, device=device, variant=v)
        for v in ("fused", "half")
    }
    for e in engines.values():
        e.keyed_noise = True
    audio = {v: torch.cat(HiFTRows(e, 4)(), dim=0).cpu().numpy().ravel() for v, e in engines.items()}
    out["fp16 hift_vs_fp32_audio"] = rel_l2(audio["half"], audio["fused"])
    print(json.dumps(out, indent=1), flush=True)
    return out


def section_kernels(cfg, engine) -> dict:
    """Kernels of one 1-second chunk at batch 1: an eager flow pass (what its graph replays) and one HiFT chunk."""
    inputs = engine.runner.build([one_chunk_spec(engine)], None)
    flow = count_kernels(lambda: engine.runner.paged(inputs), engine.device)
    graphs = engine.hift.runner, engine.hift.keyed_runner
    engine.hift.runner = engine.hift.keyed_runner = None  # eager: what its graph replays, kernel by kernel
    try:
        hift = count_kernels(hift_rows(engine, 1), engine.device)
    finally:
        engine.hift.runner, engine.hift.keyed_runner = graphs
    print(f"  kernels per 1-second chunk: flow {flow} + HiFT {hift} = {flow + hift}", flush=True)
    return {
        "flow": flow,
        "hift": hift,
        "total": flow + hift,
        "unit": "CUDA kernels" if engine.device.type == "cuda" else "CPU operators",
    }


def section_chunks(engine, batches: list[int]) -> dict:
    result = {"pool_pages": engine.pool.num_pages, "graph_buckets": len(engine.runner.graphs)}
    t = pass_times(engine, 1, PROMPT_TOKENS + 50)  # the flow pass and HiFT chunk alone
    result["b1_flow_pass_ms"], result["b1_hift_chunk_ms"] = t["flow_ms"], t["hift_ms"]
    for batch in batches:
        ms = lockstep(engine, batch, 6, f"b{batch}")
        result[batch] = {"ms_per_step": ms, "audio_s_per_s": batch / (ms / 1e3)}
        print(f"  batch {batch}: {ms:.1f} ms per step, {batch / (ms / 1e3):.0f} audio s/s", flush=True)
    print(f"  batch 1 alone: flow pass {t['flow_ms']:.1f} ms, HiFT chunk {t['hift_ms']:.1f} ms", flush=True)
    result["flow replays/eager"] = f"{engine.runner.num_replays}/{engine.runner.num_eager}"
    graphs = engine.hift.keyed_runner or engine.hift.runner
    if graphs is not None:
        result["hift replays/eager"] = f"{graphs.num_replays}/{graphs.num_eager}"
    return result


def section_flat(cfg, device: str) -> dict:
    """One 30-second stream (5-second prompt): step time of chunk 1..30 (graphs, fp16)."""
    engine = make_engine(cfg, "fp16", None, graphs=device == "cuda", max_pass_tokens=1024, num_pages=128, device=device)
    g = np.random.default_rng(1)
    engine.add_request("flat", make_prompt(0), seed=1, stream=True, max_tokens=800, prefix_key="voice")
    pad = -PROMPT_TOKENS % 25
    times = []
    for chunk in range(30):
        engine.push_tokens("flat", g.integers(0, 6561, 25 + (pad + 3 if chunk == 0 else 0)).tolist(), chunk == 29)
        start = sync(device)
        engine.step()
        times.append((sync(device) - start) * 1e3)
    while engine.num_active():
        engine.step()
    del engine
    free(torch.device(device))
    return {
        "ms_per_chunk": times,
        "chunk5_ms": times[4],
        "chunk30_ms": times[29],
        "chunk30_over_chunk5": times[29] / times[4],
    }


def hift_roofline(engine) -> tuple[float, float]:
    """(FLOPs, bytes) of one row's steady HiFT chunk: CosyVoice2's chunk with its cached overlap, or CosyVoice3's
    window through its causal HiFT."""
    if isinstance(engine.hift_stage, HiFTStage):
        frames = 2 * engine.page_tokens + MEL_CACHE_LEN
        return hift_flops_bytes(engine.hift, frames, MEL_CACHE_LEN * engine.hift.samples_per_frame)
    return conv_flops_bytes(engine.hift, CausalHiFTRows(engine, 1))


def section_throughput(cfg, engine, rows_list: list[int], context_s: float) -> dict:
    name = torch.cuda.get_device_name() if engine.device.type == "cuda" else "cpu"
    ctx = int(context_s * 25)
    act = engine.dtype.itemsize
    kv = engine.cache.kv_dtype.itemsize
    hift_flops, hift_bytes = hift_roofline(engine)
    flops_of, bytes_of = FLOW_ROOFLINE[cfg.family]
    result = {"context_s": context_s, "kv": str(engine.cache.kv_dtype), "pool_pages": engine.pool.num_pages}
    for rows in rows_list:
        try:
            t = pass_times(engine, rows, ctx)
        except torch.OutOfMemoryError:  # the pool holds most of the memory: say so and go on to the other sizes
            free(engine.device)
            result[rows] = {"error": "out of memory beside the engine's page pool"}
            print(f"  {context_s:.0f}s ctx rows {rows}: out of memory beside the engine's page pool", flush=True)
            continue
        step_ms = t["flow_ms"] + t["hift_ms"]
        if engine.hift_stage.overlap and "overlapped_ms" in t:
            step_ms = t["overlapped_ms"]
        inputs = engine.runner.build(aliased_specs(engine, rows, ctx), None)  # the eager pass its graph replays
        kernels = count_kernels(lambda inputs=inputs: engine.runner.paged(inputs), engine.device)
        row = {
            **t,
            "step_ms": step_ms,
            "audio_s_per_s": rows / (step_ms / 1e3),
            "hift_share": t["hift_ms"] / (t["flow_ms"] + t["hift_ms"]),
            "flow": roofline_row(
                flops_of(cfg, rows, 25, ctx),
                bytes_of(cfg, engine.flow, rows, 25, ctx, act, kv),
                t["flow_ms"] / 1e3,
                kernels,
                name,
            ),
            "hift": roofline_row(rows * hift_flops, rows * hift_bytes, t["hift_ms"] / 1e3, None, name),
        }
        result[rows] = row
        print(
            f"  {context_s:.0f}s ctx rows {rows}: flow {t['flow_ms']:.1f} + HiFT {t['hift_ms']:.1f} ms "
            f"({100 * row['hift_share']:.0f}%), step {step_ms:.1f} ms -> {row['audio_s_per_s']:.0f} audio s/s; "
            f"flow {row['flow']['tflops']:.1f} TFLOP/s {row['flow']['gbs']:.0f} GB/s "
            f"({row['flow'].get('bound', '?')}), HiFT {row['hift']['tflops']:.1f} TFLOP/s "
            f"{row['hift']['gbs']:.0f} GB/s",
            flush=True,
        )
    return result


def section_memory(cfg) -> dict:
    free_bytes, _ = torch.cuda.mem_get_info()
    out = {"gpu": torch.cuda.get_device_name(), **memory_capacity(cfg, free_bytes)}
    print(json.dumps(out, indent=1), flush=True)
    return out


def memory_capacity(cfg, free_bytes: int) -> dict:
    """Bytes per page (one second of one stream) of the family's flow cache in float16 and fp8 pages, and how many
    10-s and 30-s streams (one shared 5-s prompt) fit in 85% of `free_bytes`."""
    shape = CACHE_SHAPES[cfg.family].from_config(cfg.flow)
    out: dict = {"free_gb": free_bytes / 1e9}
    for kv in ("float16", "fp8_e4m3"):
        page = shape.page_bytes(KV_DTYPES[kv], torch.float16)
        pages = int(0.85 * free_bytes) // page
        own_10 = -(-(PROMPT_TOKENS + 250) // 25) - (PROMPT_TOKENS - 3) // 25
        own_30 = -(-(PROMPT_TOKENS + 750) // 25) - (PROMPT_TOKENS - 3) // 25
        out[kv] = {
            "mb_per_page": page / 1e6,
            "mb_per_stream_second": page / 1e6,
            "pages_in_85pct_free": pages,
            "streams_of_10s_shared_5s_prompt": pages // own_10,
            "streams_of_30s_shared_5s_prompt": pages // own_30,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--model-dir",
        type=Path,
        help="a model directory (e.g. the tiny fixture); default: random full-size weights in a temporary directory",
    )
    parser.add_argument("--sections", default="errors,memory,kernels,chunks,flat,throughput")
    parser.add_argument("--variants", default="today,new")
    parser.add_argument("--batches", default="1,4,16,64")
    parser.add_argument("--rows", default="1,16,64,256")
    parser.add_argument("--context-s", type=float, default=16.0)
    parser.add_argument(
        "--num-pages", type=int, default=None, help="the engines' page pool (default: sized from free memory)"
    )
    parser.add_argument("--kv", default=None, help="flow-cache dtype of the variant engines (default: the flow's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":  # a smoke check of the GPU command at a tiny size; one thread: the shapes are small
        torch.set_num_threads(1)
    sections = args.sections.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    rows = [int(r) for r in args.rows.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = model_config(args.model_dir or Path(tmp))
        results = {
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
        }
        started = time.perf_counter()
        for name in (s for s in ("errors", "memory", "flat") if s in sections):
            print(f"== {name}", flush=True)
            if name == "errors":
                results[name] = section_errors(cfg, args.device)
            elif name == "memory" and device.type == "cuda":
                results[name] = section_memory(cfg)
            elif name == "flat":
                results[name] = section_flat(cfg, args.device)
            args.out.write_text(json.dumps(results, indent=1, default=str))
        per_variant = [s for s in ("kernels", "chunks", "throughput") if s in sections]
        for variant in args.variants.split(",") if per_variant else []:
            dtype = "fp16" if device.type == "cuda" else "fp32"
            engine = make_engine(
                cfg,
                dtype,
                args.kv,
                graphs=device.type == "cuda",
                num_pages=args.num_pages,
                device=args.device,
                variant=variant,
            )
            for name in per_variant:
                print(f"== {name} [{variant}]", flush=True)
                if name == "kernels":
                    out = section_kernels(cfg, engine)
                elif name == "chunks":
                    out = section_chunks(engine, batches)
                else:
                    out = section_throughput(cfg, engine, rows, args.context_s)
                results.setdefault(name, {})[variant] = out
                args.out.write_text(json.dumps(results, indent=1, default=str))
            del engine
            free(device)
        results["seconds"] = time.perf_counter() - started
        args.out.write_text(json.dumps(results, indent=1, default=str))
        print(f"done in {results['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
