"""Pieces of the decode benchmark (bench/decode.py): the model (random full-size, or a model directory such as the
tiny fixture for a CPU check), engines of each hot-path variant, one stream with its mel, flow passes over aliased
pages, HiFT passes of either family's vocoder (alone, or overlapped with the next flow pass), kernel counts."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from light_tts.decode.engine import DecodeEngine
from light_tts.decode.engine_setup import HIFT_MAX_ROWS, EngineLimits
from light_tts.decode.flow.flow_inputs import ChunkSpec
from light_tts.decode.hift.hift_stage import HiFTStage
from light_tts.decode.scheduler import SchedulerConfig
from light_tts.frontend.prompt import Prompt
from light_tts.model_config import ModelConfig
from light_tts.models.cosyvoice2.flow import Flow
from light_tts.models.cosyvoice2.hift import HiFT
from light_tts.models.cosyvoice2.hift.streaming import MEL_CACHE_LEN, HiFTStreamState, hift_stream_chunk
from light_tts.token2wav import HopPolicy

PROMPT_TOKENS = 125  # a 5-second prompt
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# the hot path's variants (EngineLimits): today's per-op path, then each change added; "new" is the GPU default
VARIANTS = {
    "today": dict(fused_flow=False, hift_half=False, keyed_noise=False, overlap_hift=False),
    "fused": dict(fused_flow=True, hift_half=False, keyed_noise=False, overlap_hift=False),
    "half": dict(fused_flow=True, hift_half=True, keyed_noise=True, overlap_hift=False),
    "new": dict(fused_flow=True, hift_half=True, keyed_noise=True, overlap_hift=True),
    # the GPU default since the H100 run: the per-op flow (faster there) with the HiFT changes
    "default": dict(fused_flow=False, hift_half=True, keyed_noise=True, overlap_hift=True),
}


def random_model_dir(out: Path) -> ModelConfig:
    torch.manual_seed(0)
    cfg = ModelConfig(model_dir=out)
    if not (out / "flow.pt").exists():
        torch.save(Flow(cfg.flow).state_dict(), out / "flow.pt")
        torch.save(HiFT(cfg.hift).state_dict(), out / "hift.pt")
    return cfg


def model_config(model_dir: Path) -> ModelConfig:
    """The config of the model in `model_dir` (any family: the tiny fixture for a CPU check, or `make_model DIR
    --family cosyvoice3 --size full`), else a CosyVoice2 codec with random full-size weights written there."""
    from light_tts.errors import ModelDirError
    from light_tts.families import family_of

    try:
        return family_of(model_dir).load_model_config(model_dir)
    except ModelDirError:
        return random_model_dir(model_dir)


def make_prompt(seed: int, num_tokens: int = PROMPT_TOKENS) -> Prompt:
    g = np.random.default_rng(seed)
    return Prompt(
        np.zeros(4, np.int32),
        g.integers(0, 6561, num_tokens).astype(np.int32),
        g.standard_normal(192).astype(np.float32),
        (g.standard_normal((2 * num_tokens, 80)) - 5).astype(np.float32),
    )


def sync(device: torch.device | str = "cuda") -> float:
    """Waits for the device (a no-op on the CPU) and returns the time."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def make_engine(
    cfg: ModelConfig,
    dtype: str,
    kv: str | None,
    graphs: bool,
    num_pages: int | None = None,
    max_pass_tokens: int = 8192,
    max_batch_size: int = 256,
    device: str = "cuda",
    variant: str = "new",
) -> DecodeEngine:
    limits = EngineLimits(
        max_stream_tokens=800,
        max_prompt_tokens=150,
        max_pass_tokens=max_pass_tokens,
        num_pages=num_pages,
        kv_dtype=kv,
        **VARIANTS[variant],
    )
    started = time.perf_counter()
    from light_tts.families import family_named

    engine = family_named(cfg.family).decode_engine(
        cfg,
        device=device,
        max_batch_size=max_batch_size,
        hop_policy=HopPolicy("fixed"),
        dtype=DTYPES[dtype],
        use_cuda_graph=graphs,
        limits=limits,
    )
    # lockstep throughput: every ready chunk runs (no deadline deferral: the bench has no listeners)
    engine.sched_cfg = SchedulerConfig(engine.sched_cfg.max_rows, engine.sched_cfg.max_tokens, fill_horizon_s=1e9)
    memory = f", {torch.cuda.memory_allocated() / 1e9:.1f} GB allocated" if engine.device.type == "cuda" else ""
    print(
        f"  engine {variant} {dtype} kv={kv} graphs={graphs}: {engine.pool.num_pages} pages, "
        f"{len(engine.runner.graphs)} flow graphs, ready in {time.perf_counter() - started:.1f} s{memory}",
        flush=True,
    )
    return engine


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.linalg.norm(a[:n] - b[:n]) / max(np.linalg.norm(b[:n]), 1e-12))


def run_stream(engine: DecodeEngine, tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """One stream (prompt 0, seed 3) given every token at once: its audio and the mel frames of its chunks."""
    mels = []
    stage = engine.hift_stage
    original = stage.vocode

    def record(jobs, outputs):
        mels.extend(job.mel[0].float().cpu().numpy().T for job in jobs)
        return original(jobs, outputs)

    stage.vocode = record  # an instance attribute shadowing the method; removed below (no reference cycle)
    engine.add_request("s", make_prompt(0), seed=3, stream=True, max_tokens=len(tokens))
    engine.push_tokens("s", tokens, True)
    audio = []
    while engine.num_active():
        for out in engine.step():
            assert out.error is None, out.error
            audio.append(out.audio)
    del stage.vocode
    return np.concatenate(audio), np.concatenate(mels).reshape(-1)


def aliased_specs(engine: DecodeEngine, rows: int, context_tokens: int) -> list[ChunkSpec]:
    """`rows` middle chunks (25 tokens + 3 lookahead) after `context_tokens` cached ones, page tables aliasing the
    pool's pages (each row reads its own pages, spread over the whole pool)."""
    num_pages, page = engine.pool.num_pages, engine.page_tokens
    ctx_pages = context_tokens // page
    g = np.random.default_rng(0)
    specs = []
    for r in range(rows):
        table = [(r * (ctx_pages + 1) + k) % num_pages for k in range(ctx_pages + 1)]
        slot = 1 + r % (engine.slots.num_slots - 2)
        specs.append(
            ChunkSpec(
                slot=slot,
                read_slot=slot,
                page_table=table,
                t0=context_tokens,
                tokens=g.integers(0, 6561, page + 3).tolist(),
                num_lookahead=3,
            )
        )
    return specs


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = sync(device)
        fn()
        times.append(sync(device) - start)
    return float(np.median(times[1:] if len(times) > 1 else times) * 1e3)


class HiFTRows:
    """`rows` steady middle chunks through the engine's HiFT (its precision and noise), in passes of at most
    HIFT_MAX_ROWS rows as the engine runs them."""

    def __init__(self, engine: DecodeEngine, rows: int):
        dev, spf, self.engine = engine.device, engine.hift.samples_per_frame, engine
        self.mel = torch.randn(rows, 80, 2 * engine.page_tokens, device=dev)
        self.state = HiFTStreamState(
            mel=torch.randn(rows, 80, MEL_CACHE_LEN, device=dev),
            source=torch.zeros(rows, 1, MEL_CACHE_LEN * spf, device=dev),
            speech=torch.zeros(rows, MEL_CACHE_LEN * spf, device=dev),
        )
        self.gens = [torch.Generator(device=dev).manual_seed(i) for i in range(rows)]
        self.keys = torch.arange(rows, device=dev), torch.full((rows,), 48000, dtype=torch.int64, device=dev)

    def __call__(self) -> list[torch.Tensor]:
        out = []
        for a in range(0, self.mel.shape[0], HIFT_MAX_ROWS):
            part = slice(a, a + HIFT_MAX_ROWS)
            s = HiFTStreamState(
                self.state.mel[part].clone(), self.state.source[part].clone(), self.state.speech[part].clone()
            )
            if self.engine.keyed_noise:
                keys = (self.keys[0][part].contiguous(), self.keys[1][part].contiguous())
                out.append(hift_stream_chunk(self.engine.hift, s, self.mel[part], False, noise_keys=keys))
            else:
                out.append(hift_stream_chunk(self.engine.hift, s, self.mel[part], False, generator=self.gens[part]))
        return out


class CausalHiFTRows:
    """CosyVoice3's HiFT on `rows` steady middle chunks (one page of mel each, after `past_pages` pages of the
    stream), through each row's window in passes of at most HIFT_MAX_ROWS rows, as its stage (dit_engine.py) runs
    them; every call starts from the same states."""

    def __init__(self, engine: DecodeEngine, rows: int, past_pages: int = 3):
        from light_tts.models.cosyvoice3.hift.streaming import new_stream, vocode

        self.engine, self.vocode = engine, vocode
        g = torch.Generator().manual_seed(0)
        frames, dev = 2 * engine.page_tokens, engine.device
        pages = [
            [torch.randn(1, 80, frames, generator=g).to(dev) - 5 for _ in range(rows)] for _ in range(past_pages + 1)
        ]
        self.states, self.mels = [new_stream(engine.hift) for _ in range(rows)], pages[-1]
        for mels in pages[:-1]:
            for a in range(0, rows, HIFT_MAX_ROWS):
                vocode(engine.hift, self.states[a : a + HIFT_MAX_ROWS], mels[a : a + HIFT_MAX_ROWS], False)

    def __call__(self) -> list[torch.Tensor]:
        from light_tts.models.cosyvoice3.hift.streaming import HiFTStream

        out = []
        for a in range(0, len(self.states), HIFT_MAX_ROWS):
            states = [HiFTStream(**vars(s)) for s in self.states[a : a + HIFT_MAX_ROWS]]  # fresh copies each call
            out += self.vocode(self.engine.hift, states, self.mels[a : a + HIFT_MAX_ROWS], False)
        return out


def hift_rows(engine: DecodeEngine, rows: int) -> Callable[[], list[torch.Tensor]]:
    """The engine's HiFT on `rows` steady middle chunks: CosyVoice2's (HiFTRows) or CosyVoice3's causal one."""
    return HiFTRows(engine, rows) if isinstance(engine.hift_stage, HiFTStage) else CausalHiFTRows(engine, rows)


def pass_times(engine: DecodeEngine, rows: int, context_tokens: int, repeats: int = 5) -> dict[str, float]:
    """ms of one flow pass of `rows` middle chunks at `context_tokens` of context, of HiFT on `rows` chunks, and of
    both overlapped as the engine overlaps them (HiFT of the previous pass on a side stream beside the flow)."""
    specs, hift, device = aliased_specs(engine, rows, context_tokens), hift_rows(engine, rows), engine.device
    out = {
        "flow_ms": median_ms(lambda: engine.runner.run(specs), device, repeats),
        "hift_ms": median_ms(hift, device, repeats),
    }
    if device.type == "cuda":
        side = torch.cuda.Stream()

        def overlapped():
            engine.runner.run(specs)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                hift()
            torch.cuda.current_stream().wait_stream(side)

        out["overlapped_ms"] = median_ms(overlapped, device, repeats)
    return out


def count_kernels(fn: Callable[[], object], device: torch.device) -> int:
    """Kernels one call of fn launches (CUDA kernels on a GPU; on the CPU, the operators it runs)."""
    fn()
    sync(device)
    activity = torch.profiler.ProfilerActivity.CUDA if device.type == "cuda" else torch.profiler.ProfilerActivity.CPU
    with torch.profiler.profile(activities=[activity]) as prof:
        fn()
        sync(device)
    kind = torch.autograd.DeviceType.CUDA if device.type == "cuda" else torch.autograd.DeviceType.CPU
    events = [e for e in prof.events() if e.device_type == kind]
    if device.type == "cpu":  # top-level operators only (an op's own calls are not launches)
        events = [e for e in events if e.cpu_parent is None]
    return len(events)


def one_chunk_spec(engine: DecodeEngine) -> ChunkSpec:
    """A middle 1-second chunk of one stream after a 5-second prompt (batch 1)."""
    return ChunkSpec(slot=1, read_slot=1, page_table=list(range(6)), t0=125, tokens=[1] * 28, num_lookahead=3)
