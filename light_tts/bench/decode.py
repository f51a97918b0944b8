"""GPU benchmark of the paged decode engine (token2wav) at the released dimensions with random weights.

    python -m light_tts.bench.decode --out decode.json [--model-dir DIR] [--sections errors,chunks,flat,throughput,memory]

DIR: a model of any family (e.g. `make_model DIR --family cosyvoice3 --size full`); without it, a CosyVoice2 codec
with random full-size weights.

Sections:
- `errors`: the paged Triton path (fp32) against the dense per-stream flow cache, and fp16 / bf16 / fp8 pages
  against fp32: relative L2 of mel and audio along a 10-second stream with a 5-second prompt.
- `chunks`: ms per engine step of lockstep streams (one 1-second chunk each, 5-second shared prompt), CUDA graphs,
  at several batch sizes; audio seconds per second; kernels of one eager flow pass at batch 1.
- `flat`: per-chunk step time along one 30-second stream (chunk 5 against chunk 30).
- `throughput`: one flow pass + HiFT for R streams at 16 s of context each (25-token chunks). 256 such streams need
  more pages than one GPU has in fp16, so their page tables alias the pool's pages: every stream reads its own 16
  pages, spread over all the pool's pages (far more than the L2), i.e. the pass reads what 256 real streams read.
- `memory`: bytes per page, per stream second, and the pool's capacity in streams of 10 s and 30 s.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from light_tts.bench.decode_parts import (PROMPT_TOKENS, count_kernels, flow_only_pass, make_engine,
                                          make_prompt, random_model_dir, rel_l2, run_stream)
from light_tts.decode.flow_cache import KV_DTYPES


def sync_time() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def lockstep(engine, batch: int, num_chunks: int, tag: str) -> list[float]:
    """`batch` streams of one voice fed in lockstep, one 25-token hop per step: the seconds of each step after
    the first (which carries the prompt's last chunk and the alignment pad)."""
    g = np.random.default_rng(batch)
    prompt = make_prompt(0)
    ids = [f"{tag}-{i}" for i in range(batch)]
    pad = -PROMPT_TOKENS % 25
    for i, req_id in enumerate(ids):
        engine.add_request(req_id, prompt, seed=i, stream=True, max_tokens=25 * (num_chunks + 1) + pad + 3,
                           prefix_key="voice")
    times = []
    for chunk in range(num_chunks):
        for req_id in ids:
            n = 25 + pad + 3 if chunk == 0 else 25
            engine.push_tokens(req_id, g.integers(0, 6561, n).tolist(), is_last=chunk == num_chunks - 1)
        start = sync_time()
        outs = engine.step()
        times.append(sync_time() - start)
        assert len(outs) == batch and all(o.error is None for o in outs), [o.error for o in outs][:3]
    while engine.num_active():
        engine.step()
    return times[1:]


def section_errors(cfg) -> dict:
    """Audio and mel of one 10-second stream: paged fp32 vs dense fp32 (Token2WavSession), and each dtype vs fp32."""
    tokens = np.random.default_rng(7).integers(0, 6561, 250).tolist()
    out = {}
    ref_engine = make_engine(cfg, "fp32", None, graphs=False, num_pages=64)
    ref_audio, ref_mel = run_stream(ref_engine, tokens)
    session = ref_engine.t2w.session(make_prompt(0), 3, ref_engine.hop_policy)
    dense = np.concatenate(session.feed(tokens) + [session.finish()])
    out["paged_vs_dense_fp32_audio"] = rel_l2(ref_audio, dense)
    del ref_engine, session
    gc.collect()
    for name, dtype, kv in (("fp16", "fp16", None), ("bf16", "bf16", None), ("fp16+fp8 pages", "fp16", "fp8_e4m3")):
        engine = make_engine(cfg, dtype, kv, graphs=True, num_pages=64, max_pass_tokens=1024)
        audio, mel = run_stream(engine, tokens)
        out[f"{name}_vs_fp32_audio"] = rel_l2(audio, ref_audio)
        out[f"{name}_vs_fp32_mel"] = rel_l2(mel, ref_mel)
        out[f"{name}_eager_passes"] = engine.runner.num_eager
        del engine
        gc.collect()
        torch.cuda.empty_cache()
    print(json.dumps(out, indent=1), flush=True)
    return out


def section_chunks(cfg, batches: list[int], kv: str | None) -> dict:
    engine = make_engine(cfg, "fp16", kv, graphs=True, max_pass_tokens=8192)
    started = time.perf_counter()
    result = {"pool_pages": engine.pool.num_pages, "graph_buckets": len(engine.runner.graphs)}
    for batch in batches:
        times = lockstep(engine, batch, 6, f"b{batch}")
        ms = statistics.median(times[1:]) * 1e3
        result[batch] = {"ms_per_step": ms, "audio_s_per_s": batch / (ms / 1e3)}
        print(f"  kv={kv} batch {batch}: {ms:.1f} ms per step, {batch / (ms / 1e3):.0f} audio s/s", flush=True)
    result["flow replays/eager"] = f"{engine.runner.num_replays}/{engine.runner.num_eager}"
    if engine.hift.runner is not None:
        result["hift replays/eager"] = f"{engine.hift.runner.num_replays}/{engine.hift.runner.num_eager}"
    result["seconds"] = time.perf_counter() - started
    result["kernels_per_chunk_b1"] = count_kernels(engine)
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    return result


def section_flat(cfg) -> dict:
    """One 30-second stream (5-second prompt): step time of chunk 1..30 (graphs, fp16)."""
    engine = make_engine(cfg, "fp16", None, graphs=True, max_pass_tokens=1024, num_pages=128)
    g = np.random.default_rng(1)
    engine.add_request("flat", make_prompt(0), seed=1, stream=True, max_tokens=800, prefix_key="voice")
    pad = -PROMPT_TOKENS % 25
    times = []
    for chunk in range(30):
        engine.push_tokens("flat", g.integers(0, 6561, 25 + (pad + 3 if chunk == 0 else 0)).tolist(), chunk == 29)
        start = sync_time()
        engine.step()
        times.append((sync_time() - start) * 1e3)
    while engine.num_active():
        engine.step()
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    return {"ms_per_chunk": times, "chunk5_ms": times[4], "chunk30_ms": times[29],
            "chunk30_over_chunk5": times[29] / times[4]}


def section_throughput(cfg, rows_list: list[int], context_s: float, kv: str | None) -> dict:
    engine = make_engine(cfg, "fp16", kv, graphs=True, max_pass_tokens=8192)
    result = {"context_s": context_s, "kv": kv or "fp16", "pool_pages": engine.pool.num_pages}
    for rows in rows_list:
        flow_ms, hift_ms = flow_only_pass(engine, rows, int(context_s * 25))
        total = flow_ms + hift_ms
        result[rows] = {"flow_ms": flow_ms, "hift_ms": hift_ms, "audio_s_per_s": rows / (total / 1e3)}
        print(f"  {context_s:.0f}s ctx kv={kv} rows {rows}: flow {flow_ms:.1f} + hift {hift_ms:.1f} ms -> "
              f"{rows / (total / 1e3):.0f} audio s/s", flush=True)
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    return result


def section_memory(cfg) -> dict:
    engine = make_engine(cfg, "fp16", None, graphs=False, num_pages=4, max_pass_tokens=1024)
    shape = engine.cache.shape  # the family's pool geometry
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    out = {"gpu": torch.cuda.get_device_name(), "free_gb": free / 1e9}
    for kv in ("float16", "fp8_e4m3"):
        page = shape.page_bytes(KV_DTYPES[kv], torch.float16)
        pages = int(0.85 * free) // page
        own_10 = -(-(PROMPT_TOKENS + 250) // 25) - (PROMPT_TOKENS - 3) // 25
        own_30 = -(-(PROMPT_TOKENS + 750) // 25) - (PROMPT_TOKENS - 3) // 25
        out[kv] = {"mb_per_page": page / 1e6, "mb_per_stream_second": page / 1e6, "pages_in_85pct_free": pages,
                   "streams_of_10s_shared_5s_prompt": pages // own_10,
                   "streams_of_30s_shared_5s_prompt": pages // own_30}
    print(json.dumps(out, indent=1), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--sections", default="errors,memory,chunks,flat,throughput")
    parser.add_argument("--batches", default="1,4,16,64")
    parser.add_argument("--rows", default="64,128,256")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = random_model_dir(args.model_dir or Path(tmp))
        results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
        sections = args.sections.split(",")
        batches = [int(b) for b in args.batches.split(",")]
        rows = [int(r) for r in args.rows.split(",")]
        for name in sections:
            print(f"== {name}", flush=True)
            if name == "errors":
                results[name] = section_errors(cfg)
            elif name == "memory":
                results[name] = section_memory(cfg)
            elif name == "chunks":
                results[name] = section_chunks(cfg, batches, None)
            elif name == "flat":
                results[name] = section_flat(cfg)
            elif name == "throughput":
                results[name] = [section_throughput(cfg, rows, 16.0, None),
                                 section_throughput(cfg, rows, 16.0, "fp8_e4m3")]
            args.out.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
