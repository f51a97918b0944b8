"""Pieces of the decode benchmark (bench/decode.py): the random full-size model, engines (the model's family's),
one stream with its mel, a flow pass over aliased pages, the vocoder's middle chunks, and a kernel count."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from light_tts.decode.engine import DecodeEngine, StepJob
from light_tts.decode.engine_setup import EngineLimits
from light_tts.decode.flow_inputs import ChunkSpec
from light_tts.decode.scheduler import SchedulerConfig
from light_tts.frontend.prompt import Prompt
from light_tts.model_config import ModelConfig
from light_tts.models.cosyvoice2.flow import Flow
from light_tts.models.cosyvoice2.hift import HiFT
from light_tts.token2wav import HopPolicy

PROMPT_TOKENS = 125  # a 5-second prompt
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def random_model_dir(out: Path) -> ModelConfig:
    """The config of the model in `out` (any family, e.g. written by make_model --size full), or a CosyVoice2 codec
    with random full-size weights written there (flow.pt and hift.pt only: what the decode engine reads)."""
    from light_tts.errors import ModelDirError
    from light_tts.families import family_of

    try:
        family = family_of(out)
    except ModelDirError:
        family = None
    if family is not None:
        return family.load_model_config(out)
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
    from light_tts.families import family_named

    started = time.perf_counter()
    engine = family_named(cfg.family).decode_engine(cfg, device="cuda", max_batch_size=max_batch_size,
                                                    hop_policy=HopPolicy("fixed"), dtype=DTYPES[dtype],
                                                    use_cuda_graph=graphs, limits=limits)
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
    hift_ms = vocoder_middle_chunk_ms(engine, rows, 2 * page, repeats)
    return float(np.median(times[1:]) * 1e3), hift_ms


def vocoder_middle_chunk_ms(engine: DecodeEngine, rows: int, frames: int, repeats: int = 5) -> float:
    """ms of the engine's vocoder (its _hift, in passes as it runs them) on `rows` middle chunks of `frames` mel
    frames: each row's state is first advanced by two such chunks, so every timed pass has the steady shape."""
    dev = engine.device
    reqs = [SimpleNamespace(req_id=str(r), slot=-1, hift_state=engine.new_vocoder_state(),
                            generator=torch.Generator(device=dev).manual_seed(r)) for r in range(rows)]

    def chunk() -> list[StepJob]:
        return [StepJob(req, None, False, 0, mel=torch.randn(1, 80, frames, device=dev)) for req in reqs]

    for _ in range(2):
        engine._hift(chunk(), [])
    times = []
    for _ in range(repeats):
        saved = [req.hift_state for req in reqs]
        jobs = chunk()
        torch.cuda.synchronize()
        start = time.perf_counter()
        engine._hift(jobs, [])
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        for req, state in zip(reqs, saved):  # the same shapes again next time
            req.hift_state = state
    return float(np.median(times[1:]) * 1e3)


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
