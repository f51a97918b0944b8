"""When a worker process gives its GPU back (--idle_release_s): pure CPU state machine, unit-tested with a clock.

A worker with nothing to do for `idle_s` releases its engine's device memory (graphs, caches, weights to host
memory); the next request reloads it first and waits for that (the reload's seconds are recorded). 0: never.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class IdleRelease:
    idle_s: float  # 0: off
    is_released: bool = False
    idle_since: float | None = None
    reload_seconds: list[float] = field(default_factory=list)  # each reload's duration (the first request waits)

    def should_release(self, has_work: bool, now: float) -> bool:
        """Called every loop turn: True once the worker has been idle for idle_s (the caller releases)."""
        if has_work or self.is_released or self.idle_s <= 0:
            self.idle_since = None if has_work else self.idle_since
            return False
        if self.idle_since is None:
            self.idle_since = now
        if now - self.idle_since >= self.idle_s:
            self.is_released, self.idle_since = True, None
            return True
        return False

    def needs_reload(self) -> bool:
        """Called when a request arrives: True if the engine must be reloaded first."""
        return self.is_released

    def reloaded(self, seconds: float) -> None:
        self.is_released = False
        self.reload_seconds.append(seconds)
