"""GPU benchmark of the decode engine (token2wav) at the released dimensions with random weights.

    python -m light_tts.bench.decode --out decode.json [--model-dir DIR] [--batches 1,4,16,64] [--sections ...]

Sections: `errors` (fp16/bf16 mel vs fp32), `phases` (where a step's time goes, and a torch.profiler table in
OUT.profile.txt), `chunks` (ms per step of one 1-second chunk per request, graphs on/off, best audio s/s),
`utterance` (per-chunk time along a 20-second stream; audio errors fp16/bf16 vs fp32 and graphs vs eager) and
`upstream` (upstream's full-prefix recompute, the baseline). A random-weight flow.pt/hift.pt pair is written to a
temporary directory unless --model-dir gives a model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import light_tts.decode.engine as engine_module
from light_tts.decode.engine import DecodeEngine
from light_tts.frontend.prompt import Prompt
from light_tts.model_config import ModelConfig
from light_tts.models.flow import Flow
from light_tts.models.hift import HiFT
from light_tts.models.hift.streaming import MEL_CACHE_LEN
from light_tts.token2wav import HopPolicy

PROMPT_TOKENS = 25  # one whole chunk: no alignment pad, so every hop is exactly 25 tokens
HOP = 25
# host calls that the phase profile counts as launches
LAUNCH_CALLS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cudaGraphLaunch", "cudaMemcpyAsync",
                "cudaMemsetAsync")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def random_model_dir(out: Path) -> ModelConfig:
    torch.manual_seed(0)
    cfg = ModelConfig(model_dir=out)
    torch.save(Flow(cfg.flow).state_dict(), out / "flow.pt")
    torch.save(HiFT(cfg.hift).state_dict(), out / "hift.pt")
    return cfg


def make_prompt(seed: int) -> Prompt:
    g = np.random.default_rng(seed)
    return Prompt(np.zeros(4, np.int32), g.integers(0, 6561, PROMPT_TOKENS).astype(np.int32),
                  g.standard_normal(192).astype(np.float32),
                  (g.standard_normal((2 * PROMPT_TOKENS, 80)) - 5).astype(np.float32))


def sync_time() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def stream_round(engine: DecodeEngine, batch: int, num_chunks: int, tag: str) -> tuple[list[float], dict]:
    """`batch` streams fed in lockstep, one 25-token hop per step: seconds of each step (chunk 1 = the first,
    which carries the prompt) and the audio of each request."""
    g = np.random.default_rng(batch)
    ids = [f"{tag}-{i}" for i in range(batch)]
    for i, req_id in enumerate(ids):
        engine.add_request(req_id, make_prompt(i), seed=i, stream=True)
    audio = {req_id: [] for req_id in ids}
    times = []
    for chunk in range(num_chunks):
        for req_id in ids:
            n = HOP + 3 if chunk == 0 else HOP
            engine.push_tokens(req_id, g.integers(0, 6561, n).tolist(), is_last=chunk == num_chunks - 1)
        start = sync_time()
        outs = engine.step()
        times.append(sync_time() - start)
        assert len(outs) == batch and all(o.error is None for o in outs), [o.error for o in outs]
        for o in outs:
            audio[o.req_id].append(o.audio)
    while engine.num_active():  # the final chunks (3 lookahead tokens), untimed
        for o in engine.step():
            audio[o.req_id].append(o.audio)
    return times, {k: np.concatenate(v) for k, v in audio.items()}


def chunk_times(cfg: ModelConfig, dtype: str, graphs: bool, batches: list[int]) -> dict:
    engine = DecodeEngine(cfg, "cuda", max_batch_size=max(batches), hop_policy=HopPolicy("fixed"),
                          dtype=DTYPES[dtype], use_cuda_graph=graphs)
    if graphs:
        engine.flow.decoder.runner.max_graph_bytes = 24 << 30
    result = {}
    for batch in batches:
        try:
            stream_round(engine, batch, 4, "warm")  # captures the graphs of every cache bucket it meets
            times, _ = stream_round(engine, batch, 4, "timed")
            result[batch] = statistics.median(times[1:]) * 1e3  # ms per step of non-first 1-second chunks
        except (torch.OutOfMemoryError, AssertionError) as e:  # the engine reports an OOM as failed requests
            print(f"  {dtype} graphs={graphs} batch {batch} failed: {str(e)[:200]}", flush=True)
            result[batch] = None
            for req_id in list(engine.requests):
                engine.abort(req_id)
        torch.cuda.empty_cache()
        print(f"  {dtype} graphs={graphs} batch {batch}: {result[batch]} ms per 1-s chunk", flush=True)
    if graphs:  # how many calls the graphs served (final chunks run eagerly by design)
        runner, hift_runner = engine.flow.decoder.runner, engine.hift.runner
        result["replays/eager"] = f"{runner.num_replays}/{runner.num_eager}"
        result["hift replays/eager"] = f"{hift_runner.num_replays}/{hift_runner.num_eager}"
    del engine
    torch.cuda.empty_cache()
    return result


def phase_profile(cfg: ModelConfig, dtype: str, graphs: bool, batch: int, table_path: Path | None) -> dict:
    """Where a step of `batch` 1-second chunks spends its time: ms per part (each part synchronised, so the parts
    add up to a bit more than an unprofiled step), and the host ops of one step by self time (torch.profiler)."""
    engine = DecodeEngine(cfg, "cuda", max_batch_size=batch, hop_policy=HopPolicy("fixed"), dtype=DTYPES[dtype],
                          use_cuda_graph=graphs)
    if graphs:
        engine.flow.decoder.runner.max_graph_bytes = 24 << 30
    spent: dict[str, list[tuple[int, float]]] = {}  # part -> (step number, seconds) of each call
    num_steps = [0]

    def timed(name, fn):
        def run(*args, **kwargs):
            start = sync_time()
            out = fn(*args, **kwargs)
            spent.setdefault(name, []).append((num_steps[0], sync_time() - start))
            return out
        return run

    step = engine.step

    def counted_step():
        num_steps[0] += 1
        return step()

    engine.step = counted_step
    patches = {"stack_flow_states": engine_module.stack_flow_states, "split_row": engine_module.split_row}
    flow = engine.flow
    flow.encoder.forward = timed("encoder", flow.encoder.forward)
    flow.decoder.forward = timed("cfm", flow.decoder.forward)
    engine._hift_pass = timed("hift", engine._hift_pass)
    engine._flow_pass = timed("flow", engine._flow_pass)
    for name, fn in patches.items():
        setattr(engine_module, name, timed(name, fn))
    try:
        stream_round(engine, batch, 4, "warm")
        spent.clear()
        first = num_steps[0] + 2  # steps of the timed round's chunks 2-4 (chunk 1 carries the prompt)
        times, _ = stream_round(engine, batch, 4, "timed")
        parts = {name: sum(dt for n, dt in v if first <= n < first + 3) / 3 * 1e3 for name, v in spent.items()}
        parts["step"] = statistics.median(times[1:]) * 1e3
        if table_path is not None:  # one unpatched middle-chunk step under the profiler
            for name, fn in patches.items():
                setattr(engine_module, name, fn)
            for m in (flow.encoder, flow.decoder, engine):
                for attr in ("forward", "_hift_pass", "_flow_pass", "step"):
                    m.__dict__.pop(attr, None)
            ids = [f"prof-{i}" for i in range(batch)]
            for i, req_id in enumerate(ids):
                engine.add_request(req_id, make_prompt(i), seed=i, stream=True)
                engine.push_tokens(req_id, list(range(2 * HOP + 3)), is_last=False)
            engine.step()
            sync_time()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                    torch.profiler.ProfilerActivity.CUDA]) as prof:
                engine.step()
                sync_time()
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
            with open(table_path, "a") as f:
                f.write(f"==== {dtype} graphs={graphs} batch {batch}\n{table}\n")
            events = prof.key_averages()
            parts["num_host_ops"] = sum(e.count for e in events if e.key.startswith("aten::"))
            parts["num_launches"] = sum(e.count for e in events if e.key in LAUNCH_CALLS)
    finally:
        for name, fn in patches.items():
            setattr(engine_module, name, fn)
    del engine
    torch.cuda.empty_cache()
    print(f"  phases {dtype} graphs={graphs} batch {batch}: "
          + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in parts.items()), flush=True)
    return parts


def utterance_profile(cfg: ModelConfig, dtype: str, num_chunks: int = 20,
                      graphs: bool = True) -> tuple[list[float], np.ndarray]:
    engine = DecodeEngine(cfg, "cuda", hop_policy=HopPolicy("fixed"), dtype=DTYPES[dtype], use_cuda_graph=graphs)
    stream_round(engine, 1, num_chunks, "warm")
    times, audio = stream_round(engine, 1, num_chunks, "timed")
    del engine
    torch.cuda.empty_cache()
    return [t * 1e3 for t in times], audio["timed-0"]


@torch.inference_mode()
def upstream_profile(cfg: ModelConfig, dtype: str, chunks: list[int]) -> dict:
    """Upstream's streaming cost at chunk k: the flow over prompt + all 25k+3 tokens, HiFT over the new frames."""
    dev, dt = torch.device("cuda"), DTYPES[dtype]
    flow = Flow.from_checkpoint(cfg.flow, cfg.path("flow.pt")).to(dev, dt)
    hift = HiFT.from_checkpoint(cfg.hift, cfg.path("hift.pt")).to(dev)
    p = make_prompt(0)
    p_tok = torch.tensor(p.speech_tokens, device=dev)[None]
    p_mel = torch.tensor(p.mel, device=dev, dtype=dt)[None]
    emb = torch.tensor(p.embedding, device=dev, dtype=dt)[None]
    tokens = torch.randint(0, 6561, (1, max(chunks) * HOP + 3), device=dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    result = {}
    for k in chunks:
        samples = []
        for _ in range(3):
            start = sync_time()
            mel = flow.inference(tokens[:, :k * HOP + 3], p_tok, p_mel, emb, streaming=True, finalize=False)
            new = mel[:, :, -(2 * HOP + MEL_CACHE_LEN):].float()
            source = torch.zeros(1, 1, MEL_CACHE_LEN * hift.samples_per_frame, device=dev)
            hift.inference(new, source, gen)[0].cpu()
            samples.append(sync_time() - start)
        result[k] = statistics.median(samples[1:]) * 1e3
        print(f"  upstream {dtype} chunk {k}: {result[k]:.1f} ms", flush=True)
    return result


@torch.inference_mode()
def mel_errors(cfg: ModelConfig, num_tokens: int = 500) -> dict:
    """Relative L2 error of the whole-utterance flow mel in half precision against float32 (same inputs)."""
    dev = torch.device("cuda")
    p = make_prompt(0)
    tokens = torch.randint(0, 6561, (1, num_tokens), device=dev, generator=torch.Generator(dev).manual_seed(0))
    mels = {}
    for name in ("fp32", "fp16", "bf16"):
        dt = DTYPES[name]
        flow = Flow.from_checkpoint(cfg.flow, cfg.path("flow.pt")).to(dev, dt)
        args = (torch.tensor(p.speech_tokens, device=dev)[None], torch.tensor(p.mel, device=dev, dtype=dt)[None],
                torch.tensor(p.embedding, device=dev, dtype=dt)[None])
        mels[name] = flow.inference(tokens, *args, streaming=True, finalize=True).float().cpu().numpy()
    return {name: rel_err(mels[name], mels["fp32"]) for name in ("fp16", "bf16")}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


SECTIONS = ("errors", "chunks", "phases", "utterance", "upstream")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="decode.json")
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--batches", default="1,4,16,64")
    parser.add_argument("--dtypes", default="fp16,fp32", help="flow dtypes of the chunk-time table")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"any of {','.join(SECTIONS)}")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    sections = args.sections.split(",")
    tmp = tempfile.TemporaryDirectory()
    cfg = ModelConfig(model_dir=Path(args.model_dir)) if args.model_dir else random_model_dir(Path(tmp.name))
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "chunk_ms": {}}

    def save():  # after every section, so that a run cut short still leaves its numbers
        Path(args.out).write_text(json.dumps(report, indent=1))

    if "errors" in sections:
        report["mel_rel_err_vs_fp32"] = mel_errors(cfg)
        print("mel rel err vs fp32", report["mel_rel_err_vs_fp32"], flush=True)
    if "phases" in sections:
        table = Path(args.out).with_suffix(".profile.txt")
        report["phases_ms"] = {f"fp16-{'graphs' if g else 'eager'}-{b}": phase_profile(cfg, "fp16", g, b, table)
                               for g in (True, False) for b in batches if g or b == 1}
        save()
    if "chunks" in sections:
        for dtype in args.dtypes.split(","):
            # float32 caches are twice the size: batch 64 does not fit next to the copies a step makes
            sizes = batches if dtype != "fp32" else [b for b in batches if b <= 16]
            for graphs in (True, False):
                name = f"{dtype}-{'graphs' if graphs else 'eager'}"
                report["chunk_ms"][name] = chunk_times(cfg, dtype, graphs, sizes)
                save()
        best = min(((ms, b, name) for name, row in report["chunk_ms"].items() for b, ms in row.items()
                    if isinstance(b, int) and ms),
                   key=lambda x: x[0] / x[1])
        report["best"] = {"config": best[2], "batch": best[1], "ms_per_step": best[0],
                          "audio_s_per_s": best[1] / (best[0] / 1e3)}
        save()
    if "utterance" in sections:
        profiles = {}
        for dtype in ("fp16", "bf16", "fp32"):
            times, audio = utterance_profile(cfg, dtype)
            profiles[dtype] = audio
            report[f"utterance_chunk_ms_{dtype}"] = {k: times[k - 1] for k in (1, 5, 10, 20)}
            save()
        report["audio_rel_err_vs_fp32"] = {d: rel_err(profiles[d], profiles["fp32"]) for d in ("fp16", "bf16")}
        for dtype in ("fp16", "fp32"):
            _, eager = utterance_profile(cfg, dtype, graphs=False)
            report[f"audio_rel_err_graphs_vs_eager_{dtype}"] = rel_err(profiles[dtype], eager)
        save()
    if "upstream" in sections:
        report["upstream_chunk_ms"] = {d: upstream_profile(cfg, d, [1, 5, 10, 20]) for d in ("fp16", "fp32")}
    print(json.dumps(report, indent=1))
    save()


if __name__ == "__main__":
    main()
