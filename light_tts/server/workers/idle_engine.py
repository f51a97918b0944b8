"""A worker's engine under --idle_release_s: released after the idle time, reloaded before the next request.

Shared by the LLM and decode processes (their engines have release() and reload()); the process table shows the
state (/readiness, lighttts_gpu_released) and each reload's seconds go to lighttts_gpu_reload_seconds.
"""

from __future__ import annotations

import logging
import time

from light_tts.server.metrics import prometheus as metrics
from light_tts.server.workers.idle import IdleRelease


class IdleEngine:
    def __init__(self, engine, idle_s: float, processes, stage: str, rank: int, log: logging.Logger):
        self.engine, self.processes, self.stage, self.rank, self.log = engine, processes, stage, rank, log
        self.idle = IdleRelease(idle_s)

    def tick(self, has_work: bool) -> None:
        """Every loop turn: release the engine once it has been idle long enough."""
        if self.idle.should_release(has_work, time.monotonic()):
            self.engine.release()
            self.processes.set_released(self.stage, self.rank, True)
            self.log.info("idle for %g s: device memory released", self.idle.idle_s)

    def ensure_loaded(self) -> None:
        """Before a new request: reload a released engine (the request waits for it)."""
        if not self.idle.needs_reload():
            return
        started = time.monotonic()
        self.engine.reload()
        seconds = time.monotonic() - started
        self.idle.reloaded(seconds)
        self.processes.set_released(self.stage, self.rank, False)
        metrics.GPU_RELOAD_SECONDS.labels(self.stage).observe(seconds)
        self.log.info("reloaded in %.2f s for a new request", seconds)
