"""The listener model of the capacity benchmark: a real-time player fed by a stream's chunk arrivals.

Pure functions over arrival times (no I/O, no clock), so that stall counting is unit-tested on synthetic
schedules. Playback starts when the first chunk arrives and consumes SAMPLE_RATE samples per second of wall
time; a chunk that arrives after the buffer ran dry is a stall, and the listener hears silence from the moment
the buffer ran dry until that chunk arrived.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

SAMPLE_RATE = 24000  # the server's PCM: mono int16 at 24 kHz
BYTES_PER_SAMPLE = 2


@dataclass
class Playback:
    """What one stream's listener experienced. Times in seconds since the request was sent."""

    ttfa_s: float | None  # first audio byte; None: no audio arrived
    audio_s: float  # audio received
    stalls: int  # chunks that arrived after the buffer ran dry
    stall_s: float  # silence heard between the first chunk and the last one (sum over stalls)
    slack_s: list[float] = field(default_factory=list)  # per chunk after the first: buffered audio left on arrival
    played_until_s: float | None = None  # when the last sample finishes playing

    @property
    def min_slack_s(self) -> float | None:
        return min(self.slack_s) if self.slack_s else None


def samples_per_chunk(chunk_bytes: list[int]) -> list[int]:
    """Whole samples completed by each network read: a read may end inside a 2-byte sample, which then counts
    for the read that completes it."""
    total, done, out = 0, 0, []
    for n in chunk_bytes:
        total += n
        out.append(total // BYTES_PER_SAMPLE - done)
        done = total // BYTES_PER_SAMPLE
    return out


def play(arrival_s: list[float], num_samples: list[int], sample_rate: int = SAMPLE_RATE) -> Playback:
    """Simulate the player over chunks that arrived at `arrival_s` (non-decreasing, since the request was sent)
    holding `num_samples` each. Slack of a chunk = when the buffer would run dry without it, minus its arrival:
    negative slack is a stall of that many seconds."""
    assert len(arrival_s) == len(num_samples)
    chunks = [(t, n) for t, n in zip(arrival_s, num_samples) if n > 0]
    if not chunks:
        return Playback(ttfa_s=None, audio_s=0.0, stalls=0, stall_s=0.0)
    first_s, first_n = chunks[0]
    dry_at = first_s + first_n / sample_rate  # when the buffer runs out of audio
    stalls, stall_s, slack = 0, 0.0, []
    for t, n in chunks[1:]:
        slack.append(dry_at - t)
        if t > dry_at:
            stalls += 1
            stall_s += t - dry_at
            dry_at = t
        dry_at += n / sample_rate
    total = sum(n for _, n in chunks)
    return Playback(
        ttfa_s=first_s,
        audio_s=total / sample_rate,
        stalls=stalls,
        stall_s=stall_s,
        slack_s=slack,
        played_until_s=dry_at,
    )


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = q / 100 * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def is_new_voice(index: int, fraction: float) -> bool:
    """Whether request `index` of a run uses a never-seen voice: exactly round-down(n x fraction) of the first n
    requests do, spread evenly, so a mix is the same at every level and in every repetition."""
    return math.floor((index + 1) * fraction) > math.floor(index * fraction)


def poisson_arrivals(rate: float, duration_s: float, rng: random.Random) -> list[float]:
    """Send times in [0, duration_s) of a Poisson process of `rate` arrivals per second (exponential gaps)."""
    times, t = [], rng.expovariate(rate)
    while t < duration_s:
        times.append(t)
        t += rng.expovariate(rate)
    return times
