"""The ZMQ channels between processes: a process's inbox (a PULL socket it binds, decoding only its own message
types) with its dispatch table, outboxes (PUSH sockets to each peer, reconnecting when a peer restarts), and the
replies every back-end process sends to the HTTP workers."""

from __future__ import annotations

import functools
import logging
import operator
from collections.abc import Callable
from typing import Any

import msgspec
import zmq

from light_tts.errors import UnavailableError, kind_of
from light_tts.server.ipc.io_struct import AbortDone, Message, RequestFailed, decoder, encode
from light_tts.server.ipc.process_table import ProcessTable
from light_tts.server.runtime.settings import ServerSettings
from light_tts.server.runtime.topology import PortArgs

log = logging.getLogger("light_tts.wire")


class Handlers:
    """A process's dispatch table, message type -> handler. Its inbox decodes exactly these types (any other
    frame is logged and refused there); dispatching a type without a handler raises."""

    def __init__(self, owner: str, table: dict[type, Callable[[Any], None]]):
        self.owner, self.table = owner, table

    @property
    def inbox_type(self) -> Any:
        return functools.reduce(operator.or_, self.table)  # the union of the table's types

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
            message: Message = self.decoder.decode(frame)
            return message
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            log.error("%s refused a %d-byte frame that is none of its messages: %s", self.owner, len(frame), e)
            return None


class Inbox:
    """The PULL socket a process binds; it publishes the bound address in the process table (see topology)."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        ports: PortArgs,
        processes: ProcessTable,
        stage: str,
        rank: int,
        handlers: Handlers,
    ):
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

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], processes: ProcessTable, stage: str, rank: int):
        self.ctx, self.processes, self.stage, self.rank = ctx, processes, stage, rank
        self.socket: zmq.Socket[bytes] | None = None
        self.generation = 0

    def send(self, message: Message) -> None:
        if self.processes.generation(self.stage, self.rank) != self.generation:
            self._connect()
        if self.socket is None:
            raise UnavailableError(f"{self.stage}{self.rank} is not listening yet; the server is still starting")
        self.socket.send(encode(message))

    def _connect(self) -> None:
        generation, address = self.processes.address(self.stage, self.rank)
        if address is None:  # a generation is published with its address; 0 means not bound yet
            raise UnavailableError(f"{self.stage}{self.rank} is not listening yet; the server is still starting")
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


def outboxes(ctx: zmq.Context[zmq.Socket[bytes]], processes: ProcessTable, stage: str, count: int) -> list[Outbox]:
    return [Outbox(ctx, processes, stage, rank) for rank in range(count)]


class HttpReplies:
    """Outboxes to every HTTP worker; a reply goes to the worker named in the request."""

    def __init__(
        self, ctx: zmq.Context[zmq.Socket[bytes]], settings: ServerSettings, processes: ProcessTable, stage: str
    ):
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
