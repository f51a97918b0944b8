"""The decode engine of the server's decode process: speech tokens of many requests -> 24 kHz audio.

Each step picks chunks by playback deadline (scheduler.py), admits new requests by pages (page_pool.py), runs all
the chosen chunks as ONE packed flow pass over the paged cache (paged_flow.py, a CUDA graph per bucket:
flow_runner.py) and then HiFT per chunk shape, each request with its own seeded generator. Every request gets the
audio of the unbatched reference (Token2WavSession for streams, Token2Wav.offline otherwise) to float rounding.

Memory is reserved, never hoped for: the pool is allocated once, and a chunk runs only when its pages are granted
(admission.py: playing streams first, non-stream utterances next, new streams last), so a CUDA out-of-memory error
cannot come from the cache. A request larger than the whole pool fails at once (413); a stream that has sent
audio is never failed for memory. If a step raises anyway, only its requests fail; their pages and slots go back
and the engine goes on.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from light_tts.decode.engine_admission import EngineAdmission
from light_tts.decode.engine_setup import (
    EngineLimits,
    FlowParts,
    build_runtime,
    capture_hift_graphs,
    hift_peak_pass,
    is_on,
)
from light_tts.decode.flow.flow_cache import FlowCache, FlowCacheShape
from light_tts.decode.flow.flow_inputs import ChunkSpec
from light_tts.decode.flow.paged_flow import PagedFlow
from light_tts.decode.hift.hift_stage import HiFTStage
from light_tts.decode.request import DecodeRequest
from light_tts.decode.scheduler import Candidate, SchedulerConfig, StepTimeModel, schedule, urgent_before
from light_tts.decode.step_timer import StepTimer
from light_tts.frontend.prompt import Prompt
from light_tts.model_config import ModelConfig
from light_tts.models.cosyvoice2.hift.streaming import HiFTStreamState
from light_tts.token2wav import ChunkSchedule, HopPolicy, Token2Wav, first_hop_pad

logger = logging.getLogger(__name__)
LOOKAHEAD_CHECK = 3  # tokens a shared prefix must leave before the prompt's end (the lookahead conv's reach)
WAIT_POLL_S = 0.1  # a step that ran nothing while requests wait (for pages, time) is tried again this much later


@dataclass
class AudioOutput:
    req_id: str
    audio: np.ndarray  # float32, 24 kHz mono, within [-audio_limit, audio_limit]
    finished: bool
    error: str | None = None
    error_kind: str = "internal"  # a light_tts.errors kind: what the client is told (400, 413, 429, 503, 500)


@dataclass
class StepJob:
    req: DecodeRequest
    spec: ChunkSpec
    finalize: bool
    drop_frames: int  # leading output frames that are not this chunk's (the prompt's, or frames already heard)
    keep_to: int = 0  # the request's cache ends here after this chunk (t0 of the next)
    prefix_slot: int = -1  # a prefix registered by this chunk: its slot
    mel: torch.Tensor | None = None
    audio: torch.Tensor | None = None


@dataclass
class EngineStats:
    pages_total: int = 0
    pages_used: int = 0  # not free: held by streams, or by kept voice prefixes no stream uses (cached)
    pages_cached: int = 0  # kept prefixes no stream uses: evicted on demand
    waiting_for_pages: int = 0  # ready requests whose chunk could not run (pages, slot, capacity, turn)
    preemptions: int = 0
    streams_active: int = 0
    prefixes_kept: int = 0
    flow_replays: int = 0
    flow_eager: int = 0
    hift_eager: int = 0
    step_seconds: list[float] = field(default_factory=list)  # since the last take_step_times()


def to_int16(audio: np.ndarray) -> np.ndarray:
    """float audio -> int16 PCM, clipped first so that out-of-range samples saturate instead of wrapping."""
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)


class DecodeEngine(EngineAdmission):
    def __init__(
        self,
        model_cfg: ModelConfig,
        device: str | torch.device = "cpu",
        max_batch_size: int = 16,
        hop_policy: HopPolicy = HopPolicy(),
        dtype: torch.dtype = torch.float32,
        use_cuda_graph: bool = True,
        limits: EngineLimits = EngineLimits(),
        clock=time.monotonic,
    ):
        self.cfg, self.device, self.hop_policy, self.dtype = model_cfg, torch.device(device), hop_policy, dtype
        self.max_batch_size, self.limits, self.clock = max_batch_size, limits, clock
        self.t2w = self.make_token2wav(model_cfg)
        self.flow = self.t2w.flow.to(dtype)
        self.hift = self.t2w.hift  # its source phases and iSTFT stay in float32; its convs may not (limits)
        self.keyed_noise = False  # counter-based HiFT noise (make_vocoder_stage decides)
        self.hift_stage = self.make_vocoder_stage()
        self.use_cuda_graph = use_cuda_graph
        rt = build_runtime(self, use_cuda_graph)
        self.cache, self.pool, self.runner, self.slots = rt.cache, rt.pool, rt.runner, rt.slots
        self.page_tokens = self.cache.shape.page_tokens
        # a non-stream utterance keeps its pages from new streams while it waits: it gets its turn well before
        # they would be refused for the wait
        self.sched_cfg = SchedulerConfig(
            max_rows=max_batch_size,
            max_tokens=limits.max_pass_tokens,
            target_step_s=limits.step_target_s,
            lane_step_s=limits.lane_step_s,
            max_hold_s=limits.admission_wait_s / 2,
        )
        self.step_model = StepTimeModel()
        self.requests: dict[str, DecodeRequest] = {}
        self.stats = EngineStats(pages_total=self.pool.num_pages)
        self.stalled_until = -math.inf  # the last step ran nothing: step again then, or when something changes
        self.first_expected = False  # set by the caller: a stream's first chunk is on its way (latency lane)
        self.is_holding = False  # the last step left early work for the first chunk expected (latency lane)
        self.admissions = 0  # admission order
        self.waits: list[tuple[str, str, str]] = []  # (request, reason, detail) of each wait that began
        self.timer = StepTimer(self.device, clock)
        self.last_step_times: dict[str, float] = {}  # started, flow_done, hift_done of the last step that ran

    # ---- what a family's engine changes (dit_engine.py: CosyVoice3); CosyVoice2's flow and HiFT here ----

    def make_token2wav(self, model_cfg: ModelConfig) -> Token2Wav:
        return Token2Wav(model_cfg, self.device)

    def flow_parts(self) -> FlowParts:
        """The pool's geometry, its tensors and the packed pass (engine_setup.build_runtime builds them)."""
        shape = FlowCacheShape.from_config(self.cfg.flow)
        assert list(shape.tail_channels) == self.flow.decoder.estimator.tail_channels
        return FlowParts(shape, FlowCache, PagedFlow)

    def make_vocoder_stage(self) -> HiFTStage:
        """The step's mel -> audio stage (vocode, has_pending, drop): HiFT with the hot-path variants the limits
        turn on (fp16 convolutions, keyed noise, overlap with the next flow pass)."""
        if is_on(self.limits.hift_half, self.device):
            self.hift.set_conv_dtype(torch.float16)
        self.keyed_noise = is_on(self.limits.keyed_noise, self.device)
        return HiFTStage(
            self.hift, self.device, self.keyed_noise, is_on(self.limits.overlap_hift, self.device), self._fail
        )

    def new_vocoder_state(self):
        """A request's vocoder stream state before its first chunk."""
        return HiFTStreamState()

    def capture_vocoder_graphs(self) -> None:
        capture_hift_graphs(self)

    def vocoder_peak_pass(self) -> None:
        """The vocoder's largest pass (the pool is sized after it)."""
        hift_peak_pass(self)

    # ---- API of the decode process ----

    def add_request(
        self,
        req_id: str,
        prompt: Prompt,
        seed: int,
        stream: bool,
        speed: float = 1.0,
        max_tokens: int | None = None,
        prefix_key: str | None = None,
        audio_start: float | None = None,
        samples_sent: int = 0,
        min_tokens: int = 0,
    ) -> None:
        """max_tokens: the most speech tokens it can get (its page budget); min_tokens: the fewest it will get (a
        fixed length); prefix_key: its voice (streams of one voice share the prompt's first pages);
        audio_start/samples_sent: playback already under way (a later sentence of a request whose listener is
        hearing the earlier ones)."""
        p_tok = np.asarray(prompt.speech_tokens, dtype=np.int32)
        schedule_ = ChunkSchedule(
            self.hop_policy,
            first_hop_pad(len(p_tok), self.cfg.chunk_size),
            self.cfg.flow.pre_lookahead_len,
            first_hop=self.limits.first_hop_tokens or None,
        )
        gen = torch.Generator(device=self.device).manual_seed(seed)
        emb = torch.as_tensor(prompt.embedding, dtype=torch.float32, device=self.device)[None]
        req = DecodeRequest(
            req_id,
            stream,
            speed,
            schedule_,
            p_tok,
            np.asarray(prompt.mel, dtype=np.float32),
            emb,
            gen,
            min(max_tokens or self.limits.max_stream_tokens, self.limits.max_stream_tokens),
            prefix_key if stream else None,
            self.clock(),
            hift_state=self.new_vocoder_state(),
            audio_start=audio_start,
            samples_sent=samples_sent,
            seed=seed,
        )
        if stream and speed != 1.0:
            req.error = "speed change is only supported for non-stream requests"
        elif len(p_tok) > self.limits.max_prompt_tokens or req.mel_mismatch():
            req.error = f"bad prompt: {len(p_tok)} tokens, {len(req.prompt_mel)} mel frames"
        else:  # too large for the pool, known now: a stream by its bound, a non-stream utterance by its minimum
            self._check_size(req, req.max_tokens if stream else min_tokens)
        self.requests[req_id] = req
        self.stalled_until = -math.inf

    def push_tokens(self, req_id: str, tokens: list[int], is_last: bool) -> None:
        req = self.requests.get(req_id)
        if req is None:  # aborted or failed already
            return
        if len(req.schedule.tokens) + len(tokens) > req.max_tokens:
            req.error = f"more than the {req.max_tokens} speech tokens this request was admitted with"
        req.schedule.tokens.extend(tokens)
        req.is_last = req.is_last or is_last
        if not req.stream and req.error is None:  # it fails as soon as it is known not to fit, not at its end
            self._check_size(req, len(req.schedule.tokens))
        self.stalled_until = -math.inf

    def abort(self, req_id: str) -> None:
        req = self.requests.pop(req_id, None)
        if req is not None:
            self._release(req)
            self.hift_stage.drop(req_id)
            self.stalled_until = -math.inf
            self._update_stats()  # no step may follow (nothing else to run): /metrics must show the pages freed

    def has_work(self) -> bool:
        """A step would do something now. After a step that ran nothing the engine waits for tokens, an abort or
        a new request, or, while requests wait for pages or time, WAIT_POLL_S (wake_in_s)."""
        return (
            self.hift_stage.has_pending()
            or self.clock() >= self.stalled_until
            and any(r.error is not None or r.ready_chunk() is not None for r in self.requests.values())
        )

    def wake_in_s(self) -> float | None:
        """Seconds until a stalled engine should step again by itself (None: only when something arrives)."""
        return None if math.isinf(self.stalled_until) else max(0.0, self.stalled_until - self.clock())

    def take_waits(self) -> list[tuple[str, str, str]]:
        """(request, reason, detail) of each wait that began since the last call: logged once, counted by reason."""
        out, self.waits = self.waits, []
        return out

    def num_active(self) -> int:
        return len(self.requests)

    def room(self) -> int:
        """Free pages (the process table's room: the LLM prefers a decode process with some)."""
        return self.pool.num_available()

    # ---- one step ----

    @torch.inference_mode()
    def step(self) -> list[AudioOutput]:
        """The chunks the scheduler picks (first audio first, then by playback deadline) whose pages are granted
        (admission.py), as one flow pass."""
        outputs = [self._fail(r, r.error, r.error_kind) for r in list(self.requests.values()) if r.error is not None]
        now = self.clock()
        candidates, ready = [], {}
        for req in list(self.requests.values()):
            chunk = req.ready_chunk()
            if chunk is None:
                continue
            new, finalize = chunk
            if finalize and not req.schedule.tokens:  # no speech token at all (an empty sentence)
                self.requests.pop(req.req_id)
                self._release(req)
                outputs.append(AudioOutput(req.req_id, np.zeros(0, np.float32), finished=True))
                continue
            ready[req.req_id] = chunk
            req.ready_since = now if req.ready_since is None else req.ready_since
            cost = len(self._chunk_tokens(req, finalize)[0])
            candidates.append(
                Candidate(
                    req.req_id,
                    req.stream,
                    req.audio_start is None,
                    req.deadline(self.limits.deadline_margin_s),
                    cost,
                    req.arrival,
                    now - req.ready_since,
                )
            )
        self._free_slots_for(sum(1 for c in candidates if not self.requests[c.key].is_admitted))
        chosen = schedule(candidates, now, self.sched_cfg, self.step_model, self.first_expected)
        # the latency lane may leave ready early chunks for a first chunk on its way: not a stall, time moves on
        self.is_holding = self.sched_cfg.lane_step_s is not None and bool(candidates) and not chosen
        plan = self._plan(
            candidates,
            {c.key for c in chosen},
            ready,
            urgent_before(candidates, now, self.sched_cfg, self.step_model),
            now,
        )
        for key in plan.preempted:
            self._preempt(self.requests[key], now)
        for key in plan.admitted:
            self._take_slot(self.requests[key])
        outputs += self._note_waits(plan, now)
        run, chosen_keys = set(plan.run), [c.key for c in chosen]
        # in the scheduler's order; a stream it left out runs when none of its choice could (admission.py)
        keys = [k for k in chosen_keys if k in run] + [k for k in plan.run if k not in chosen_keys]
        jobs = [self._job(self.requests[k], *ready[k]) for k in keys]
        self.stats.waiting_for_pages = len(plan.waiting)
        if jobs or self.hift_stage.has_pending():
            outputs += self._run(jobs, now)
        is_moving = bool(outputs) or self.is_holding or self.hift_stage.has_pending()
        self.stalled_until = -math.inf if is_moving else (now + WAIT_POLL_S if candidates else math.inf)
        self._update_stats()
        return outputs

    def _run(self, jobs: list[StepJob], started: float) -> list[AudioOutput]:
        self.timer.start()
        try:
            mel, inputs = self.runner.run([job.spec for job in jobs]) if jobs else (None, None)
            for r, job in enumerate(jobs):
                a, n = inputs.frame_starts[r], inputs.num_frames[r]
                row = mel[a + job.drop_frames : a + n].t()[None]  # (1, 80, frames)
                if job.req.speed != 1.0:
                    row = F.interpolate(row, size=int(row.shape[2] / job.req.speed), mode="linear")
                job.mel = row.clone()
        except Exception as e:  # the whole pass failed: its requests' caches are unknown now
            logger.exception("flow pass of %d chunks failed", len(jobs))
            for job in jobs:
                self.slots.free(job.prefix_slot)
            kind = "unavailable" if isinstance(e, torch.OutOfMemoryError) else "internal"
            return [self._fail(job.req, f"{type(e).__name__}: {e}", kind) for job in jobs]
        self.timer.mark("flow_done")
        outputs = []
        for job in jobs:
            self._after_flow(job)
        done = self.hift_stage.vocode(jobs, outputs)
        outputs += [self._emit(job) for job in done if job.req.req_id in self.requests]
        self.timer.mark("hift_done")  # the audio is on the host
        self.last_step_times = self.timer.times()
        if jobs:
            self.step_model.observe(sum(len(j.spec.tokens) for j in jobs), self.clock() - started)
            self.stats.step_seconds.append(self.clock() - started)
        return outputs

    # ---- admission and chunk specs ----

    def _shared_tokens(self, req: DecodeRequest) -> int:
        """Prompt tokens a stream can take from its voice's kept prefix (0 if none is kept)."""
        return self.pool.prefix_pages(req.prefix_key) * self.page_tokens if req.prefix_key else 0

    def _prefix_pages(self, req: DecodeRequest) -> int:
        """Pages of this prompt that every stream of its voice computes alike: chunks whose lookahead stays
        within the prompt (docs/decode-engine.md)."""
        return max(0, (req.num_prompt_tokens - LOOKAHEAD_CHECK) // self.page_tokens) if req.prefix_key else 0

    def _new_pages(self, req: DecodeRequest, finalize: bool) -> int:
        tokens, la = self._chunk_tokens(req, finalize)
        return max(
            0, -(-(req.t0 + len(tokens) - la) // self.page_tokens) - len(self.pool.streams[req.req_id].page_table)
        )

    def _chunk_tokens(self, req: DecodeRequest, finalize: bool, t0: int | None = None) -> tuple[list[int], int]:
        """The next chunk's flow tokens (from the first one not cached to the chunk's end, lookahead included)
        and its number of lookahead tokens."""
        t0 = req.t0 if t0 is None else t0
        la = 0 if finalize else self.cfg.flow.pre_lookahead_len
        p, sched = req.num_prompt_tokens, req.schedule
        end = len(sched.tokens) if finalize else sched.offset + sched.hop + la
        return (req.prompt_tokens[t0:].tolist() if t0 < p else []) + sched.tokens[max(0, t0 - p) : end], la

    def _job(self, req: DecodeRequest, new: list[int], finalize: bool) -> StepJob:
        """The chunk's flow row: every token from the first one not cached (t0) to the chunk's end. Usually the
        cache ends where the audio does; after a short first hop (--first_hop_tokens) it ends at the last chunk
        boundary, so the next chunk recomputes the tokens past it and drops the frames already heard."""
        p, page, sched = req.num_prompt_tokens, self.page_tokens, req.schedule
        tokens, la = self._chunk_tokens(req, finalize)
        num_new = len(tokens) - la
        stream = self.pool.streams[req.req_id]
        need = -(-(req.t0 + num_new) // page) - len(stream.page_table)
        if need > 0:
            self.pool.allocate(req.req_id, need)
        cond = None
        if req.t0 < p:
            cond = np.zeros((2 * num_new, self.cfg.flow.output_size), np.float32)
            cond[: 2 * (p - req.t0)] = req.prompt_mel[2 * req.t0 :]
        # a streamed chunk off the page grid (a short first hop) is provisional past its last boundary
        keep_to = req.t0 + num_new if finalize else (req.t0 + num_new) // page * page
        spec = ChunkSpec(
            slot=req.slot,
            read_slot=req.read_slot,
            page_table=stream.page_table,
            t0=req.t0,
            tokens=tokens,
            num_lookahead=la,
            full_attention=not req.stream,
            cond=cond,
            saves=[(keep_to - req.t0, req.slot)] if keep_to > req.t0 else [],
            skip_pages=self._window(req),
        )
        job = StepJob(req, spec, finalize, drop_frames=2 * (p + sched.offset - req.t0), keep_to=keep_to)
        prefix_pages = self._prefix_pages(req)
        if (
            req.num_chunks == 0
            and stream.prefix is None
            and prefix_pages
            and self.slots.num_free
            and len(self.pool.prefixes) < self.limits.max_prefixes
        ):
            job.prefix_slot = self.slots.take()
            spec.saves.append((prefix_pages * page - req.t0, job.prefix_slot))
        return job

    def _window(self, req: DecodeRequest) -> tuple[int, int]:
        """Pages hidden from this chunk by --flow_context_window: generated pages before the last `window` ones
        (the prompt's pages always stay visible)."""
        window = self.limits.context_window_pages
        if not window or not req.stream:
            return 0, 0
        prompt_pages = -(-req.num_prompt_tokens // self.page_tokens)
        hi = max(prompt_pages, req.t0 // self.page_tokens - window)
        return (prompt_pages, hi) if hi > prompt_pages else (0, 0)

    def _after_flow(self, job: StepJob) -> None:
        req = job.req
        if job.keep_to > req.t0:
            req.read_slot = req.slot
        req.t0 = job.keep_to
        req.num_chunks += 1
        if not job.finalize:  # the next chunk can run while this one's audio is still being vocoded (overlap)
            req.schedule.advance()
        lo, hi = job.spec.skip_pages
        if hi > lo:  # pages that left the context window go back to the pool
            stream = self.pool.streams[req.req_id]
            shared = len(stream.page_table) - len(stream.own)
            for j in range(lo, hi):
                self.pool.drop(req.req_id, j - shared)
        if job.prefix_slot >= 0:
            entry = self.pool.register_prefix(req.req_id, req.prefix_key, self._prefix_pages(req), job.prefix_slot)
            if entry is None:  # another stream of this voice registered it in the same step
                self.slots.free(job.prefix_slot)
        if not req.stream:  # a whole utterance needs no cache afterwards
            self.pool.release(req.req_id)

    # ---- outputs ----

    def _emit(self, job: StepJob) -> AudioOutput:
        req = job.req
        audio = job.audio.float().cpu().numpy()
        if req.audio_start is None and len(audio):
            req.audio_start = self.clock()
        req.samples_sent += len(audio)
        if job.finalize:
            self.requests.pop(req.req_id, None)
            self._release(req)
        return AudioOutput(req.req_id, audio, finished=job.finalize)

    def _fail(self, req: DecodeRequest, error: str, kind: str = "internal") -> AudioOutput:
        self.requests.pop(req.req_id, None)
        self._release(req)
        self.hift_stage.drop(req.req_id)
        return AudioOutput(req.req_id, np.zeros(0, dtype=np.float32), finished=True, error=error, error_kind=kind)

    def _release(self, req: DecodeRequest) -> None:
        self.pool.release(req.req_id)
        if req.slot >= 0:
            self.slots.free(req.slot)
            req.slot = -1

    def _update_stats(self) -> None:
        s = self.stats
        s.pages_used, s.pages_cached = self.pool.num_used, self.pool.num_evictable
        s.streams_active = sum(1 for r in self.requests.values() if r.is_admitted)
        s.prefixes_kept = len(self.pool.prefixes)
        s.flow_replays, s.flow_eager = self.runner.num_replays, self.runner.num_eager
        graphs = self.hift.keyed_runner or self.hift.runner
        s.hift_eager = graphs.num_eager if graphs is not None else 0

    def release(self) -> None:
        """While idle (no request): give the device back (--idle_release_s): graphs, the page pool and its kept
        voice prefixes are dropped, the flow and HiFT weights move to host memory."""
        if self.requests:
            raise RuntimeError("release with requests in the engine")
        self.runner = self.cache = self.pool = self.slots = None
        self.hift.runner = self.hift.keyed_runner = None
        self.flow.to("cpu")
        self.hift.to("cpu")
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def reload(self) -> None:
        """Weights back on the device, then the startup order again: pool sized from free memory, graphs."""
        self.flow.to(self.device)
        self.hift.to(self.device)
        rt = build_runtime(self, self.use_cuda_graph)
        self.cache, self.pool, self.runner, self.slots = rt.cache, rt.pool, rt.runner, rt.slots
        self.stats.pages_total = self.pool.num_pages

    @property
    def is_released(self) -> bool:
        return self.pool is None

    def min_slack_ms(self) -> int:
        """The least playback slack over this engine's playing streams, in ms (a large number when none)."""
        now, margin = self.clock(), self.limits.deadline_margin_s
        slacks = [r.deadline(margin) - now for r in self.requests.values() if r.stream and r.audio_start is not None]
        return int(1000 * min(slacks)) if slacks else 1 << 40

    def take_step_times(self) -> list[float]:
        out, self.stats.step_seconds = self.stats.step_seconds, []
        return out

    def capacity_streams(self) -> int:
        """Real-time streams this engine could hold by its measured step times: one chunk of each per second."""
        tokens = self.hop_policy.first + self.cfg.flow.pre_lookahead_len
        per = self.step_model.per_token_s * tokens
        if per <= 0:
            return self.pool.num_pages
        return max(0, int((1.0 - self.limits.deadline_margin_s - self.step_model.base_s) / per))
