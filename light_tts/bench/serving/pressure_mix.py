"""The pressure benchmark's pure parts (issue 20): seeded mixes of requests, and the verdict on how they ended.

A mix (make_mix) is streams and non-streams, saved and new voices, lengths from one second up to the flow-cache
pool's size and a few past it, arrivals in bursts, and streams whose client leaves part-way; it replays from its
seed. The verdict (judge) holds the server to issue 20's promises:

- every request ends with its full audio (the forced length, to the byte), a 413 `too_large` that the pool
  deserves (it can never hold the request, even alone), a 429 `overloaded` (before any audio: a stream's headers
  wait for its first chunk), or its own client leaving on purpose; anything else is **lost** (a 5xx, a time-out,
  a transfer cut, audio short of its length);
- no stream that got its 200 is cut (`cut_after_200`, part of the lost);
- what was accepted is what the request deserved (`mismatched` otherwise: a 413 for a request that fits, say).

light_tts.bench.pressure sends the mixes and checks the server's gauges; test/e2e/test_pressure.py runs one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from light_tts.bench.serving.player import SAMPLE_RATE, percentile
from light_tts.bench.serving.stream_stats import COSYVOICE_TOKEN_RATE

BYTES_PER_TOKEN = 2 * SAMPLE_RATE // COSYVOICE_TOKEN_RATE  # int16 samples of one CosyVoice speech token
PAGE_TOKENS = 25  # speech tokens of one flow-cache page (one second of audio)
PROMPT_SECONDS = 2.0  # the voices' prompt audio
PROMPT_TOKENS = int(PROMPT_SECONDS * 25)
ACCEPTED = ("ok", "client_left", "too_large", "overloaded")  # how a request may end; anything else is lost


@dataclass(frozen=True)
class Job:
    index: int
    is_stream: bool
    voice: int  # >= 0: saved voice k (named by its id); -1: a voice never seen (its own prompt bytes)
    tokens: int  # fixed_speech_tokens: the audio's exact length
    at_s: float  # when it is sent, from the start of the mix
    leave_after_bytes: int | None = None  # a stream whose client leaves once it has this much audio


@dataclass
class Outcome:
    index: int
    status: int | None = None
    kind: str = ""  # ok, client_left, an error kind (too_large, overloaded, timeout, ...), short, cut or transport
    audio_bytes: int = 0
    first_audio_s: float | None = None
    end_s: float = 0.0  # from sending it to its end (its error, its last byte, or its client leaving)
    error: str = ""


def pages_needed(tokens: int) -> int:
    """Flow-cache pages of the prompt and `tokens` speech tokens."""
    return -(-(PROMPT_TOKENS + tokens) // PAGE_TOKENS)


def expected(job: Job, pool_pages: int) -> str:
    """ok, too_large (the pool can never hold it, even alone) or client_left."""
    if pages_needed(job.tokens) > pool_pages:
        return "too_large"
    return "client_left" if job.leave_after_bytes is not None else "ok"


def make_mix(
    seed: int, num_jobs: int, pool_pages: int, num_saved: int, max_burst: int = 5, gap_s: float = 1.5
) -> list[Job]:
    """Bursts of 1..max_burst requests at once, up to gap_s apart; a quarter non-stream; half new voices; lengths
    from one second up to the pool's size, mostly short, one in 12 past it (two pages clear of the boundary either
    way: the prompt's exact token count is the server's); one stream in eight leaves part-way."""
    rng = random.Random(seed)
    top = max(1, pool_pages - pages_needed(0) - 2)  # seconds of the longest request that fits
    jobs: list[Job] = []
    at = 0.0
    while len(jobs) < num_jobs:
        for _ in range(min(rng.randint(1, max_burst), num_jobs - len(jobs))):
            is_stream = rng.random() < 0.75
            if rng.random() < 1 / 12:
                tokens = (pool_pages + 2 + rng.randint(0, 20)) * PAGE_TOKENS
            else:
                tokens = int(PAGE_TOKENS * (1 + (top - 1) * rng.random() ** 3))
            voice = rng.randrange(num_saved) if num_saved and rng.random() < 0.5 else -1
            leave = None
            if is_stream and tokens >= 2 * PAGE_TOKENS and rng.random() < 0.125:
                leave = int(tokens * BYTES_PER_TOKEN * rng.uniform(0.2, 0.6)) // 2 * 2
            jobs.append(Job(len(jobs), is_stream, voice, tokens, round(at, 3), leave))
        at += rng.uniform(0.0, gap_s)
    return jobs


def judge(jobs: list[Job], outcomes: list[Outcome], pool_pages: int) -> dict:
    """A mix's verdict: lost, cut_after_200 and mismatched list request indices (all empty when it passed); a
    429 is never a mismatch (whether one comes depends on the load)."""
    lost = [o.index for o in outcomes if o.kind not in ACCEPTED]
    cut = [o.index for job, o in zip(jobs, outcomes) if job.is_stream and o.status == 200 and o.kind not in ACCEPTED]
    mismatched = [
        o.index
        for job, o in zip(jobs, outcomes)
        if o.kind in ACCEPTED and o.kind != "overloaded" and o.kind != expected(job, pool_pages)
    ]
    by_outcome: dict[str, int] = {}
    for o in outcomes:
        by_outcome[o.kind] = by_outcome.get(o.kind, 0) + 1
    return {
        "requests": len(outcomes),
        "by_outcome": by_outcome,
        "lost": lost,
        "cut_after_200": cut,
        "mismatched": mismatched,
    }


def signature(outcomes: list[Outcome]) -> list[tuple[int, str, int]]:
    """What must repeat when a mix runs again: each request's outcome and, for full audio, its length (a client
    that leaves stops at a length of its own choosing)."""
    return [(o.index, o.kind, o.audio_bytes if o.kind == "ok" else 0) for o in outcomes]


def latencies(jobs: list[Job], outcomes: list[Outcome]) -> dict:
    """First audio of the streams that got all of theirs, and the end of every request: p50, p95 and the
    longest, in seconds."""
    first = [o.first_audio_s for j, o in zip(jobs, outcomes) if j.is_stream and o.kind == "ok" and o.first_audio_s]
    ends = [o.end_s for o in outcomes]
    return {
        "first_audio_p50_s": percentile(first, 50),
        "first_audio_p95_s": percentile(first, 95),
        "end_p50_s": percentile(ends, 50),
        "end_p95_s": percentile(ends, 95),
        "max_end_s": max(ends, default=None),
    }
