"""The decode engine's GPU setup, in a fixed order (nano-vllm's ModelRunner): warm up at the largest pass ->
size the flow-cache pool from the memory left -> allocate it -> capture every CUDA graph. Also the engine's
limits and its slot allocator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from light_tts.decode.flow.flow_cache import KV_DTYPES, FlowCache, pages_for_bytes
from light_tts.decode.flow.flow_inputs import Bucket
from light_tts.decode.flow.flow_runner import FlowRunner, make_buckets
from light_tts.decode.hift.hift_graph import HiFTGraphs
from light_tts.decode.page_pool import PagePool
from light_tts.models.cosyvoice2.hift.streaming import MEL_CACHE_LEN

logger = logging.getLogger(__name__)
CPU_POOL_BYTES = 384 << 20  # the pool's size on a CPU host (the tiny model's pages are ~1.5 MB)
HIFT_MAX_ROWS = 32  # rows of one HiFT pass (the engine splits larger groups: HiFT's activations grow with rows)


@dataclass(frozen=True)
class EngineLimits:
    max_stream_tokens: int = 1500  # speech tokens of one request, at most (60 s)
    max_prompt_tokens: int = 775  # prompt speech tokens, at most (30 s)
    max_pass_tokens: int = 4096  # tokens of one flow pass (the largest graph bucket)
    max_streams: int = 512  # requests holding a cache at once (each has a tail slot)
    max_prefixes: int = 128  # voice prefixes kept (each has a tail slot)
    num_pages: int | None = None  # None: sized from free memory (GPU) or CPU_POOL_BYTES
    mem_fraction: float = 0.9  # of the GPU memory free after warm-up, for the pool
    kv_dtype: str | None = None  # float16, bfloat16, float32, fp8_e4m3; None: the flow's dtype
    deadline_margin_s: float = 0.3  # a stream's chunk is due this long before its listener runs out
    reservation: str = "lazy"  # "full": a stream reserves its whole budget at admission; "lazy": chunk by chunk
    admission_wait_s: float = 5.0  # a new stream ready but not admitted for longer fails with 429
    headroom: float = 0.05  # lazy: share of the pool that admissions leave free for admitted streams to grow into
    preempt_interval_s: float = 5.0  # lazy: a stream is preempted at most once per this many seconds
    realtime_admission: bool = False  # admit streams only within the real-time capacity of the measured steps
    first_hop_tokens: int = 0  # > 0: the first streamed chunk is this many tokens (provisional); 0: upstream's
    context_window_pages: int = 0  # > 0: attention sees the prompt and the last this many generated pages
    # the hot path's variants (docs/decode-engine.md), each None: on a GPU only; False keeps today's path for A/B
    # the estimator in fused launches (fused_estimator.py): off by default, measured slower than the per-op path on
    # an H100 (batch-1 step 62.5 vs 35.7 ms, 256 rows 574 vs 401 ms: docs/performance.md); True turns it on
    fused_flow: bool | None = False
    hift_half: bool | None = None  # HiFT's convolution stack in float16 (source, STFT and iSTFT stay float32)
    keyed_noise: bool | None = None  # HiFT noise keyed by (seed, sample): the same alone or batched
    overlap_hift: bool | None = None  # middle chunks' HiFT one step later on a side stream, beside the flow
    step_target_s: float = 0.08  # with spare capacity, steps grow to about this long with early chunks
    lane_step_s: float | None = None  # latency lane (scheduler.py): early work up to this near a first chunk

    @property
    def max_stream_pages(self) -> int:
        return -(-(self.max_prompt_tokens + self.max_stream_tokens) // 25)


class SlotPool:
    """Tail slots: 0 is the zero slot (a fresh stream's context), the last is trash (graph padding writes)."""

    def __init__(self, num_slots: int):
        self.num_slots = num_slots
        self.free_slots = list(range(num_slots - 2, 0, -1))

    @property
    def num_free(self) -> int:
        return len(self.free_slots)

    def take(self) -> int:
        return self.free_slots.pop()

    def free(self, slot: int | None) -> None:
        if slot is not None and slot > 0:
            self.free_slots.append(slot)


@dataclass(frozen=True)
class FlowParts:
    """What a family's flow brings to the runtime (DecodeEngine.flow_parts): its pool geometry (page_bytes,
    slot_bytes), the pool class (shape, pages, slots, act dtype, kv dtype, device) and its packed pass (flow,
    cache, max_tokens) with build_inputs(specs, device, bucket, table_width)."""

    shape: object
    cache_cls: type
    paged_cls: type


@dataclass
class Runtime:
    cache: FlowCache  # or a family's subclass (DiTCache)
    pool: PagePool
    runner: FlowRunner
    slots: SlotPool


def build_runtime(engine, use_cuda_graph: bool) -> Runtime:
    """HiFT graphs -> warm-up -> pool sized from what is left -> flow graphs (which read the pool in place)."""
    limits, device, flow = engine.limits, engine.device, engine.flow
    parts = engine.flow_parts()
    shape = parts.shape
    act_dtype = engine.dtype
    kv_dtype = KV_DTYPES[limits.kv_dtype] if limits.kv_dtype else act_dtype
    num_slots = 2 + limits.max_streams + limits.max_prefixes
    max_tokens = limits.max_prompt_tokens + limits.max_stream_tokens
    is_cuda = device.type == "cuda"
    buckets = make_buckets(limits.max_pass_tokens, engine.max_batch_size)
    graphs = is_cuda and use_cuda_graph
    if graphs:  # HiFT's graphs first: the memory they hold is then gone before the pool is sized
        engine.capture_vocoder_graphs()
    if limits.num_pages is not None:
        num_pages = limits.num_pages
    elif not is_cuda:
        num_pages = cpu_pool_pages(shape, limits, num_slots, act_dtype, kv_dtype)
    else:
        num_pages = _pages_after_warmup(engine, parts, num_slots, max_tokens, buckets[-1], kv_dtype)
    cache = parts.cache_cls(shape, num_pages, num_slots, act_dtype, kv_dtype, device)
    runner = FlowRunner(
        parts.paged_cls(flow, cache, max_tokens, fused=is_on(limits.fused_flow, device)),
        buckets,
        limits.max_stream_pages,
        graphs,
    )
    logger.info(
        "flow-cache pool: %d pages of %.1f MB (%s keys/values), %.2f GB in all, %d slots",
        num_pages,
        shape.page_bytes(kv_dtype, act_dtype) / 1e6,
        str(kv_dtype).replace("torch.", ""),
        cache.nbytes / 1e9,
        num_slots,
    )
    if graphs:
        runner.capture_all()
    return Runtime(cache, PagePool(num_pages), runner, SlotPool(num_slots))


def cpu_pool_pages(shape, limits: EngineLimits, num_slots: int, act_dtype: torch.dtype, kv_dtype: torch.dtype) -> int:
    """Pages of a CPU host's pool: what CPU_POOL_BYTES holds beside the slots, and never fewer than the longest
    stream the limits admit (a bistream request is bounded by max_stream_tokens alone). CosyVoice3's DiT slots
    (positional-conv tails of every CFM step) take most of CPU_POOL_BYTES on their own."""
    fitting = pages_for_bytes(shape, CPU_POOL_BYTES, num_slots, act_dtype, kv_dtype)
    return max(limits.max_stream_pages, min(4096, fitting))


def is_on(option: bool | None, device: torch.device) -> bool:
    """An EngineLimits variant: as set, or (None) on a GPU only."""
    return option if option is not None else device.type == "cuda"


def capture_hift_graphs(engine, record=None) -> None:
    """CosyVoice2's HiFT graphs: middle chunks of the hop policy (their frames plus the re-vocoded overlap), with
    keyed noise or generator-drawn noise as the engine runs it. record: RowGraphs' (tests run it on the CPU)."""
    hift_graphs = HiFTGraphs(engine.hift, keyed=engine.keyed_noise, record=record)
    frames = 2 * engine.hop_policy.first + MEL_CACHE_LEN
    hift_graphs.capture(
        min(engine.max_batch_size, HIFT_MAX_ROWS), [(frames, MEL_CACHE_LEN * engine.hift.samples_per_frame)]
    )
    if engine.keyed_noise:
        engine.hift.keyed_runner = hift_graphs
    else:
        engine.hift.runner = hift_graphs


def hift_peak_pass(engine) -> None:
    """CosyVoice2's largest HiFT pass: HIFT_MAX_ROWS first chunks of the longest first hop, no overlap yet."""
    hift = engine.hift
    frames = 2 * (engine.hop_policy.first + 25) + MEL_CACHE_LEN
    with torch.inference_mode():
        hift.inference(torch.zeros(HIFT_MAX_ROWS, hift.cfg.in_channels, frames, device=engine.device))


def _pages_after_warmup(engine, parts: FlowParts, num_slots: int, max_tokens: int, largest, kv_dtype) -> int:
    """Runs the largest pass eagerly on a small pool to learn the activation peak, then sizes the pool from what
    is left: mem_fraction of the free memory, minus that peak (graph captures reuse it) and a HiFT margin. The
    largest pass is the largest bucket, or the longest utterance when that is longer: a non-stream utterance (or a
    long stream's recompute) past the largest bucket runs eagerly, alone."""
    device, act_dtype, shape = engine.device, engine.dtype, parts.shape
    largest = Bucket(max(largest.num_tokens, max_tokens), largest.num_rows)
    probe = parts.cache_cls(shape, 4, 4, act_dtype, kv_dtype, device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    FlowRunner(
        parts.paged_cls(engine.flow, probe, max_tokens, fused=is_on(engine.limits.fused_flow, device)),
        [largest],
        engine.limits.max_stream_pages,
        False,
    ).peak_pass(largest)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del probe
    torch.cuda.reset_peak_memory_stats(device)
    engine.vocoder_peak_pass()
    torch.cuda.synchronize(device)
    hift_peak = torch.cuda.max_memory_allocated(device) - before
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    budget = int(engine.limits.mem_fraction * free) - 2 * peak - 3 * hift_peak // 2
    logger.info(
        "decode warm-up: %.2f GB flow activation peak at %d tokens, %.2f GB HiFT peak at %d rows; %.1f GB free",
        peak / 1e9,
        largest.num_tokens,
        hift_peak / 1e9,
        HIFT_MAX_ROWS,
        free / 1e9,
    )
    pages = pages_for_bytes(shape, budget, num_slots, act_dtype, kv_dtype)
    if pages < 1:
        raise RuntimeError(f"no GPU memory left for the flow-cache pool ({free / 1e9:.1f} GB free)")
    return pages
