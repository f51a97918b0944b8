"""A streamed request's listener, as the HTTP worker sees it: playback starts with the first chunk and consumes
audio in real time; a chunk that arrives after the buffer ran dry is a stall. The same model as the capacity
benchmark's player (light_tts/bench/serving/player.py), measured where the audio leaves the server (network time not
included), for the stall and slack metrics."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Playback:
    sample_rate: int
    started: float | None = None  # when playback began (the first chunk's arrival, later shifted by stalls)
    samples: int = 0  # audio handed to the client so far

    def on_chunk(self, num_samples: int, now: float) -> tuple[float, float | None]:
        """A chunk of `num_samples` arrives at `now`: (seconds the listener waited in silence before it, the
        slack: how long before the playhead needed it; None for the first chunk)."""
        if self.started is None:
            self.started, self.samples = now, num_samples
            return 0.0, None
        due = self.started + self.samples / self.sample_rate
        stall = max(0.0, now - due)
        self.started += stall  # playback resumes when the chunk arrives
        self.samples += num_samples
        return stall, due - now
