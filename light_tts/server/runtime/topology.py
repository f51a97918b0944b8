"""Where every process listens: the names of the ZMQ endpoints and shared-memory segments, made once by the launcher.

Every process gets the same `PortArgs`, so nothing is rediscovered from the environment. Receivers bind their PULL
endpoint (`bind_address`: a fresh ipc path, or a TCP port the OS picks at bind time) and publish the address they
got in the process table; senders connect to what was published (worker_common.Outbox). No port is picked first
and bound later, so no other program can take it in between.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from light_tts.server.runtime.config import ServerConfig


@dataclass(frozen=True)
class PortArgs:
    run_id: str  # unique per server instance; prefixes every ipc path and shared-memory name
    zmq_mode: str  # "ipc:///tmp/" or "tcp://"
    shm_prefix: str  # shared-memory segments are named f"{shm_prefix}_{group}_{array}"
    lock_path: str  # flock file guarding slot claims, the voice cache and the process table's addresses
    metrics_dir: str  # PROMETHEUS_MULTIPROC_DIR shared by every process

    @classmethod
    def create(cls, cfg: ServerConfig) -> PortArgs:
        run_id = f"lighttts_{os.getpid()}_{secrets.token_hex(3)}"
        tmp = Path(tempfile.gettempdir())
        return cls(
            run_id=run_id,
            zmq_mode=cfg.zmq_mode,
            shm_prefix=run_id,
            lock_path=str(tmp / f"{run_id}.lock"),
            metrics_dir=str(tmp / f"{run_id}_metrics"),
        )

    def bind_address(self, stage: str, rank: int) -> str:
        """What a receiver binds; a restarted process gets a new ipc path, like a new TCP port."""
        if self.zmq_mode.startswith("ipc://"):
            return f"{self.zmq_mode}{self.run_id}_{stage}{rank}_{secrets.token_hex(4)}"
        return "tcp://127.0.0.1:*"

    def ipc_paths(self) -> list[Path]:
        """Socket files that ipc:// endpoints leave behind; the launcher removes them at exit."""
        if not self.zmq_mode.startswith("ipc://"):
            return []
        directory = Path(self.zmq_mode[len("ipc://") :])
        return [p for p in directory.glob(f"{self.run_id}_*") if p.is_socket()]
