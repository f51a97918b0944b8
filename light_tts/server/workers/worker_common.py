"""What every backend process shares: process setup, its inbox and dispatch table, its outboxes, and the
aborted-request memory."""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any, Callable, Union

import msgspec
import zmq

from light_tts.errors import UnavailableError, kind_of
from light_tts.server.ipc.io_struct import AbortDone, Message, RequestFailed, decoder, encode
from light_tts.server.ipc.process_table import ProcessTable
from light_tts.server.runtime.settings import ServerSettings
from light_tts.server.runtime.topology import PortArgs

ABORT_MEMORY_S = 300.0  # messages of an aborted request can lag behind its abort; ignore them this long
log = logging.getLogger("light_tts.wire")


def set_process_title(name: str, detail: str | None = None) -> None:
    """What `ps` and /proc/<pid>/cmdline show, e.g. "lighttts: llm0 (model tiny, cuda:0)"; the log lines of the
    process carry the same name."""
    from setproctitle import setproctitle

    setproctitle(f"lighttts: {name}" + (f" ({detail})" if detail else ""))


def setup_process(settings: ServerSettings, name: str, detail: str | None = None) -> logging.Logger:
    """Title, logging and signals of a worker process. SIGINT is the launcher's to handle (a terminal's Ctrl-C
    reaches the whole process group); the launcher stops workers with SIGTERM."""
    set_process_title(name, detail)
    logging.basicConfig(level=settings.cfg.log_level.upper(),
                        format=f"%(asctime)s {name} %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    return logging.getLogger(f"light_tts.{name}")


def model_on(settings: ServerSettings, stage: str, rank: int, device: str | None = None) -> str:
    """The detail of a process title: the models it serves and its device, e.g. "model tiny, cuda:0"."""
    plan = settings.topology.plan_of(stage, rank)
    if device and device != plan.device:  # a simulated GPU (--simulate_gpus)
        device = f"{plan.device} simulated on the {device.upper()}"
    models = plan.models
    return f"model{'s' if len(models) > 1 else ''} {', '.join(models)}" + (f", {device}" if device else "")


def resolve_device(settings: ServerSettings, stage: str = "encode", rank: int = 0) -> str:
    """Sets the torch thread count and returns the device this process computes on: the topology's (placement.py,
    where --device applies; the CPU for a simulated GPU)."""
    import torch

    torch.set_num_threads(settings.cfg.cpu_threads)
    return settings.topology.compute_device(stage, rank)


class Handlers:
    """A process's dispatch table, message type -> handler. Its inbox decodes exactly these types (any other
    frame is logged and refused there); dispatching a type without a handler raises."""

    def __init__(self, owner: str, table: dict[type, Callable[[Any], None]]):
        self.owner, self.table = owner, table

    @property
    def inbox_type(self) -> Any:
        return Union[tuple(self.table)]

    def __call__(self, message: Message) -> None:
        handler = self.table.get(type(message))
        if handler is None:
            raise TypeError(f"{self.owner} has no handler for {type(message).__name__}")
        handler(message)


class FrameDecoder:
    """Decodes wire frames into the inbox's message types; a frame that is not one of them (garbage, or another
    process's message) is logged as an error and dropped: it names no request this process could fail."""

    def __init__(self, owner: str, inbox_type: Any):
        self.owner, self.decoder = owner, decoder(inbox_type)

    def __call__(self, frame: bytes) -> Message | None:
        try:
            return self.decoder.decode(frame)
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            log.error("%s refused a %d-byte frame that is none of its messages: %s", self.owner, len(frame), e)
            return None


class Inbox:
    """The PULL socket a process binds; it publishes the bound address in the process table (see topology)."""

    def __init__(self, ctx: zmq.Context, ports: PortArgs, processes: ProcessTable, stage: str, rank: int,
                 handlers: Handlers):
        self.socket = ctx.socket(zmq.PULL)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(ports.bind_address(stage, rank))
        processes.publish_address(stage, rank, self.socket.getsockopt_string(zmq.LAST_ENDPOINT))
        self.decode = FrameDecoder(f"{stage}{rank}", handlers.inbox_type)
        self.poller = zmq.Poller()
        self.poller.register(self.socket, zmq.POLLIN)

    def receive(self, timeout_ms: int, max_messages: int) -> list[Message]:
        """Waits up to timeout_ms for the first message, then takes what is queued (at most max_messages)."""
        messages: list[Message] = []
        if not self.poller.poll(timeout_ms):
            return messages
        while len(messages) < max_messages:
            try:
                frame = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            message = self.decode(frame)
            if message is not None:
                messages.append(message)
        return messages


class Outbox:
    """A PUSH socket to one receiver, connected to the address it published; it reconnects when the receiver
    publishes a new one (a restarted process). Sends never block: an unbounded queue per peer."""

    def __init__(self, ctx: zmq.Context, processes: ProcessTable, stage: str, rank: int):
        self.ctx, self.processes, self.stage, self.rank = ctx, processes, stage, rank
        self.socket: zmq.Socket | None = None
        self.generation = 0

    def send(self, message: Message) -> None:
        if self.processes.generation(self.stage, self.rank) != self.generation:
            self._connect()
        if self.socket is None:
            raise UnavailableError(f"{self.stage}{self.rank} is not listening yet; the server is still starting")
        self.socket.send(encode(message))

    def _connect(self) -> None:
        generation, address = self.processes.address(self.stage, self.rank)
        if self.socket is not None:
            self.socket.close(linger=0)
        self.socket = self.ctx.socket(zmq.PUSH)
        self.socket.setsockopt(zmq.SNDHWM, 0)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(address)
        self.generation = generation

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)


def outboxes(ctx: zmq.Context, processes: ProcessTable, stage: str, count: int) -> list[Outbox]:
    return [Outbox(ctx, processes, stage, rank) for rank in range(count)]


class HttpReplies:
    """Outboxes to every HTTP worker; a reply goes to the worker named in the request."""

    def __init__(self, ctx: zmq.Context, settings: ServerSettings, processes: ProcessTable, stage: str):
        self.outboxes = outboxes(ctx, processes, "http", settings.cfg.httpserver_workers)
        self.stage = stage

    def send(self, http_rank: int, message: Message) -> None:
        self.outboxes[http_rank].send(message)

    def fail(self, http_rank: int, req_id: int, error: BaseException) -> None:
        """A LightTTSError's message is for the client; anything else is a bug, named by its type."""
        kind = kind_of(error)
        message = str(error) if kind != "internal" else f"internal error ({type(error).__name__}: {error})"
        self.send(http_rank, RequestFailed(req_id, kind, self.stage, message))

    def abort_done(self, http_rank: int, req_id: int) -> None:
        self.send(http_rank, AbortDone(req_id, self.stage))


def step_error(error: Exception) -> Exception:
    """What the requests of a batched step that raised are told: a GPU out-of-memory error is the server's state,
    not the request's (503, worth a retry); anything else is a bug (500)."""
    if type(error).__name__ == "OutOfMemoryError":
        return UnavailableError(f"out of GPU memory in a batched step ({error}); retry shortly")
    return error


class AbortedRequests:
    """Request ids aborted recently; a stage drops any message for them without touching the slot."""

    def __init__(self):
        self.since: dict[int, float] = {}

    def add(self, req_id: int) -> None:
        now = time.monotonic()
        self.since[req_id] = now
        if len(self.since) > 4096:
            self.since = {r: t for r, t in self.since.items() if now - t < ABORT_MEMORY_S}

    def __contains__(self, req_id: int) -> bool:
        return req_id in self.since


def parent_is_gone(launcher_pid: int) -> bool:
    """A worker whose launcher died (even by SIGKILL) is re-parented; it must exit rather than linger."""
    return os.getppid() != launcher_pid


def serve(make_worker, stage: str, rank: int, ready_pipe) -> None:
    """Process entry shared by every stage: build the worker, mark it ready in the process table and tell the
    launcher (or send it the traceback), then run the worker's loop until the process ends."""
    import traceback

    try:
        worker = make_worker()
        worker.processes.beat(stage, rank)
        worker.processes.set(stage, rank, pid=os.getpid(), state=ProcessTable.READY)
    except BaseException:
        ready_pipe.send(("error", traceback.format_exc()))
        raise
    ready_pipe.send(("ready", os.getpid()))
    worker.loop()
