"""The process table in shared memory: one row per worker process with its pid, state, load and ZMQ address.

Readiness checks, the LLM's decode dispatcher and every sender read it. A receiver binds its inbox first (the OS
picks a free TCP port, or a fresh ipc path) and then publishes the bound address in its row, so no port is ever
picked and released before use; a sender connects to whatever its peer published, and follows a restarted peer to
its new address (the row's `generation` changes with every publish).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from light_tts.server.ipc.shm import FileLock, ShmArrays
from light_tts.server.runtime.config import ServerConfig
from light_tts.server.runtime.placement import Topology

ADDRESS_BYTES = 256  # an ipc path or tcp://127.0.0.1:PORT, UTF-8
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def process_specs(num_rows: int) -> dict[str, tuple[tuple[int, ...], type]]:
    return {
        "pid": ((num_rows,), np.int64),
        "state": ((num_rows,), np.int64),
        "load": ((num_rows,), np.int64),  # requests the process holds
        # decode processes: pool pages a new stream could still be granted, and the least playback slack of their
        # streams in ms (the LLM sends a new request to the one with room and the most slack)
        "room": ((num_rows,), np.int64),
        "released": ((num_rows,), np.int64),  # 1 while the process has given its GPU back (--idle_release_s)
        "slack_ms": ((num_rows,), np.int64),
        "address": ((num_rows, ADDRESS_BYTES), np.uint8),  # the inbox's bound ZMQ address
        "address_len": ((num_rows,), np.int64),
        "generation": ((num_rows,), np.int64),  # +1 per publish; 0 = nothing published yet
        "heartbeat": ((num_rows,), np.float64),  # time.monotonic() (one clock for the host) of the last loop turn
        "device_bytes": ((num_rows,), np.int64),  # GPU memory the process's allocator holds, at its last beat
        "drain": ((2,), np.int64),  # [draining: new requests get 503; cut: in-flight requests end with 503]
    }


class ProcessTable:
    """One row per worker process; `rows` maps (stage, rank) to its row."""

    STARTING, READY, DEAD = 0, 1, 2
    STATE_NAMES = {STARTING: "starting", READY: "ready", DEAD: "dead"}

    def __init__(
        self, cfg: ServerConfig, prefix: str, lock_path: str, create: bool = False, topology: Topology | None = None
    ):
        """Rows for the processes of `topology` (settings.topology; without it: one model, as cfg says)."""
        self.rows: dict[tuple[str, int], int] = {}
        num_llm, num_decode = (
            (topology.count("llm"), topology.count("decode")) if topology else (1, cfg.decode_process_num)
        )
        counts = (
            ("encode", cfg.encode_process_num),
            ("llm", num_llm),
            ("decode", num_decode),
            ("http", cfg.httpserver_workers),
        )
        for stage, count in counts:
            for rank in range(count):
                self.rows[(stage, rank)] = len(self.rows)
        self.shm = ShmArrays(f"{prefix}_procs", process_specs(len(self.rows)), create)
        self.a = self.shm.arrays
        self.lock = FileLock(lock_path)

    def set(self, stage: str, rank: int, *, pid: int | None = None, state: int | None = None) -> None:
        row = self.rows[(stage, rank)]
        if pid is not None:
            self.a["pid"][row] = pid
        if state is not None:
            self.a["state"][row] = state

    def set_load(self, stage: str, rank: int, load: int) -> None:
        self.a["load"][self.rows[(stage, rank)]] = load

    def load(self, stage: str, rank: int) -> int:
        return int(self.a["load"][self.rows[(stage, rank)]])

    def set_released(self, stage: str, rank: int, is_released: bool) -> None:
        self.a["released"][self.rows[(stage, rank)]] = int(is_released)

    def is_released(self, stage: str, rank: int) -> bool:
        return bool(self.a["released"][self.rows[(stage, rank)]])

    def set_room(self, stage: str, rank: int, pages: int, slack_ms: int) -> None:
        row = self.rows[(stage, rank)]
        self.a["room"][row], self.a["slack_ms"][row] = pages, slack_ms

    def room(self, stage: str, rank: int) -> tuple[int, int]:
        row = self.rows[(stage, rank)]
        return int(self.a["room"][row]), int(self.a["slack_ms"][row])

    def state(self, stage: str, rank: int) -> int:
        return int(self.a["state"][self.rows[(stage, rank)]])

    def pid(self, stage: str, rank: int) -> int:
        return int(self.a["pid"][self.rows[(stage, rank)]])

    # ---- liveness ----

    def beat(self, stage: str, rank: int) -> None:
        """Every loop turn of a worker: a row whose beat is old belongs to a wedged process. Also records the GPU
        memory its allocator holds (for /metrics)."""
        row = self.rows[(stage, rank)]
        self.a["heartbeat"][row] = time.monotonic()
        self.a["device_bytes"][row] = device_memory_bytes()

    def device_bytes(self, stage: str, rank: int) -> int:
        return int(self.a["device_bytes"][self.rows[(stage, rank)]])

    def hung_backends(self, timeout_s: float) -> list[tuple[str, int]]:
        """Ready backends whose loop has not turned for timeout_s."""
        now = time.monotonic()
        return [
            key
            for key, row in self.rows.items()
            if key[0] != "http" and self.a["state"][row] == self.READY and now - self.a["heartbeat"][row] > timeout_s
        ]

    def set_draining(self, is_cut: bool = False) -> None:
        self.a["drain"][0] = 1
        if is_cut:
            self.a["drain"][1] = 1

    @property
    def is_draining(self) -> bool:
        return bool(self.a["drain"][0])

    @property
    def is_cut(self) -> bool:
        return bool(self.a["drain"][1])

    # ---- addresses ----

    def publish_address(self, stage: str, rank: int, address: str) -> None:
        data = np.frombuffer(address.encode(), dtype=np.uint8)
        if len(data) > ADDRESS_BYTES:
            raise ValueError(f"address {address!r} is longer than {ADDRESS_BYTES} bytes")
        row = self.rows[(stage, rank)]
        with self.lock.held():
            self.a["address"][row, : len(data)] = data
            self.a["address_len"][row] = len(data)
            self.a["generation"][row] += 1

    def generation(self, stage: str, rank: int) -> int:
        """Changes whenever the process publishes a new address; cheap enough to read before every send."""
        return int(self.a["generation"][self.rows[(stage, rank)]])

    def address(self, stage: str, rank: int) -> tuple[int, str | None]:
        """(generation, address), or (0, None) before the process has bound its inbox."""
        row = self.rows[(stage, rank)]
        with self.lock.held():
            generation, num = int(self.a["generation"][row]), int(self.a["address_len"][row])
            address = self.a["address"][row, :num].tobytes().decode() if generation else None
        return generation, address

    # ---- readiness ----

    def backend_states(self) -> dict[tuple[str, int], int]:
        return {key: int(self.a["state"][row]) for key, row in self.rows.items() if key[0] != "http"}

    def unready_backends(self) -> list[tuple[str, int]]:
        """Backends not READY (starting, restarting or dead), in table order."""
        return [key for key, state in self.backend_states().items() if state != self.READY]

    def all_backends_ready(self) -> bool:
        return not self.unready_backends()

    def dead_backends(self) -> list[tuple[str, int]]:
        return [key for key, state in self.backend_states().items() if state == self.DEAD]

    def claim_row(self, stage: str, pid: int) -> tuple[int, int]:
        """Give `pid` a row of `stage` that is free or whose process is gone (a restarted gunicorn worker);
        returns (rank, pid of the previous holder or 0)."""
        with self.lock.held():
            for (row_stage, rank), row in self.rows.items():
                previous = int(self.a["pid"][row])
                if row_stage == stage and (previous == 0 or not _is_alive(previous)):
                    self.a["pid"][row], self.a["state"][row] = pid, self.STARTING
                    return rank, previous
        raise RuntimeError(f"every {stage} row is held by a live process")

    def describe(self) -> dict[str, dict[str, object]]:
        """{"decode0": {"pid": ..., "state": "ready"}, ...} for /readiness."""
        return {
            f"{stage}{rank}": {
                "pid": int(self.a["pid"][row]),
                "state": self.STATE_NAMES[int(self.a["state"][row])],
                "gpu": "released" if self.a["released"][row] else "loaded",
            }
            for (stage, rank), row in self.rows.items()
        }

    def close(self) -> None:
        self.shm.close()
        self.lock.close()


def device_memory_bytes() -> int:
    """What this process's CUDA caching allocator holds (0 without CUDA; torch is not imported for this)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return 0
    return int(torch.cuda.memory_reserved())


def resident_bytes(pid: int) -> int | None:
    """Resident memory of `pid` from /proc (None when it is gone or /proc is not Linux's)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return None


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
