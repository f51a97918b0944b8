"""What every backend process shares: process setup, its inbox, its outboxes, and the aborted-request memory."""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import zmq

from light_tts.server.config import ServerConfig
from light_tts.server.io_struct import AbortDone, RequestFailed
from light_tts.server.topology import PortArgs

ABORT_MEMORY_S = 300.0  # messages of an aborted request can lag behind its abort; ignore them this long


def setup_process(cfg: ServerConfig, name: str) -> logging.Logger:
    """Logging and signals of a worker process. SIGINT is the launcher's to handle (a terminal's Ctrl-C reaches
    the whole process group); the launcher stops workers with SIGTERM."""
    logging.basicConfig(level=cfg.log_level.upper(), format=f"%(asctime)s {name} %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    return logging.getLogger(f"light_tts.{name}")


def place(stage: str, rank: int, num_gpus: int) -> str:
    """GPU of a process: with several GPUs the LLM has cuda:0 to itself and decode processes spread round-robin
    over the others; with one, everything shares it. The encode stage runs on the CPU (onnxruntime picks CUDA
    itself when it can)."""
    if num_gpus == 0 or stage == "encode":
        return "cpu"
    if stage == "llm" or num_gpus == 1:
        return "cuda:0"
    return f"cuda:{1 + rank % (num_gpus - 1)}"


def resolve_device(cfg: ServerConfig, stage: str = "encode", rank: int = 0) -> str:
    """Sets the torch thread count and returns the device this process computes on (--device overrides)."""
    import torch

    torch.set_num_threads(cfg.cpu_threads)
    if cfg.device != "auto":
        return cfg.device
    return place(stage, rank, torch.cuda.device_count() if torch.cuda.is_available() else 0)


class Inbox:
    """The PULL socket a process binds; everything addressed to it arrives here, in order per sender."""

    def __init__(self, ctx: zmq.Context, url: str):
        self.socket = ctx.socket(zmq.PULL)
        self.socket.bind(url)
        self.poller = zmq.Poller()
        self.poller.register(self.socket, zmq.POLLIN)

    def receive(self, timeout_ms: int, max_messages: int) -> list[Any]:
        """Waits up to timeout_ms for the first message, then takes what is queued (at most max_messages)."""
        messages: list[Any] = []
        if not self.poller.poll(timeout_ms):
            return messages
        while len(messages) < max_messages:
            try:
                messages.append(self.socket.recv_pyobj(zmq.NOBLOCK))
            except zmq.Again:
                break
        return messages


def connect_pushes(ctx: zmq.Context, urls: tuple[str, ...]) -> list[zmq.Socket]:
    sockets = []
    for url in urls:
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(url)
        sockets.append(s)
    return sockets


class HttpReplies:
    """PUSH sockets to every HTTP worker; a reply goes to the worker named in the request."""

    def __init__(self, ctx: zmq.Context, ports: PortArgs, stage: str):
        self.sockets = connect_pushes(ctx, ports.http_urls)
        self.stage = stage

    def send(self, http_rank: int, message: Any) -> None:
        self.sockets[http_rank].send_pyobj(message)

    def fail(self, http_rank: int, req_id: int, error: Exception) -> None:
        kind, status = getattr(error, "kind", "internal"), getattr(error, "http_status", 500)
        self.send(http_rank, RequestFailed(req_id, kind, status, f"{self.stage}: {error}"))

    def abort_done(self, http_rank: int, req_id: int) -> None:
        self.send(http_rank, AbortDone(req_id, self.stage))


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

    from light_tts.server.shm import ProcessTable

    try:
        worker = make_worker()
        worker.processes.set(stage, rank, pid=os.getpid(), state=ProcessTable.READY)
    except BaseException:
        ready_pipe.send(("error", traceback.format_exc()))
        raise
    ready_pipe.send(("ready", os.getpid()))
    worker.loop()
