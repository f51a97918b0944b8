"""Pieces of the decode benchmark (bench/decode.py): the random full-size model, engines, one stream with its mel,
a flow pass over aliased pages, and a kernel count."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from light_tts.decode.engine import DecodeEngine
from light_tts.decode.engine_setup import HIFT_MAX_ROWS, EngineLimits
from light_tts.decode.flow_inputs import ChunkSpec
from light_tts.decode.scheduler import SchedulerConfig
from light_tts.frontend.prompt import Prompt
from light_tts.model_config import ModelConfig
from light_tts.models.cosyvoice2.flow import Flow
from light_tts.models.cosyvoice2.hift import HiFT
from light_tts.models.cosyvoice2.hift.streaming import MEL_CACHE_LEN, HiFTStreamState, hift_stream_chunk
from light_tts.token2wav import HopPolicy

PROMPT_TOKENS = 125  # a 5-second prompt
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def random_model_dir(out: Path) -> ModelConfig:
    torch.manual_seed(0)
    cfg = ModelConfig(model_dir=out)
    if not (out / "flow.pt").exists():
        torch.save(Flow(cfg.flow).state_dict(), out / "flow.pt")
        torch.save(HiFT(cfg.hift).state_dict(), out / "hift.pt")
    return cfg


def make_prompt(seed: int, num_tokens: int = PROMPT_TOKENS) -> Prompt:
    g = np.random.default_rng(seed)
    return Prompt(np.zeros(4, np.int32), g.integers(0, 6561, num_tokens).astype(np.int32),
                  g.standard_normal(192).astype(np.float32),
                  (g.standard_normal((2 * num_tokens, 80)) - 5).astype(np.float32))


def make_engine(cfg: ModelConfig, dtype: str, kv: str | None, graphs: bool, num_pages: int | None = None,
                max_pass_tokens: int = 8192, max_batch_size: int = 256) -> DecodeEngine:
    limits = EngineLimits(max_stream_tokens=800, max_prompt_tokens=150, max_pass_tokens=max_pass_tokens,
                          num_pages=num_pages, kv_dtype=kv)
    started = time.perf_counter()
    engine = DecodeEngine(cfg, "cuda", max_batch_size=max_batch_size, hop_policy=HopPolicy("fixed"),
                          dtype=DTYPES[dtype], use_cuda_graph=graphs, limits=limits)
    # lockstep throughput: every ready chunk runs (no deadline deferral: the bench has no listeners)
    engine.sched_cfg = SchedulerConfig(engine.sched_cfg.max_rows, engine.sched_cfg.max_tokens, fill_horizon_s=1e9)
    print(f"  engine {dtype} kv={kv} graphs={graphs}: {engine.pool.num_pages} pages, "
          f"{len(engine.runner.graphs)} flow graphs, ready in {time.perf_counter() - started:.1f} s, "
          f"{torch.cuda.memory_allocated() / 1e9:.1f} GB allocated", flush=True)
    return engine


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.linalg.norm(a[:n] - b[:n]) / max(np.linalg.norm(b[:n]), 1e-12))


def run_stream(engine: DecodeEngine, tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """One stream (prompt 0, seed 3) given every token at once: its audio and the mel frames of its chunks."""
    mels = []
    original = engine._hift

    def record(jobs, outputs):
        mels.extend(job.mel[0].float().cpu().numpy().T for job in jobs)
        return original(jobs, outputs)

    engine._hift = record  # an instance attribute shadowing the method; removed below (no reference cycle)
    engine.add_request("s", make_prompt(0), seed=3, stream=True, max_tokens=len(tokens))
    engine.push_tokens("s", tokens, True)
    audio = []
    while engine.num_active():
        for out in engine.step():
            assert out.error is None, out.error
            audio.append(out.audio)
    del engine._hift
    return np.concatenate(audio), np.concatenate(mels).reshape(-1)


def flow_only_pass(engine: DecodeEngine, rows: int, context_tokens: int, repeats: int = 5) -> tuple[float, float]:
    """ms of one flow pass of `rows` middle chunks (25 tokens + 3 lookahead) after `context_tokens` cached ones,
    page tables aliasing the pool's pages, and ms of HiFT on those chunks (steady shape, graphs)."""
    num_pages, page = engine.pool.num_pages, engine.page_tokens
    ctx_pages = context_tokens // page
    g = np.random.default_rng(0)
    specs = []
    for r in range(rows):
        table = [(r * (ctx_pages + 1) + k) % num_pages for k in range(ctx_pages + 1)]
        slot = 1 + r % (engine.slots.num_slots - 2)
        specs.append(ChunkSpec(slot=slot, read_slot=slot, page_table=table, t0=context_tokens,
                               tokens=g.integers(0, 6561, page + 3).tolist(), num_lookahead=3))
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        engine.runner.run(specs)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    spf = engine.hift.samples_per_frame
    dev = engine.device
    state = HiFTStreamState(mel=torch.randn(rows, 80, MEL_CACHE_LEN, device=dev),
                            source=torch.zeros(rows, 1, MEL_CACHE_LEN * spf, device=dev),
                            speech=torch.zeros(rows, MEL_CACHE_LEN * spf, device=dev))
    mel = torch.randn(rows, 80, 2 * page, device=dev)
    gens = [torch.Generator(device=dev).manual_seed(i) for i in range(rows)]
    hift_times = []
    for _ in range(repeats):  # in passes of at most HIFT_MAX_ROWS rows, as the engine runs them
        torch.cuda.synchronize()
        start = time.perf_counter()
        for a in range(0, rows, HIFT_MAX_ROWS):
            part = slice(a, a + HIFT_MAX_ROWS)
            s = HiFTStreamState(state.mel[part].clone(), state.source[part].clone(), state.speech[part].clone())
            hift_stream_chunk(engine.hift, s, mel[part], False, generator=gens[part]).cpu()
        hift_times.append(time.perf_counter() - start)
    return float(np.median(times[1:]) * 1e3), float(np.median(hift_times[1:]) * 1e3)


def count_kernels(engine: DecodeEngine) -> int:
    """CUDA kernels launched by one eager flow pass of one middle chunk (what a graph replays)."""
    spec = ChunkSpec(slot=1, read_slot=1, page_table=list(range(6)), t0=125, tokens=[1] * 28, num_lookahead=3)
    inputs = engine.runner.build([spec], None)
    engine.runner.paged(inputs)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        engine.runner.paged(inputs)
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
