"""Where every process listens: ZMQ endpoints and shared-memory names, made once by the launcher.

Receivers bind their PULL endpoint; senders connect PUSH sockets to it. Every process gets the same
`PortArgs`, so nothing is rediscovered from the environment.
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from light_tts.server.config import ServerConfig


@dataclass(frozen=True)
class PortArgs:
    run_id: str  # unique per server instance; prefixes every ipc path and shared-memory name
    encode_urls: tuple[str, ...]  # one PULL per encode process: EncodeRequest, TextPiece, AbortRequest
    llm_url: str  # the LLM process: LLMRequestIn, TextTokens, AbortRequest
    decode_urls: tuple[str, ...]  # one PULL per decode process: DecodeStart, SpeechTokenBatch, AbortRequest
    http_urls: tuple[str, ...]  # one PULL per HTTP worker: AudioReady, RequestFailed, AbortDone
    shm_prefix: str  # shared-memory segments are named f"{shm_prefix}_{array}"
    lock_path: str  # flock file guarding slot claims and the voice cache across processes
    metrics_dir: str  # PROMETHEUS_MULTIPROC_DIR shared by every process

    @classmethod
    def create(cls, cfg: ServerConfig) -> "PortArgs":
        run_id = f"lighttts_{os.getpid()}_{secrets.token_hex(3)}"
        needed = cfg.encode_process_num + 1 + cfg.decode_process_num + cfg.httpserver_workers
        urls = iter(_make_urls(cfg.zmq_mode, run_id, needed))
        encode = tuple(next(urls) for _ in range(cfg.encode_process_num))
        llm = next(urls)
        decode = tuple(next(urls) for _ in range(cfg.decode_process_num))
        http = tuple(next(urls) for _ in range(cfg.httpserver_workers))
        tmp = Path(tempfile.gettempdir())
        return cls(
            run_id=run_id,
            encode_urls=encode,
            llm_url=llm,
            decode_urls=decode,
            http_urls=http,
            shm_prefix=run_id,
            lock_path=str(tmp / f"{run_id}.lock"),
            metrics_dir=str(tmp / f"{run_id}_metrics"),
        )

    def ipc_paths(self) -> list[Path]:
        """Socket files that ipc:// endpoints leave in /tmp; the launcher removes them at exit."""
        urls = (*self.encode_urls, self.llm_url, *self.decode_urls, *self.http_urls)
        return [Path(u[len("ipc://"):]) for u in urls if u.startswith("ipc://")]


def _make_urls(zmq_mode: str, run_id: str, count: int) -> list[str]:
    if zmq_mode.startswith("ipc://"):
        return [f"{zmq_mode}{run_id}_{i}" for i in range(count)]
    return [f"tcp://127.0.0.1:{port}" for port in _free_tcp_ports(count)]


def _free_tcp_ports(count: int) -> list[int]:
    """Ask the kernel for distinct free ports; all sockets stay open until every port is picked."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
