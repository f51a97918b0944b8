"""What the back-end process loops share: the process entry (`serve`), the aborted-request memory, and the
error a failed batched step reports. Their channels are `ipc/channels.py`, their process setup
`runtime/process.py`."""

from __future__ import annotations

import os
import time

from light_tts.errors import UnavailableError
from light_tts.server.ipc.process_table import ProcessTable

ABORT_MEMORY_S = 300.0  # messages of an aborted request can lag behind its abort; ignore them this long


def step_error(error: Exception) -> Exception:
    """What the requests of a batched step that raised are told: a GPU out-of-memory error is the server's state,
    not the request's (503, worth a retry); anything else is a bug (500)."""
    if type(error).__name__ == "OutOfMemoryError":
        return UnavailableError(f"out of GPU memory in a batched step ({error}); retry shortly")
    return error


class Every:
    """True at most once per `seconds` (the gauges a loop publishes: its steps can be a millisecond apart, and a
    gauge a few tens of milliseconds old says the same)."""

    def __init__(self, seconds: float):
        self.seconds, self.last = seconds, -float("inf")

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.seconds:
            return False
        self.last = now
        return True


REPORT_EVERY_S = 0.05  # how often the LLM and decode loops publish their gauges and room


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
