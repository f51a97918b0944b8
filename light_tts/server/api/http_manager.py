"""HTTP-side request manager: one per HTTP worker process, living on its asyncio loop.

It claims a request slot, writes the inputs into it (a prompt wav, or a saved voice's prompt features), sends the
slot index to an encode process, and turns the replies arriving on this worker's ZMQ endpoint into per-request
event queues. A voice upload borrows a slot the same way, for the encode process to compute its features. It
also owns a request's end: a finished request frees its slot at once; any other end (error, client gone,
timeout) aborts the request in every stage first and frees the slot when all of them have confirmed, so no
stage can touch a reused slot.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass, field

import zmq
import zmq.asyncio

from light_tts.errors import (
    OverloadedError,
    RequestError,
    RequestTimeoutError,
    TooLargeError,
    UnavailableError,
    WorkerDiedError,
    error_from_kind,
)
from light_tts.request_rules import NAMED_VOICE, VC, resolve_mode
from light_tts.server.api.boundary.http_watch import BackendWatch, PendingAborts
from light_tts.server.api.voices.voice_store import PromptFeatures, VoicePrompt
from light_tts.server.ipc import stage_trace
from light_tts.server.ipc.channels import FrameDecoder, Handlers, outboxes
from light_tts.server.ipc.io_struct import (
    AbortDone,
    AbortRequest,
    AudioReady,
    ComputeFeatures,
    EncodeRequest,
    FeaturesReady,
    RequestFailed,
    RequestParams,
    TextPiece,
)
from light_tts.server.ipc.process_table import ProcessTable
from light_tts.server.ipc.shm import CLIENT_AT_LIMIT, VOICE_KINDS, RequestSlots, client_key
from light_tts.server.ipc.voice_cache import VoiceCache, voice_cache_key
from light_tts.server.metrics import prometheus as metrics
from light_tts.server.metrics.playback import Playback
from light_tts.server.runtime.devices import pick_least_loaded
from light_tts.server.runtime.model_set import has_modes
from light_tts.server.runtime.settings import ServerSettings
from light_tts.server.runtime.topology import PortArgs

log = logging.getLogger("light_tts.http")
WATCHDOG_INTERVAL_S = 0.2
ABORT_ACK_TIMEOUT_S = 60.0  # a stage this late to confirm an abort is stuck; the slot is freed regardless
END = None  # queued after the last audio chunk


@dataclass
class RequestHandle:
    req_id: int
    slot: int
    encode_rank: int
    arrival: float
    sample_rate: int
    model: int = 0  # index into ServerSettings.models
    model_name: str = ""  # its name (the metrics' label)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)  # bytes | END | LightTTSError
    num_samples: int = 0
    first_audio_at: float | None = None
    is_done: bool = False  # the last audio arrived: every stage has already let go of the request
    playback: Playback | None = None  # streamed requests: the listener's clock (stall and slack metrics)
    voice_kind: str = "none"  # saved (no model ran for its prompt) or new, read when the first audio arrives
    mode: str = "none"  # request_rules.MODES (the metrics' and the log's label)
    is_features_job: bool = False  # a voice upload's feature computation: only the encode process holds it
    trace: dict[str, float] | None = None  # the first audio's boundaries (stage_trace), read when it arrived
    is_trace_recorded: bool = False  # its stages went into the histogram (at the first bytes written)

    @property
    def audio_seconds(self) -> float:
        return self.num_samples / self.sample_rate

    def server_timing(self) -> str:
        """The Server-Timing header value of the stages crossed so far ('' before the first audio)."""
        return stage_trace.server_timing(self.trace) if self.trace else ""


class HttpServerManager:
    def __init__(self, settings: ServerSettings, ports: PortArgs, http_rank: int):
        self.settings, self.cfg, self.ports, self.http_rank = settings, settings.cfg, ports, http_rank
        self.slots = RequestSlots(settings.shm, ports.shm_prefix, ports.lock_path)
        self.processes = ProcessTable(settings.cfg, ports.shm_prefix, ports.lock_path, topology=settings.topology)
        self.voices = VoiceCache(settings.shm, ports.shm_prefix, ports.lock_path)
        self.reqs: dict[int, RequestHandle] = {}
        self.pending_aborts = PendingAborts()
        self.backends = BackendWatch(self.processes)
        self.next_encode_rank = 0
        self.tasks: list[asyncio.Task] = []
        self.is_cut = False  # the drain timed out: every request in flight was failed

    async def start(self) -> None:
        """Bind this worker's reply endpoint and connect to every stage; must run on the serving event loop."""
        self.ctx = zmq.asyncio.Context()
        self.handlers = Handlers(
            f"http{self.http_rank}",
            {
                AudioReady: self.on_audio,
                RequestFailed: self.on_failed,
                AbortDone: self.on_abort_done,
                FeaturesReady: self.on_features_ready,
            },
        )
        self.decode_frame = FrameDecoder(f"http{self.http_rank}", self.handlers.inbox_type)
        self.replies = self.ctx.socket(zmq.PULL)
        self.replies.setsockopt(zmq.LINGER, 0)
        self.replies.bind(self.ports.bind_address("http", self.http_rank))
        self.processes.publish_address("http", self.http_rank, self.replies.getsockopt_string(zmq.LAST_ENDPOINT))
        # Sends are synchronous: a small message to a PUSH socket never waits, and a cancelled handler (client
        # gone) can still send its abort from a `finally` without awaiting.
        self.send_ctx = zmq.Context()
        cfg = self.cfg
        self.to_encode = outboxes(self.send_ctx, self.processes, "encode", cfg.encode_process_num)
        topology = self.settings.topology
        self.to_llm = outboxes(self.send_ctx, self.processes, "llm", topology.count("llm"))
        self.to_decode = outboxes(self.send_ctx, self.processes, "decode", topology.count("decode"))
        self.tasks = [asyncio.create_task(self.reply_loop()), asyncio.create_task(self.watchdog_loop())]
        self.adopt_orphans()
        self.processes.set("http", self.http_rank, pid=os.getpid(), state=ProcessTable.READY)

    def adopt_orphans(self) -> None:
        """A restarted worker: abort its dead predecessor's requests in every live stage, freeing their slots once
        all have confirmed (the usual PendingAborts path), so nothing writes into a slot after it is reused."""
        orphans = self.slots.adopt(self.http_rank)
        if not orphans:
            return
        keys = [
            *(("encode", r) for r in range(len(self.to_encode))),
            *(("llm", r) for r in range(len(self.to_llm))),
            *(("decode", r) for r in range(len(self.to_decode))),
        ]
        live = {f"{stage}{rank}" for stage, rank in keys if self.processes.state(stage, rank) == ProcessTable.READY}
        log.warning("http%d restarted: aborting the %d request(s) its predecessor left", self.http_rank, len(orphans))
        for slot, req_id in orphans:
            if not self.pending_aborts.add(req_id, slot, live, time.monotonic()):
                self.slots.release(slot, req_id)
                continue
            abort = AbortRequest(req_id, self.http_rank)
            for outbox in (*self.to_encode, *self.to_llm, *self.to_decode):
                try:
                    outbox.send(abort)
                except UnavailableError:  # not listening: it is not in `live` either
                    pass

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)  # before their sockets close under them
        self.ctx.destroy(linger=0)
        self.send_ctx.destroy(linger=0)

    def is_ready(self) -> bool:
        return self.unready_reason() is None

    def unready_reason(self) -> str | None:
        """Why new requests are refused now (503), or None."""
        p = self.processes
        if p.is_draining:
            return "the server is shutting down"
        dead = p.dead_backends()
        if dead:
            return f"worker {_names(dead)} failed" + (
                " and is restarting" if self.cfg.on_worker_failure == "restart" else "; the server is stopping"
            )
        hung = p.hung_backends(self.cfg.worker_hang_timeout_s)
        if hung:
            return f"worker {_names(hung)} has not responded for {self.cfg.worker_hang_timeout_s:g} s"
        starting = p.unready_backends()
        if starting:
            return f"worker {_names(starting)} is loading its model (starting or restarting)"
        return None

    def submit(
        self,
        tts_text: str,
        prompt_text: str | None,
        prompt_wav: bytes,
        *,
        stream: bool,
        speed: float,
        seed: int | None,
        fixed_speech_tokens: int | None = None,
        is_bistream: bool = False,
        client: str = "",
        saved_voice: VoicePrompt | None = None,
        model: int = 0,
        mode: str | None = None,
        instruction: str | None = None,
        source_wav: bytes = b"",
        received_at: float | None = None,
        parsed_at: float | None = None,
        voice: str | None = None,
    ) -> RequestHandle:
        """Claim a slot and start the request to model index `model`; raises OverloadedError (429) at once when
        none is free, or when `client` (its address) already has --max_requests_per_client requests in flight.
        With `saved_voice` its transcript and features are the prompt (`prompt_text` and `prompt_wav` are not
        used); a saved voice whose features another frontend computed comes with its audio, computed again here.
        `mode`: as request_rules.resolve_mode says (instruct with an `instruction`, cross-lingual without a
        transcript), or vc: `source_wav` spoken in the voice, no text; a model without modes (Orpheus) refuses
        both with a 400 (model_set.has_modes). `voice` is the named voice of a model without prompt audio
        (model_set.check_voice checked it). `received_at` / `parsed_at`: when the route started and finished
        reading the request (its trace's first boundaries; now when not given)."""
        parsed_at = stage_trace.now() if parsed_at is None else parsed_at
        features = None
        if saved_voice is not None:
            prompt_text, prompt_wav = saved_voice.text, saved_voice.audio or b""
            features = saved_voice.features
        if not has_modes(self.settings.models[model], mode, instruction):  # 400 for a mode asked of one without
            mode = NAMED_VOICE
        elif mode != VC:
            mode = resolve_mode(mode, instruction, prompt_text)
        handle = self.claim(
            client,
            {
                "text": tts_text.encode("utf-8"),
                "prompt_text": (prompt_text or "").encode(),
                "instruct_text": (instruction or "").encode(),
                "wav": prompt_wav,
                "source_wav": source_wav,
            },
            features,
            model,
        )
        handle.mode = mode
        if stream:
            handle.playback = Playback(handle.sample_rate)
        seed = secrets.randbits(31) if seed is None else seed
        params = RequestParams(
            handle.req_id, handle.slot, self.http_rank, stream, speed, seed, fixed_speech_tokens, mode
        )
        key = None
        if features is not None:  # the key the voice cache gives these features (voice_cache_key)
            key = voice_cache_key(self.settings.models[model].frontend_key, saved_voice.voice_key)
        trace = self.slots.trace
        trace.stamp(handle.slot, "received", parsed_at if received_at is None else received_at)
        trace.stamp(handle.slot, "parsed", parsed_at)
        trace.stamp(handle.slot, "encode_queued")  # before the send: the encode process stamps after it
        self.to_encode[handle.encode_rank].send(EncodeRequest(params, is_bistream, key, voice))
        return handle

    async def compute_features(self, audio: bytes, client: str = "", model: int = 0) -> tuple[PromptFeatures, float]:
        """A voice upload's prompt features and the audio's seconds, computed by an encode process with the frontend
        of model index `model` (one that takes prompt audio: the route checks), in a slot of its own (so an upload
        waits for a free slot like any request: 429 when none is); raises AudioError."""
        handle = self.claim(
            client,
            {"text": b"", "prompt_text": b"", "instruct_text": b"", "wav": audio, "source_wav": b""},
            model=model,
        )
        handle.is_features_job = True
        try:
            self.to_encode[handle.encode_rank].send(ComputeFeatures(handle.req_id, handle.slot, self.http_rank))
            ready = await self.next_event(handle)
            return PromptFeatures(*self.slots.read_prompt_features(handle.slot)), ready.duration_s
        finally:
            self.finish(handle)

    def claim(
        self, client: str, inputs: dict[str, bytes], features: PromptFeatures | None = None, model: int = 0
    ) -> RequestHandle:
        """A slot holding `inputs` (and a saved voice's features) for model index `model`, and the handle of its
        request."""
        reason = self.unready_reason()
        if reason is not None:
            raise UnavailableError(f"{reason}; retry shortly")
        req_id = secrets.randbits(40) + 1
        slot = self.slots.claim(req_id, client_key(client), self.cfg.max_requests_per_client, self.http_rank, model)
        if slot is None:
            raise OverloadedError(f"all {self.slots.num_slots} request slots are busy; retry shortly")
        if slot == CLIENT_AT_LIMIT:
            raise OverloadedError(
                f"this client already has {self.cfg.max_requests_per_client} requests in flight "
                f"(--max_requests_per_client); retry when one ends"
            )
        try:
            for name, data in inputs.items():
                self.slots.write_bytes(slot, name, data)
            if features is not None:
                self.slots.write_prompt_features(slot, features.speech_tokens, features.embedding, features.mel)
        except ValueError as e:  # the HTTP checks keep inputs within the slot; this guards the slot regardless
            self.slots.release(slot, req_id)
            raise RequestError(
                f"{e} (a saved voice longer than --max_prompt_seconds allows?)" if features is not None else str(e)
            ) from None
        # the encode process not busy with a turn (a new voice's prompt models take tens of ms), else in turn
        ranks = list(range(len(self.to_encode)))
        rank = pick_least_loaded(ranks, {r: self.processes.load("encode", r) for r in ranks}, self.next_encode_rank)
        self.next_encode_rank += 1
        entry = self.settings.models[model]
        handle = RequestHandle(req_id, slot, rank, time.monotonic(), entry.facts.sample_rate, model, entry.name)
        self.reqs[req_id] = handle
        return handle

    def usage(self, handle: RequestHandle) -> tuple[int, int]:
        """(text tokens of tts_text, speech tokens decoded) of a request whose last audio has arrived."""
        a = self.slots.a
        return int(a["usage_text_tokens"][handle.slot]), int(a["usage_speech_tokens"][handle.slot])

    def send_text(self, handle: RequestHandle, text: str, is_last: bool) -> None:
        """Bistream: the next piece of text (pieces go to the same encode process, so they stay in order)."""
        self.to_encode[handle.encode_rank].send(TextPiece(handle.req_id, text, is_last))

    async def next_event(self, handle: RequestHandle) -> bytes | None | FeaturesReady:
        """The next audio chunk, or None after the last one (FeaturesReady for a features job); raises the
        request's error or a timeout."""
        remaining = handle.arrival + self.cfg.request_timeout_s - time.monotonic()
        try:
            event = await asyncio.wait_for(handle.events.get(), timeout=max(remaining, 0.0))
        except asyncio.TimeoutError:
            raise RequestTimeoutError(f"request exceeded the {self.cfg.request_timeout_s:g} s time limit") from None
        if isinstance(event, Exception):
            raise event
        if isinstance(event, bytes) and handle.first_audio_at is None:
            handle.first_audio_at = time.monotonic()
        return event

    def first_bytes_written(self, handle: RequestHandle) -> None:
        """The first audio bytes went to the client: the trace is complete, its stages go into the histogram."""
        if handle.trace is None or handle.is_trace_recorded:
            return
        handle.trace["first_bytes"] = stage_trace.now()
        handle.is_trace_recorded = True
        metrics.observe_stages(stage_trace.stage_seconds(handle.trace))

    def finish(self, handle: RequestHandle) -> None:
        """End a request, however it went: free the slot now, or abort everywhere and free it once confirmed."""
        if self.reqs.pop(handle.req_id, None) is None:
            return
        stages = set() if handle.is_done else self.live_stages(handle)
        if not self.pending_aborts.add(handle.req_id, handle.slot, stages, time.monotonic()):
            self.slots.release(handle.slot, handle.req_id)
            return
        abort = AbortRequest(handle.req_id, self.http_rank)
        try:
            others = (
                [] if handle.is_features_job else [*(self.to_llm[r] for r in self.llm_ranks(handle)), *self.to_decode]
            )
            for outbox in (self.to_encode[handle.encode_rank], *others):
                outbox.send(abort)
        except zmq.ZMQError:  # this worker is stopping: its sockets are closed, the stages go down with it
            pass

    def live_stages(self, handle: RequestHandle) -> set[str]:
        """The stages that may hold the request: its encode process, its LLM replica and every decode process,
        less those not running (a failed or restarting process never saw it, or forgot it)."""
        keys = [("encode", handle.encode_rank)]
        if not handle.is_features_job:
            keys += [("llm", r) for r in self.llm_ranks(handle)]
            keys += [("decode", r) for r in range(len(self.to_decode))]
        return {f"{stage}{rank}" for stage, rank in keys if self.processes.state(stage, rank) == ProcessTable.READY}

    async def reply_loop(self) -> None:
        while True:
            message = self.decode_frame(await self.replies.recv())
            if message is None:
                continue
            try:
                self.handlers(message)
            except Exception:  # never let one bad message stop the loop every request waits on
                log.exception("reply %r could not be handled", type(message).__name__)

    def on_audio(self, message: AudioReady) -> None:
        handle = self.reqs.get(message.req_id)
        if handle is None:
            return  # the request already ended here; its late messages are dropped
        if message.pcm is not None:
            pcm = message.pcm
        else:
            pcm = self.slots.audio.read(handle.slot, message.offset, message.num_samples)
        handle.num_samples += message.num_samples
        if handle.audio_seconds > self.cfg.max_audio_seconds:  # bounds what a non-stream request holds here
            handle.events.put_nowait(
                TooLargeError(f"the request's audio passed --max_audio_seconds ({self.cfg.max_audio_seconds:g} s)")
            )
            return
        if message.num_samples:
            if handle.num_samples == message.num_samples:  # the first audio: the encode process wrote the kind
                handle.voice_kind = VOICE_KINDS[int(self.slots.a["voice_kind"][handle.slot])]
                self.slots.trace.stamp(handle.slot, "audio_received")
                handle.trace = self.slots.trace.read(handle.slot)  # every backend stamped before sending
            handle.events.put_nowait(pcm)
            if handle.playback is not None:
                stall, slack = handle.playback.on_chunk(message.num_samples, time.monotonic())
                metrics.observe_playback(stall, slack)
        if message.is_last:
            handle.is_done = True
            handle.events.put_nowait(END)

    def on_features_ready(self, message: FeaturesReady) -> None:
        handle = self.reqs.get(message.req_id)
        if handle is not None:
            handle.is_done = True  # the encode process is done with the slot
            handle.events.put_nowait(message)

    def on_failed(self, message: RequestFailed) -> None:
        handle = self.reqs.get(message.req_id)
        if handle is not None:
            internal = message.kind == "internal"  # a bug: say where, for the logs and the bug report
            text = f"{message.stage}: {message.message}" if internal else message.message
            handle.events.put_nowait(error_from_kind(message.kind, text))

    def on_abort_done(self, message: AbortDone) -> None:
        slot = self.pending_aborts.confirm(message.req_id, message.stage)
        if slot is not None:
            self.slots.release(slot, message.req_id)

    async def watchdog_loop(self) -> None:
        """Stops this worker if the launcher is gone; fails the requests in flight that a failed backend may have
        held (their aborts are then confirmed by the live stages) or when the drain on SIGTERM timed out; frees
        slots whose aborts were never confirmed."""
        launcher_pid = os.getppid()
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            if os.getppid() != launcher_pid:
                log.error("the launcher is gone; stopping")
                os.kill(os.getpid(), signal.SIGTERM)
            failed = self.backends.failed()
            if failed:
                self.fail_served_by(failed)
                for stage, rank in failed:
                    for req_id, slot in self.pending_aborts.forget_stage(f"{stage}{rank}"):
                        self.slots.release(slot, req_id)
            if self.processes.is_cut and not self.is_cut:
                self.is_cut = True
                self.fail_all(UnavailableError("the server is shutting down (the drain timed out)"))
            for req_id, slot, stages in self.pending_aborts.expired(time.monotonic(), ABORT_ACK_TIMEOUT_S):
                log.error("request %d: %s never confirmed its abort; freeing slot %d", req_id, ", ".join(stages), slot)
                self.slots.release(slot, req_id)

    def fail_all(self, error: Exception) -> None:
        for handle in self.reqs.values():
            handle.events.put_nowait(error)

    def fail_served_by(self, failed: list[tuple[str, int]]) -> None:
        """Fail the requests in flight that a failed process may have held (Topology.may_hold): an encode
        process's, all; an LLM replica's or a decode process's, those of its models that were sent to it or not
        yet to any (one may be on its way to it now)."""
        error = WorkerDiedError(f"worker process {_names(failed)} failed")
        for handle in self.reqs.values():
            if any(self.may_hold(stage, rank, handle) for stage, rank in failed):
                handle.events.put_nowait(error)

    def may_hold(self, stage: str, rank: int, handle: RequestHandle) -> bool:
        return self.settings.topology.may_hold(
            stage,
            rank,
            self.settings.model_names[handle.model],
            self.slots.llm_rank_of(handle.slot),
            self.slots.decode_rank_of(handle.slot),
        )

    def llm_ranks(self, handle: RequestHandle) -> list[int]:
        """The LLM replicas that may hold the request: the one it was sent to, or all of its model's until then."""
        rank = self.slots.llm_rank_of(handle.slot)
        return [rank] if rank >= 0 else self.settings.topology.llm_ranks_of(self.settings.model_names[handle.model])

    @property
    def num_active(self) -> int:
        return len(self.reqs)


def _names(keys: list[tuple[str, int]]) -> str:
    return ", ".join(f"{stage}{rank}" for stage, rank in keys)
