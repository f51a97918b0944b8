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

from light_tts.errors import LightTTSError, OverloadedError, RequestError, RequestTimeoutError, WorkerDiedError
from light_tts.server.config import ServerConfig
from light_tts.server.io_struct import (AbortDone, AbortRequest, AudioReady, EncodeRequest, RequestFailed,
                                        RequestParams, TextPiece)
from light_tts.server.shm import AUDIO_RING_SAMPLES, ProcessTable, RequestSlots
from light_tts.server.topology import PortArgs
from light_tts.server.voice_cache import VoiceCache

log = logging.getLogger("light_tts.http")
SAMPLE_RATE = 24000
WATCHDOG_INTERVAL_S = 0.2
ABORT_ACK_TIMEOUT_S = 60.0  # a stage this late to confirm an abort is stuck; the slot is freed regardless
END = None  # queued after the last audio chunk


class StageError(LightTTSError):
    """An error reported by a stage process, carrying the kind and status that stage gave it."""

    def __init__(self, message: str, kind: str, http_status: int):
        super().__init__(message)
        self.kind, self.http_status = kind, http_status


@dataclass
class RequestHandle:
    req_id: int
    slot: int
    encode_rank: int
    arrival: float
    events: asyncio.Queue = field(default_factory=asyncio.Queue)  # bytes | END | LightTTSError
    num_samples: int = 0
    first_audio_at: float | None = None
    is_done: bool = False  # the last audio arrived: every stage has already let go of the request

    @property
    def audio_seconds(self) -> float:
        return self.num_samples / SAMPLE_RATE


class HttpServerManager:
    def __init__(self, cfg: ServerConfig, ports: PortArgs, http_rank: int):
        self.cfg, self.ports, self.http_rank = cfg, ports, http_rank
        self.slots = RequestSlots(cfg, ports.shm_prefix, ports.lock_path)
        self.processes = ProcessTable(cfg, ports.shm_prefix)
        self.voices = VoiceCache(cfg, ports.shm_prefix, ports.lock_path)
        self.reqs: dict[int, RequestHandle] = {}
        self.pending_acks: dict[int, tuple[int, int, float]] = {}  # req_id -> (slot, stages yet to confirm, since)
        self.next_encode_rank = 0
        self.tasks: list[asyncio.Task] = []
        self.failed: set[int] = set()  # requests already told that a worker died

    async def start(self) -> None:
        """Bind this worker's reply endpoint and connect to every stage; must run on the serving event loop."""
        self.ctx = zmq.asyncio.Context()
        self.send_ctx = zmq.Context()
        self.replies = self.ctx.socket(zmq.PULL)
        self.replies.bind(self.ports.http_urls[self.http_rank])
        self.to_encode = [self._push(url) for url in self.ports.encode_urls]
        self.to_llm = self._push(self.ports.llm_url)
        self.to_decode = [self._push(url) for url in self.ports.decode_urls]
        self.tasks = [asyncio.create_task(self.reply_loop()), asyncio.create_task(self.watchdog_loop())]
        self.processes.set("http", self.http_rank, pid=os.getpid(), state=ProcessTable.READY)

    def _push(self, url: str) -> zmq.Socket:
        """Sends are synchronous: a small message to a PUSH socket never waits in practice, and a cancelled
        handler (client gone) can still send its abort from a `finally` without awaiting."""
        s = self.send_ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(url)
        return s

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.ctx.destroy(linger=0)
        self.send_ctx.destroy(linger=0)

    def is_ready(self) -> bool:
        return self.processes.all_backends_ready()

    def submit(self, tts_text: str, prompt_text: str, prompt_wav: bytes, *, stream: bool, speed: float,
               seed: int | None, is_bistream: bool = False) -> RequestHandle:
        """Claim a slot and start the request; raises OverloadedError (429) at once when none is free."""
        if self.processes.dead_backends():
            raise WorkerDiedError("a worker process died; the server is shutting down")
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
        handle = RequestHandle(req_id, slot, rank, time.monotonic())
        self.reqs[req_id] = handle
        seed = secrets.randbits(31) if seed is None else seed
        params = RequestParams(req_id, slot, self.http_rank, stream, speed, seed)
        self.to_encode[rank].send_pyobj(EncodeRequest(params, is_bistream))
        return handle

    def send_text(self, handle: RequestHandle, text: str, is_last: bool) -> None:
        """Bistream: the next piece of text (pieces go to the same encode process, so they stay in order)."""
        self.to_encode[handle.encode_rank].send_pyobj(TextPiece(handle.req_id, text, is_last))

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
        for socket in (self.to_encode[handle.encode_rank], self.to_llm, *self.to_decode):
            socket.send_pyobj(abort)

    async def reply_loop(self) -> None:
        while True:
            message = await self.replies.recv_pyobj()
            try:
                self._on_reply(message)
            except Exception:  # never let one bad message stop the loop every request waits on
                log.exception("reply %r could not be handled", type(message).__name__)

    def _on_reply(self, message) -> None:
        if isinstance(message, AbortDone):
            self._on_abort_done(message.req_id)
            return
        handle = self.reqs.get(message.req_id)
        if handle is None:
            return  # the request already ended here; its late messages are dropped
        if isinstance(message, AudioReady):
            pcm = message.pcm if message.pcm is not None else self._read_ring(handle.slot, message)
            handle.num_samples += message.num_samples
            if message.num_samples:
                handle.events.put_nowait(pcm)
            if message.is_last:
                handle.is_done = True
                handle.events.put_nowait(END)
        elif isinstance(message, RequestFailed):
            handle.events.put_nowait(StageError(message.message, message.kind, message.http_status))

    def _read_ring(self, slot: int, message: AudioReady) -> bytes:
        """Copy the chunk out of the ring and tell the decoder it may be overwritten."""
        ring, n = self.slots.a["audio"][slot], message.num_samples
        head = message.offset % AUDIO_RING_SAMPLES
        first = min(n, AUDIO_RING_SAMPLES - head)
        data = ring[head:head + first].tobytes() + ring[: n - first].tobytes()
        self.slots.a["audio_read"][slot] = message.offset + n
        return data

    def _on_abort_done(self, req_id: int) -> None:
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
