"""HTTP-side request manager: one per HTTP worker process, living on its asyncio loop.

It claims a request slot, writes the inputs into it, sends the slot index to an encode process, and turns the
replies arriving on this worker's ZMQ endpoint into per-request event queues. It also owns a request's end:
a finished request frees its slot at once; any other end (error, client gone, timeout) aborts the request in
every stage first and frees the slot when all of them have confirmed, so no stage can touch a reused slot.
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

from light_tts.errors import (OverloadedError, RequestError, RequestTimeoutError, UnavailableError, WorkerDiedError,
                              error_from_kind)
from light_tts.server.io_struct import (AbortDone, AbortRequest, AudioReady, EncodeRequest, RequestFailed,
                                        RequestParams, TextPiece)
from light_tts.server.process_table import ProcessTable
from light_tts.server.settings import ServerSettings
from light_tts.server.shm import RequestSlots
from light_tts.server.topology import PortArgs
from light_tts.server.voice_cache import VoiceCache
from light_tts.server.worker_common import FrameDecoder, Handlers, Outbox, outboxes

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
    events: asyncio.Queue = field(default_factory=asyncio.Queue)  # bytes | END | LightTTSError
    num_samples: int = 0
    first_audio_at: float | None = None
    is_done: bool = False  # the last audio arrived: every stage has already let go of the request

    @property
    def audio_seconds(self) -> float:
        return self.num_samples / self.sample_rate


class HttpServerManager:
    def __init__(self, settings: ServerSettings, ports: PortArgs, http_rank: int):
        self.settings, self.cfg, self.ports, self.http_rank = settings, settings.cfg, ports, http_rank
        self.slots = RequestSlots(settings.shm, ports.shm_prefix, ports.lock_path)
        self.processes = ProcessTable(settings.cfg, ports.shm_prefix, ports.lock_path)
        self.voices = VoiceCache(settings.shm, ports.shm_prefix, ports.lock_path)
        self.reqs: dict[int, RequestHandle] = {}
        self.pending_acks: dict[int, tuple[int, int, float]] = {}  # req_id -> (slot, stages yet to confirm, since)
        self.next_encode_rank = 0
        self.tasks: list[asyncio.Task] = []
        self.failed: set[int] = set()  # requests already told that a worker died

    async def start(self) -> None:
        """Bind this worker's reply endpoint and connect to every stage; must run on the serving event loop."""
        self.ctx = zmq.asyncio.Context()
        self.handlers = Handlers(f"http{self.http_rank}", {AudioReady: self.on_audio, RequestFailed: self.on_failed,
                                                           AbortDone: self.on_abort_done})
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
        self.to_llm = Outbox(self.send_ctx, self.processes, "llm", 0)
        self.to_decode = outboxes(self.send_ctx, self.processes, "decode", cfg.decode_process_num)
        self.tasks = [asyncio.create_task(self.reply_loop()), asyncio.create_task(self.watchdog_loop())]
        self.processes.set("http", self.http_rank, pid=os.getpid(), state=ProcessTable.READY)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.ctx.destroy(linger=0)
        self.send_ctx.destroy(linger=0)

    def is_ready(self) -> bool:
        return self.processes.all_backends_ready()

    def submit(self, tts_text: str, prompt_text: str, prompt_wav: bytes, *, stream: bool, speed: float,
               seed: int | None, fixed_speech_tokens: int | None = None, is_bistream: bool = False) -> RequestHandle:
        """Claim a slot and start the request; raises OverloadedError (429) at once when none is free."""
        if self.processes.dead_backends():
            raise WorkerDiedError("a worker process died; the server is shutting down")
        if not self.is_ready():
            raise UnavailableError("the server is still loading its models; retry shortly")
        req_id = secrets.randbits(40) + 1
        slot = self.slots.claim(req_id)
        if slot is None:
            raise OverloadedError(f"all {self.slots.num_slots} request slots are busy; retry shortly")
        try:
            self.slots.write_bytes(slot, "text", tts_text.encode("utf-8"))
            self.slots.write_bytes(slot, "prompt_text", prompt_text.encode("utf-8"))
            self.slots.write_bytes(slot, "wav", prompt_wav)
        except ValueError as e:  # the HTTP checks keep inputs within the slot; this guards the slot regardless
            self.slots.release(slot, req_id)
            raise RequestError(str(e)) from None
        rank = self.next_encode_rank
        self.next_encode_rank = (rank + 1) % len(self.to_encode)
        handle = RequestHandle(req_id, slot, rank, time.monotonic(), self.settings.model.sample_rate)
        self.reqs[req_id] = handle
        seed = secrets.randbits(31) if seed is None else seed
        params = RequestParams(req_id, slot, self.http_rank, stream, speed, seed, fixed_speech_tokens)
        self.to_encode[rank].send(EncodeRequest(params, is_bistream))
        return handle

    def send_text(self, handle: RequestHandle, text: str, is_last: bool) -> None:
        """Bistream: the next piece of text (pieces go to the same encode process, so they stay in order)."""
        self.to_encode[handle.encode_rank].send(TextPiece(handle.req_id, text, is_last))

    async def next_event(self, handle: RequestHandle) -> bytes | None:
        """The next audio chunk, or None after the last one; raises the request's error or a timeout."""
        remaining = handle.arrival + self.cfg.request_timeout_s - time.monotonic()
        try:
            event = await asyncio.wait_for(handle.events.get(), timeout=max(remaining, 0.0))
        except asyncio.TimeoutError:
            raise RequestTimeoutError(f"request exceeded the {self.cfg.request_timeout_s:g} s time limit") from None
        if isinstance(event, Exception):
            raise event
        if event is not END and handle.first_audio_at is None:
            handle.first_audio_at = time.monotonic()
        return event

    def finish(self, handle: RequestHandle) -> None:
        """End a request, however it went: free the slot now, or abort everywhere and free it once confirmed."""
        if self.reqs.pop(handle.req_id, None) is None:
            return
        self.failed.discard(handle.req_id)
        if handle.is_done or self.processes.dead_backends():
            self.slots.release(handle.slot, handle.req_id)
            return
        self.pending_acks[handle.req_id] = (handle.slot, 2 + len(self.to_decode), time.monotonic())
        abort = AbortRequest(handle.req_id, self.http_rank)
        for outbox in (self.to_encode[handle.encode_rank], self.to_llm, *self.to_decode):
            outbox.send(abort)

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
        if message.num_samples:
            handle.events.put_nowait(pcm)
        if message.is_last:
            handle.is_done = True
            handle.events.put_nowait(END)

    def on_failed(self, message: RequestFailed) -> None:
        handle = self.reqs.get(message.req_id)
        if handle is not None:
            internal = message.kind == "internal"  # a bug: say where, for the logs and the bug report
            text = f"{message.stage}: {message.message}" if internal else message.message
            handle.events.put_nowait(error_from_kind(message.kind, text))

    def on_abort_done(self, message: AbortDone) -> None:
        req_id = message.req_id
        if req_id not in self.pending_acks:
            return
        slot, remaining, since = self.pending_acks[req_id]
        if remaining > 1:
            self.pending_acks[req_id] = (slot, remaining - 1, since)
            return
        del self.pending_acks[req_id]
        self.slots.release(slot, req_id)

    async def watchdog_loop(self) -> None:
        """Fails every request in flight at once when a backend died (its acks will never come, so slots are
        freed); stops this worker if the launcher is gone; frees slots whose aborts were never confirmed."""
        launcher_pid = os.getppid()
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            if os.getppid() != launcher_pid:
                log.error("the launcher is gone; stopping")
                os.kill(os.getpid(), signal.SIGTERM)
            dead = self.processes.dead_backends()
            if dead:
                self._fail_everything(", ".join(f"{stage}{rank}" for stage, rank in dead))
            now = time.monotonic()
            for req_id, (slot, remaining, since) in list(self.pending_acks.items()):
                if now - since > ABORT_ACK_TIMEOUT_S:
                    log.error("request %d: %d stage(s) never confirmed its abort; freeing slot %d", req_id,
                              remaining, slot)
                    del self.pending_acks[req_id]
                    self.slots.release(slot, req_id)

    def _fail_everything(self, names: str) -> None:
        for handle in list(self.reqs.values()):
            if handle.req_id not in self.failed:
                self.failed.add(handle.req_id)
                handle.events.put_nowait(WorkerDiedError(f"worker process {names} died"))
        for req_id, (slot, _, _) in list(self.pending_acks.items()):
            self.slots.release(slot, req_id)
        self.pending_acks.clear()
