"""GPU benchmark of the LLM engine on a full-size speech LM (random weights unless --model_dir is given).

python -m light_tts.bench.llm --out llm.json [--model_dir DIR] [--dtype bfloat16] [--device cuda]
    [--quantization {none,fp8,int8}] [--kv_cache_dtype {auto,fp8,int8}] [--small_batch_rows N]
(--device cpu --model_dir <tiny model> --dtype float32 --batches 1,4 --concurrency 4 --gen_len 10 only checks
that the benchmark runs.)
--model_dir takes any family's directory (an Orpheus one: make_model --family orpheus --size full); without it,
CosyVoice2's released dimensions with random weights (llm_models.py). The quantization flags apply to any family's
body.

Measures: decode step latency (engine.step(): forward, sampling, scheduling) at several batch sizes with and
without CUDA graphs at ~300 tokens of context; prefill latency of one request; tokens/s with 64 concurrent
requests; the same tokens/s of a plain eager loop, one request at a time with a per-request growing KV cache
(light_tts.models.speech_lm, the upstream way; sampling on the device as upstream, and on the host); and a
log-prob check of the engine against the float32 reference. (Orpheus has no eager baseline here: its upstream
way is vLLM, not a loop of ours.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from light_tts.bench.engines.llm_models import CosyVoiceBench, bench_model
from light_tts.llm.engine import EngineConfig, LLMEngine
from light_tts.llm.sampler import Sampler, SamplingInputs, pack_sampling
from light_tts.models.speech_lm import SpeechLM
from light_tts.sampling import RASSampler

# bf16/fp16 weights pass when the log-probs of every step are within 1e-2 relative L2 of the float32 reference's
# (bf16 keeps 8 significant bits, ~4e-3 per rounding). The max |difference| is reported beside it: it grows with
# the vocabulary (the least likely of Orpheus's 156,940 ids move most; 0.28 on an H100 at 4.5e-3 rel L2), so it
# is no verdict.
LOGPROB_REL_TOL = 1e-2
# (quantized modes report the difference without a verdict: light_tts.bench.quant measures their accuracy)
DEVICE = "cuda"
MODEL = None  # the family's adapter (llm_models.py), set by main


def make_request(req_id: str, prompt_len: int, gen_len: int, gen: torch.Generator, **kw):
    return MODEL.make_request(req_id, prompt_len, gen_len, gen, **kw)


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed_steps(engine: LLMEngine, num_steps: int) -> list[float]:
    times = []
    for _ in range(num_steps):
        start = time.perf_counter()
        engine.step()  # ends with the host copy of the sampled ids, so the GPU work is done
        times.append((time.perf_counter() - start) * 1e3)
    return times


def bench_decode(engine: LLMEngine, batch: int, context: int, gen: torch.Generator) -> dict:
    reqs = [make_request(f"d{batch}_{i}", context, 10_000, gen) for i in range(batch)]
    for req in reqs:
        engine.add_request(req)
    while engine.scheduler.waiting or any(s.num_computed == 0 for s in engine.scheduler.running):
        engine.step()
    graphs = engine.runner.graphs
    result = {"batch": batch}
    for name, use_graphs in (("graph_ms", True), ("eager_ms", False)):
        engine.runner.graphs = graphs if use_graphs else None
        timed_steps(engine, 3)
        result[name] = statistics.median(timed_steps(engine, 20))
    engine.runner.graphs = graphs
    if graphs is not None:  # the GPU time of the step alone: replaying its graph with the last inputs
        sync()
        start = time.perf_counter()
        for _ in range(20):
            graphs.replay(batch)
        sync()
        result["replay_ms"] = (time.perf_counter() - start) * 1e3 / 20
    for req in reqs:
        engine.abort(req.req_id)
    return result


def profile_decode(engine: LLMEngine, batch: int, context: int, gen: torch.Generator, num_steps: int = 10) -> dict:
    """Kernels of a decode step of `batch` requests with graphs (torch.profiler): launches per step and the
    costliest kinds."""
    reqs = [make_request(f"prof{batch}_{i}", context, 10_000, gen) for i in range(batch)]
    for req in reqs:
        engine.add_request(req)
    while engine.scheduler.waiting or any(s.num_computed == 0 for s in engine.scheduler.running):
        engine.step()
    for _ in range(3):
        engine.step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(num_steps):
            engine.step()
        sync()
    for req in reqs:
        engine.abort(req.req_id)
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernels.sort(key=lambda e: -e.device_time_total)
    return {
        "batch": batch,
        "kernels_per_step": sum(e.count for e in kernels) / num_steps,
        "top": [
            {"name": e.key[:90], "per_step": e.count / num_steps, "us_per_step": e.device_time_total / num_steps}
            for e in kernels[:25]
        ],
    }


def bench_prefill(engine: LLMEngine, prompt_len: int, gen: torch.Generator) -> dict:
    times = []
    for i in range(8):
        req = make_request(f"p{prompt_len}_{i}", prompt_len, 1, gen)  # new random voice: no prefix reuse
        engine.add_request(req)
        times += timed_steps(engine, 1)
        engine.abort(req.req_id)
    return {"prompt_len": prompt_len, "ms": statistics.median(times[2:])}


def bench_throughput(engine: LLMEngine, num_reqs: int, prompt_len: int, gen_len: int, gen) -> dict:
    reqs = [make_request(f"t{i}", prompt_len, gen_len, gen) for i in range(num_reqs)]
    start = time.perf_counter()
    for req in reqs:
        engine.add_request(req)
    num_tokens = 0
    while engine.has_unfinished():
        num_tokens += sum(len(o.new_token_ids) for o in engine.step())
    seconds = time.perf_counter() - start
    return {"concurrency": num_reqs, "tokens": num_tokens, "seconds": seconds, "tokens_per_s": num_tokens / seconds}


@torch.inference_mode()
def bench_eager_baseline(
    lm: SpeechLM, prompt_len: int, gen_len: int, gen: torch.Generator, device_sampling: bool
) -> dict:
    """One request at a time, as upstream: eager forward, KV grown by concat. Sampling each step either on the
    device (as upstream samples, here the engine's batched sampler on a batch of one) or on the host (RASSampler,
    which copies the log-probs to the CPU and loops in Python)."""
    req = make_request("eager", prompt_len, gen_len + 5, gen)
    prompt = [
        torch.tensor(x, device=DEVICE)
        for x in (req.text_token_ids, req.prompt_text_token_ids, req.prompt_speech_token_ids)
    ]
    eos, win = lm.cfg.eos_token, lm.cfg.sampling.win_size
    host_sampler, device_sampler = RASSampler(lm.cfg.sampling, req.seed), Sampler(lm.cfg.sampling, eos)
    cache, embeds, tokens = lm.new_cache(), lm.build_prefill_embeds(*prompt), []
    for step in range(gen_len + 5):
        if step == 5:  # the first steps warm up
            sync()
            start = time.perf_counter()
        logprobs = lm.forward_step(embeds, cache)
        if device_sampling:  # eos banned: a fixed length
            window = ([-1] * win + tokens)[-win:]
            packed, seeds, steps = pack_sampling([req.seed], [len(tokens)], [True], [False], [window])
            inputs = SamplingInputs(packed.to(DEVICE), seeds, steps, [True], [False])
            tokens += device_sampler(logprobs[None].float(), inputs)
        else:
            tokens.append(host_sampler.sample(logprobs, tokens, eos))
        embeds = lm.embed_speech(torch.tensor(tokens[-1:], device=DEVICE))
    seconds = time.perf_counter() - start
    return {
        "tokens": gen_len,
        "seconds": seconds,
        "tokens_per_s": gen_len / seconds,
        "sampling": "device" if device_sampling else "host",
    }


@torch.inference_mode()
def logprob_check(engine: LLMEngine, ref, batch: int, num_checked: int, gen: torch.Generator) -> dict:
    """Engine log-probs (prefill + 100 decode steps, greedy, `batch` requests) vs the float32 reference fed the
    same tokens, for the first num_checked requests."""
    reqs = [make_request(f"lp{batch}_{i}", 300, 101, gen, greedy=True) for i in range(batch)]
    for req in reqs:
        engine.add_request(req)
    ours: dict[str, list[torch.Tensor]] = {r.req_id: [] for r in reqs[:num_checked]}
    tokens: dict[str, list[int]] = {r.req_id: [] for r in reqs}
    while engine.has_unfinished():
        step = engine.scheduler.schedule()  # engine.step(), unrolled to read each step's logits
        if step is None:
            engine.step()
            continue
        ids = engine.runner.run(step)
        logprobs = engine.runner.last_logits.float().log_softmax(dim=-1)
        for i, seq in enumerate(step.seqs):
            if seq.req_id in ours:
                ours[seq.req_id].append(logprobs[i].clone())
        for out in engine.scheduler.postprocess(step, ids):
            tokens[out.req_id] += out.new_token_ids
    max_abs, rel = 0.0, []
    for req in reqs[:num_checked]:
        for step_logprobs, expected in zip(ours[req.req_id], MODEL.reference_logprobs(ref, req, tokens[req.req_id])):
            max_abs = max(max_abs, float((step_logprobs - expected).abs().max()))
            rel.append(float((step_logprobs - expected).norm() / expected.norm()))
    return {
        "batch": batch,
        "checked": num_checked,
        "steps": len(ours[reqs[0].req_id]),
        "max_abs": max_abs,
        "max_rel_l2": max(rel),
        "pass": None
        if engine.cfg.quantization != "none" or engine.cfg.kv_cache_dtype != "auto"
        else max(rel) <= LOGPROB_REL_TOL,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model_dir", type=Path)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batches", default="1,8,32,64,128,256")
    parser.add_argument("--context", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=64, help="requests of the throughput run")
    parser.add_argument("--gen_len", type=int, default=250, help="tokens each request of the throughput run makes")
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also list the kernels of a decode step at batch 1 and at the largest of --batches (CUDA)",
    )
    parser.add_argument("--quantization", default="none", choices=("none", "fp8", "int8"))
    parser.add_argument("--kv_cache_dtype", default="auto", choices=("auto", "fp8", "int8"))
    parser.add_argument(
        "--small_batch_rows",
        type=int,
        default=0,
        help="decode batches up to this many rows run the small-batch kernels (--llm_small_batch_rows)",
    )
    args = parser.parse_args(argv)
    global DEVICE, MODEL
    DEVICE = args.device
    gen = torch.Generator().manual_seed(0)
    MODEL = bench_model(args.model_dir, DEVICE)
    engine_cfg = EngineConfig(
        data_type=args.dtype,
        running_max_req_size=256,
        graph_max_batch_size=256,
        quantization=args.quantization,
        kv_cache_dtype=args.kv_cache_dtype,
        small_batch_rows=args.small_batch_rows,
        max_req_total_len=2048,
        max_total_token_num=256 * (args.context + 100) + 4096,
    )
    start = time.perf_counter()
    engine = LLMEngine(MODEL.spec, engine_cfg, DEVICE, MODEL.state_dict)
    results: dict = {
        "gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        "dtype": args.dtype,
        "quantization": args.quantization,
        "kv_cache_dtype": args.kv_cache_dtype,
        "small_batch_rows": args.small_batch_rows,
        "init_s": time.perf_counter() - start,
    }
    results["decode"] = [bench_decode(engine, int(b), args.context, gen) for b in args.batches.split(",")]
    results["prefill"] = [bench_prefill(engine, n, gen) for n in (100, 300, 1000)]
    results["throughput"] = bench_throughput(engine, args.concurrency, args.context, args.gen_len, gen)
    ref = MODEL.reference()
    results["logprob_check"] = [
        logprob_check(engine, ref, b, n, gen) for b, n in ((1, 1), (args.concurrency, min(4, args.concurrency)))
    ]
    if isinstance(MODEL, CosyVoiceBench):
        baseline_lm = ref.to(getattr(torch, args.dtype))
        bench_eager_baseline(baseline_lm, args.context, 100, gen, device_sampling=True)  # warm-up
        results["eager_baseline"] = bench_eager_baseline(baseline_lm, args.context, 100, gen, device_sampling=True)
        results["eager_baseline_host_sampling"] = bench_eager_baseline(
            baseline_lm, args.context, 100, gen, device_sampling=False
        )
        results["speedup_vs_eager"] = results["throughput"]["tokens_per_s"] / results["eager_baseline"]["tokens_per_s"]
    if args.profile and DEVICE == "cuda":  # last: the profiler slows what runs after it
        batches = sorted({1, max(int(b) for b in args.batches.split(","))})
        results["profile"] = [profile_decode(engine, b, args.context, gen) for b in batches]
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


def print_table(r: dict) -> None:
    print(
        f"GPU {r['gpu']}, {r['dtype']}, quantization {r['quantization']}, KV cache {r['kv_cache_dtype']}, "
        f"small-batch kernels up to {r.get('small_batch_rows', 0)} rows, engine init {r['init_s']:.1f} s"
    )
    print(f"{'decode batch':>12} {'graph ms':>9} {'eager ms':>9} {'replay ms':>10}")
    for d in r["decode"]:
        print(f"{d['batch']:>12} {d['graph_ms']:>9.3f} {d['eager_ms']:>9.3f} {d.get('replay_ms', float('nan')):>10.3f}")
    for prof in r.get("profile", []):
        print(f"batch-{prof['batch']} decode step: {prof['kernels_per_step']:.0f} kernels")
        for k in prof["top"]:
            print(f"  {k['per_step']:5.1f} x {k['us_per_step']:8.1f} us  {k['name']}")
    for p in r["prefill"]:
        print(f"prefill {p['prompt_len']:>5} tokens: {p['ms']:.2f} ms")
    t = r["throughput"]
    print(f"engine, {t['concurrency']} concurrent: {t['tokens_per_s']:.0f} tokens/s")
    if "eager_baseline" in r:
        e, h = r["eager_baseline"], r["eager_baseline_host_sampling"]
        print(
            f"eager one-at-a-time: {e['tokens_per_s']:.1f} tokens/s (host sampling: {h['tokens_per_s']:.1f}); "
            f"speedup {r['speedup_vs_eager']:.1f}x"
        )
    for c in r["logprob_check"]:
        verdict = {True: "PASS", False: "FAIL", None: "quantized, no tolerance"}[c["pass"]]
        print(
            f"logprob check batch {c['batch']} ({c['checked']} checked, {c['steps']} steps): max |d| "
            f"{c['max_abs']:.4f}, max rel L2 {c['max_rel_l2']:.2e}: {verdict}"
        )


if __name__ == "__main__":
    main()
