"""Decode process: speech tokens -> audio (token2wav, batched across requests) -> the slot's audio ring.

It serves every model of its decode group (models with identical flow and HiFT weights, placement.py) with its
family's decode engine (CosyVoice's paged flow + HiFT, Orpheus' SNAC windows; families/base.py).
A request's sentences are decoded in order: sentence k+1 enters the engine when k has finished (its tokens
wait here until then), so the audio written to the ring is already in playback order.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass, field

import numpy as np
import zmq

from light_tts.errors import error_from_kind
from light_tts.families.base import SpeechTokenFilter, filtered
from light_tts.frontend.prompt import Prompt
from light_tts.server.ipc.channels import Handlers, HttpReplies, Inbox
from light_tts.server.ipc.io_struct import AbortRequest, AudioReady, DecodeStart, RequestParams, SpeechTokenBatch
from light_tts.server.ipc.process_table import ProcessTable
from light_tts.server.ipc.shm import RequestSlots
from light_tts.server.ipc.stage_trace import completes_first_chunk, now
from light_tts.server.metrics import prometheus as metrics
from light_tts.server.runtime.process import model_on, parent_is_gone, resolve_device, set_process_title, setup_process
from light_tts.server.runtime.settings import ServerSettings
from light_tts.server.runtime.topology import PortArgs
from light_tts.server.workers.idle_engine import IdleEngine
from light_tts.server.workers.worker_common import REPORT_EVERY_S, AbortedRequests, Every, serve, step_error

LANE_POLL_MS = 2  # the latency lane's wait for a first chunk's tokens: how often the inbox is looked at
LANE_MAX_WAIT_S = 1.0  # a first chunk later than this (a busy LLM) no longer keeps the steps short


@dataclass
class SentenceTokens:
    """Tokens of a sentence that has not entered the engine yet."""

    seed: int
    max_tokens: int  # the sentence's speech-token bound (its page budget)
    token_filter: SpeechTokenFilter | None  # the family's filter between LLM and codec (one per sentence)
    tokens: list[int] = field(default_factory=list)
    is_end: bool = False


@dataclass
class DecodeRequestState:
    params: RequestParams
    voice_key: str  # the prompt voice's cache key (hex)
    prompt: Prompt  # read from the slot once, at DecodeStart
    waiting: dict[int, SentenceTokens] = field(default_factory=dict)  # sentence index -> tokens not yet in the engine
    active: int = -1  # sentence index in the engine; -1 when none
    active_filter: SpeechTokenFilter | None = None  # the active sentence's token filter
    next_sentence: int = 0
    last_sentence: int | None = None  # index of the request's final sentence, once the LLM has said so
    num_written: int = 0  # int16 samples written to the ring so far
    num_sent: int = 0  # int16 samples sent (ring or inline)
    num_tokens: int = 0  # speech tokens received, reported as the request's usage with its last audio
    audio_start: float | None = None  # when the first audio left (the listener's playback clock)
    first_chunk_tokens: int | None = None  # speech tokens of a stream's first chunk (None: non-stream)
    num_first_tokens: int = 0  # of the first sentence, received so far (the trace's decode_queued)
    started: float = field(default_factory=time.monotonic)  # its DecodeStart arrived

    def engine_id(self) -> str:
        """The engine's id of the active sentence (mapped back through DecodeWorker.active, never parsed)."""
        return f"{self.params.req_id}.{self.active}"


class DecodeWorker:
    def __init__(self, settings: ServerSettings, ports: PortArgs, rank: int, launcher_pid: int):
        self.settings, self.cfg, self.ports, self.rank = settings, settings.cfg, ports, rank
        self.launcher_pid = launcher_pid
        self.name = f"decode{rank}"
        self.plan = settings.topology.plan_of("decode", rank)
        self.log = setup_process(settings, self.name)
        self.slots = RequestSlots(settings.shm, ports.shm_prefix, ports.lock_path)
        self.processes = ProcessTable(settings.cfg, ports.shm_prefix, ports.lock_path, topology=settings.topology)
        self.ctx = zmq.Context()
        self.handlers = Handlers(
            self.name, {AbortRequest: self.on_abort, DecodeStart: self.on_start, SpeechTokenBatch: self.on_tokens}
        )
        self.inbox = Inbox(self.ctx, ports, self.processes, "decode", rank, self.handlers)
        self.http = HttpReplies(self.ctx, settings, self.processes, self.name)
        self.init_engine()
        self.eager_reported: dict[str, int] = {}
        self.reqs: dict[int, DecodeRequestState] = {}
        self.active: dict[str, DecodeRequestState] = {}  # engine request id -> its request
        self.aborted = AbortedRequests()
        self.report_clock = Every(REPORT_EVERY_S)
        self.report()  # the pool and capacity series exist before the server says it is ready, not at the first loop

    def init_engine(self) -> None:
        from light_tts.decode.engine import to_int16
        from light_tts.families import family_of

        self.to_int16 = to_int16
        device = resolve_device(self.settings, "decode", self.rank)
        set_process_title(self.name, model_on(self.settings, "decode", self.rank, device))
        # the models of a decode group have the same codec files: any member's directory serves them all
        model_dir = self.settings.model_of("decode", self.rank).model_dir
        self.family = family_of(model_dir)
        self.engine = self.family.decode_engine(
            self.family.load_model_config(model_dir), **self.settings.decode_engine_kwargs(device, self.rank)
        )
        self.idle = IdleEngine(self.engine, self.cfg.idle_release_s, self.processes, "decode", self.rank, self.log)

    def loop(self) -> None:
        while not parent_is_gone(self.launcher_pid):
            self.processes.beat("decode", self.rank)
            is_busy = self.engine.has_work()
            wake_in_s = self.engine.wake_in_s() if not self.engine.is_released else None
            # a latency lane holding early work for a first chunk looks for its tokens every 2 ms, not at once
            timeout_ms = (
                (LANE_POLL_MS if self.engine.is_holding else 0)
                if is_busy
                else 200
                if wake_in_s is None
                else min(200, int(1000 * wake_in_s))
            )
            for message in self.inbox.receive(timeout_ms, max_messages=1000):
                try:
                    self.handlers(message)
                except Exception as e:  # one bad request must not take the process down
                    self.log.error("%s failed:\n%s", type(message).__name__, traceback.format_exc())
                    if isinstance(message, DecodeStart):
                        self.http.fail(message.params.http_rank, message.params.req_id, e)
            self.engine.first_expected = self.is_first_expected()
            if self.engine.has_work():
                self.write_outputs(self.step())
            self.processes.set_load("decode", self.rank, len(self.reqs))
            self.idle.tick(has_work=bool(self.reqs) or self.engine.num_active() > 0)
            if not self.engine.is_released and (self.report_clock.due() or not is_busy):
                self.report()

    def is_first_expected(self) -> bool:
        """A stream of this process has no audio yet and its first chunk may still come soon (it started less
        than LANE_MAX_WAIT_S ago): the latency lane keeps steps short for it."""
        if self.cfg.latency_lane == "off":
            return False
        now = time.monotonic()
        return any(
            s.params.stream and s.audio_start is None and now - s.started < LANE_MAX_WAIT_S for s in self.reqs.values()
        )

    def report(self) -> None:
        rank, stats = str(self.rank), self.engine.stats
        for engine_id, reason, detail in self.engine.take_waits():  # each wait, once: why, and a count by reason
            state = self.active.get(engine_id)
            if state is not None:
                self.log.info("request %d waits for %s", state.params.req_id, detail)
                metrics.WAITS.labels("decode", reason).inc()
        metrics.QUEUE_DEPTH.labels("decode", rank).set(len(self.reqs))
        metrics.DECODE_POOL_PAGES.labels(rank, "used").set(stats.pages_used)
        metrics.DECODE_POOL_PAGES.labels(rank, "total").set(stats.pages_total)
        metrics.DECODE_POOL_PAGES.labels(rank, "cached").set(stats.pages_cached)
        metrics.DECODE_WAITING.labels(rank).set(stats.waiting_for_pages)
        metrics.DECODE_CAPACITY.labels(rank).set(self.engine.capacity_streams())
        new = stats.preemptions - self.eager_reported.get("preemptions", 0)
        if new > 0:
            metrics.DECODE_PREEMPTIONS.labels(rank).inc(new)
            self.eager_reported["preemptions"] = stats.preemptions
        self.processes.set_room("decode", self.rank, self.engine.room(), self.engine.min_slack_ms())
        for seconds in self.engine.take_step_times():
            metrics.DECODE_STEP_TIME.labels(rank).observe(seconds)
        for part, count in (("flow", stats.flow_eager), ("hift", stats.hift_eager)):
            new = count - self.eager_reported.get(part, 0)
            if new > 0:
                metrics.DECODE_EAGER.labels(rank, part).inc(new)
                self.eager_reported[part] = count

    def step(self) -> list:
        """One engine step; one that raises fails the requests in the engine (the others wait their turn)."""
        try:
            return self.engine.step()
        except Exception as e:
            self.log.error("a decode step failed; failing the requests in the engine:\n%s", traceback.format_exc())
            for state in list(self.active.values()):
                self.drop(state.params.req_id, step_error(e))
            return []

    def on_abort(self, message: AbortRequest) -> None:
        self.aborted.add(message.req_id)
        state = self.reqs.pop(message.req_id, None)
        if state is not None:
            self.stop_sentence(state)
        self.http.abort_done(message.http_rank, message.req_id)

    def on_start(self, message: DecodeStart) -> None:
        params = message.params
        if params.req_id in self.aborted:
            return
        prompt = Prompt(*self.slots.read_prompt(params.slot))
        self.idle.ensure_loaded()
        facts = self.settings.models[self.slots.model_of(params.slot)].facts
        first_chunk = self.settings.first_chunk_tokens(facts, len(prompt.speech_tokens)) if params.stream else None
        self.reqs[params.req_id] = DecodeRequestState(params, message.voice_key, prompt, first_chunk_tokens=first_chunk)
        metrics.STAGE_REQUESTS.labels("decode", str(self.rank)).inc()

    def on_tokens(self, message: SpeechTokenBatch) -> None:
        for i, req_id in enumerate(message.req_ids):
            if req_id not in self.reqs:
                continue
            try:
                self.take_tokens(
                    self.reqs[req_id],
                    message.sentence_idxs[i],
                    message.token_lists[i],
                    message.is_sentence_end[i],
                    message.is_request_end[i],
                    message.seeds[i],
                    message.max_tokens[i],
                )
            except Exception as e:
                self.log.error("request %d failed:\n%s", req_id, traceback.format_exc())
                self.drop(req_id, e)

    def take_tokens(
        self,
        state: DecodeRequestState,
        sentence: int,
        tokens: list[int],
        is_end: bool,
        is_request_end: bool,
        seed: int,
        max_tokens: int,
    ) -> None:
        if is_request_end:
            state.last_sentence = sentence
        state.num_tokens += len(tokens)
        if sentence == 0:
            before, state.num_first_tokens = state.num_first_tokens, state.num_first_tokens + len(tokens)
            if completes_first_chunk(before, state.num_first_tokens, state.first_chunk_tokens, is_end):
                self.slots.trace.stamp(state.params.slot, "decode_queued")
        if sentence == state.active:
            self.engine.push_tokens(state.engine_id(), list(filtered(tokens, state.active_filter)), is_end)
            return
        if sentence not in state.waiting:
            state.waiting[sentence] = SentenceTokens(seed, max_tokens, self.family.speech_token_filter())
        waiting = state.waiting[sentence]
        waiting.tokens.extend(filtered(tokens, waiting.token_filter))
        waiting.is_end = is_end
        if state.active < 0:
            self.start_sentence(state)

    def start_sentence(self, state: DecodeRequestState) -> None:
        """Move the next sentence's tokens into the engine, if it has begun arriving."""
        waiting = state.waiting.pop(state.next_sentence, None)
        if waiting is None:
            return
        state.active, state.next_sentence = state.next_sentence, state.next_sentence + 1
        state.active_filter = waiting.token_filter
        self.active[state.engine_id()] = state
        p = state.params
        # a later sentence continues the listener's playback: its chunks are due when the earlier audio runs out
        self.engine.add_request(
            state.engine_id(),
            state.prompt,
            waiting.seed,
            p.stream,
            p.speed,
            max_tokens=waiting.max_tokens,
            prefix_key=state.voice_key,
            audio_start=state.audio_start,
            samples_sent=state.num_sent,
            min_tokens=p.fixed_speech_tokens or 0,
        )
        self.engine.push_tokens(state.engine_id(), waiting.tokens, waiting.is_end)

    def stop_sentence(self, state: DecodeRequestState) -> None:
        if state.active >= 0:
            self.engine.abort(state.engine_id())
            self.active.pop(state.engine_id(), None)
            state.active = -1

    def write_outputs(self, outputs) -> None:
        if outputs:  # a step while requests wait (for pages, or time) may run nothing
            metrics.BATCH_SIZE.labels("decode", str(self.rank)).observe(len(outputs))
        for out in outputs:
            state = self.active.get(out.req_id)
            if state is None:
                continue
            req_id = state.params.req_id
            if out.error:  # a refusal the client is told about (413, 429, 400) is no server error
                level = logging.ERROR if out.error_kind in ("internal", "unavailable") else logging.WARNING
                self.log.log(level, "request %d failed in token2wav (%s): %s", req_id, out.error_kind, out.error)
                self.drop(req_id, error_from_kind(out.error_kind, out.error))
                continue
            is_last = out.finished and state.active == state.last_sentence
            pcm = self.to_int16(out.audio)  # little-endian on every host we run on (x86-64, aarch64)
            if state.audio_start is None and len(pcm):
                self.trace_first_audio(state.params.slot)
            if len(pcm) or is_last:
                self.send_audio(state, pcm, is_last)
                if state.audio_start is None and len(pcm):
                    state.audio_start = time.monotonic()
                state.num_sent += len(pcm)
            if out.finished:
                del self.active[out.req_id]
                state.active = -1
            if is_last:
                del self.reqs[req_id]
            elif out.finished:
                self.start_sentence(state)

    def trace_first_audio(self, slot: int) -> None:
        """The request's first audio: the step that made it (its start, flow and HiFT ends), and its send, stamped
        before the send (the HTTP worker reads the trace when the audio arrives)."""
        times, trace = self.engine.last_step_times, self.slots.trace
        for boundary, point in (("flow_started", "started"), ("flow_done", "flow_done"), ("hift_done", "hift_done")):
            if point in times:
                trace.stamp(slot, boundary, times[point])
        trace.stamp(slot, "audio_sent", now())

    def drop(self, req_id: int, error: Exception) -> None:
        """Fail one request: tell its HTTP worker and forget it here (the HTTP worker then aborts it everywhere)."""
        state = self.reqs.pop(req_id)
        self.stop_sentence(state)
        self.http.fail(state.params.http_rank, req_id, error)

    def send_audio(self, state: DecodeRequestState, pcm: np.ndarray, is_last: bool) -> None:
        """Through the ring when the reader has room, else inline (AudioRing never overwrites unread audio)."""
        slot, start, req_id = state.params.slot, state.num_written, state.params.req_id
        if is_last:  # before the message: the HTTP worker reads it once the last audio has arrived
            self.slots.a["usage_speech_tokens"][slot] = state.num_tokens
        if self.slots.audio.try_write(slot, start, pcm):
            state.num_written += len(pcm)
            message = AudioReady(req_id, start, len(pcm), None, is_last)
        else:
            message = AudioReady(req_id, start, len(pcm), pcm.tobytes(), is_last)
        self.http.send(state.params.http_rank, message)


def run_decode_process(settings: ServerSettings, ports: PortArgs, rank: int, ready_pipe) -> None:
    """Process entry (see worker_common.serve)."""
    serve(lambda: DecodeWorker(settings, ports, rank, os.getppid()), "decode", rank, ready_pipe)
