"""Host-clock times of the points inside one decode step (flow pass done, HiFT done), for the request trace.

On a GPU the step's work is queued and the host learns when it ran only at the step's one sync (the audio's copy
to the host); a sync after the flow pass would cost the HiFT launches their overlap with it. So each point records
a CUDA event, and once the step has synced, its host time is the step's start plus the device time from the
start event. The decode process syncs at the end of every step, so the device is idle when a step starts and the
start event runs at once: the estimates are never later than the real times. On the CPU a point is the clock.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class StepTimer:
    def __init__(self, device: torch.device, clock: Callable[[], float]):
        self.is_cuda, self.clock = device.type == "cuda", clock
        self.started = 0.0
        self.points: dict[str, float | torch.cuda.Event] = {}

    def start(self) -> None:
        self.started, self.points = self.clock(), {}
        if self.is_cuda:
            self.points["started"] = self._event()

    def mark(self, name: str) -> None:
        self.points[name] = self._event() if self.is_cuda else self.clock()

    def times(self) -> dict[str, float]:
        """Point -> host time, after the step's sync ('started' included); a point whose work is still running (a
        middle chunk's HiFT overlapped on the side stream: never a first chunk, which is vocoded at once) is left
        out."""
        out = {"started": self.started}
        start = self.points.get("started")
        for name, point in self.points.items():
            if isinstance(point, float):
                out[name] = point
            elif name != "started" and point.query():  # one still running (HiFT on the side stream) is left out
                assert isinstance(start, torch.cuda.Event)
                out[name] = self.started + start.elapsed_time(point) / 1000.0
        return out

    @staticmethod
    def _event() -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
