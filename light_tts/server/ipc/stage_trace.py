"""Where a request's first audio spends its time: one timestamp per boundary it crosses, in its request slot.

Each process stamps the boundaries it crosses into the slot's `trace` row (shared memory), on one clock:
`time.monotonic()` is CLOCK_MONOTONIC, which every process of a Linux host shares, so stamps of different
processes subtract. The HTTP worker reads the row when the first audio arrives; by then every backend stamp is
there, because each process writes its stamps before it sends the message that lets the next one go on (a ZMQ
send is a system call: the writes are visible to the process that receives the message).

Boundaries, in the order a request crosses them, and who stamps them:

| boundary | process | when |
|---|---|---|
| received | HTTP | the route's handler started (the body is still arriving) |
| parsed | HTTP | the body is read and validated |
| encode_queued | HTTP | EncodeRequest sent (a saved voice loaded, the slot claimed, the inputs written) |
| encode_started | encode | the encode process took it |
| text_done | encode | text normalised, split and tokenized |
| encode_done | encode | prompt features in the slot (voice cache, saved voice, or the two prompt models ran) |
| llm_queued | LLM | the first sentence was given to the LLM engine |
| prefill_started | LLM | the engine step that produced its first token started |
| prefill_done | LLM | that step ended |
| first_hop_out | LLM | the tokens of its first audio chunk were sent (a whole sentence for non-stream) |
| decode_queued | decode | the decode process received them |
| flow_started | decode | the decode step that made its first audio started |
| flow_done | decode | that step's flow pass ended (a CUDA event on a GPU, so no sync is added) |
| hift_done | decode | its HiFT pass ended and the audio is on the host |
| audio_sent | decode | AudioReady sent (the audio in the slot's ring) |
| audio_received | HTTP | the HTTP worker took the first audio from the ring |
| first_bytes | HTTP | the first audio bytes were written to the client |

A stage is the time between two consecutive boundaries (STAGES). Only the first audio's path is traced: a later
sentence or chunk stamps nothing (stamp_once). A boundary not crossed stays 0.0, and stages touching it are
left out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import numpy as np

BOUNDARIES = (
    "received",
    "parsed",
    "encode_queued",
    "encode_started",
    "text_done",
    "encode_done",
    "llm_queued",
    "prefill_started",
    "prefill_done",
    "first_hop_out",
    "decode_queued",
    "flow_started",
    "flow_done",
    "hift_done",
    "audio_sent",
    "audio_received",
    "first_bytes",
)
# stage name -> what it measures; stage i runs from BOUNDARIES[i] to BOUNDARIES[i + 1]
STAGE_TEXT = {
    "parse": "reading and validating the request body",
    "submit": "loading a saved voice, claiming a slot, writing the inputs",
    "encode_wait": "EncodeRequest waiting for the encode process",
    "text": "text normalisation and tokenization",
    "prompt": "prompt features (voice cache, saved voice, or the speech tokenizer and speaker model)",
    "llm_wait": "the request on its way to the LLM engine",
    "prefill_wait": "waiting for the LLM step that runs its prefill",
    "prefill": "the LLM step with its prefill",
    "first_hop": "LLM decode steps until the first chunk's tokens are out",
    "decode_wait": "the tokens waiting for the decode process (its step in flight)",
    "flow_wait": "waiting for the decode step that takes the first chunk",
    "flow": "the flow pass of that step",
    "hift": "HiFT of that step, audio to the host",
    "audio_out": "audio into the ring, AudioReady sent",
    "reply": "AudioReady reaching the HTTP worker",
    "write": "writing the first bytes to the client",
}
STAGES = tuple(STAGE_TEXT)
assert len(STAGES) == len(BOUNDARIES) - 1
INDEX = {name: i for i, name in enumerate(BOUNDARIES)}
HEADER_TOTAL = "total"  # Server-Timing metric of received -> the last boundary the header covers


def now() -> float:
    """The trace's clock (CLOCK_MONOTONIC, shared by every process of the host)."""
    return time.monotonic()


class StageTrace:
    """The `trace` array of the request slots, [slots, len(BOUNDARIES)] float64 seconds (0.0: not crossed).

    One writer per boundary (the process that crosses it); the HTTP worker that owns the slot resets the row when
    it claims it, before any other process knows the slot, and reads it once the first audio has arrived."""

    def __init__(self, times: np.ndarray):
        assert times.shape[1] == len(BOUNDARIES)
        self.times = times

    def reset(self, slot: int) -> None:
        self.times[slot] = 0.0

    def stamp(self, slot: int, boundary: str, at: float | None = None) -> None:
        self.times[slot, INDEX[boundary]] = now() if at is None else at

    def stamp_once(self, slot: int, boundary: str, at: float | None = None) -> bool:
        """Stamp a boundary only the first time it is crossed (a later sentence or chunk crosses it again);
        True if this call stamped it."""
        if self.times[slot, INDEX[boundary]] != 0.0:
            return False
        self.stamp(slot, boundary, at)
        return True

    def is_stamped(self, slot: int, boundary: str) -> bool:
        return bool(self.times[slot, INDEX[boundary]] != 0.0)

    def read(self, slot: int) -> dict[str, float]:
        """The boundaries crossed so far and their times."""
        row = self.times[slot]
        return {name: float(row[i]) for i, name in enumerate(BOUNDARIES) if row[i] != 0.0}


def completes_first_chunk(num_before: int, num_after: int, needed: int | None, is_end: bool) -> bool:
    """Whether a request's first sentence, growing from num_before to num_after speech tokens, now holds its first
    audio chunk: a stream's first `needed` tokens, or the sentence's end (a non-stream request, needed None, or a
    sentence shorter than a chunk). The LLM and the decode process judge alike, so their stamps pair up."""
    if needed is not None and num_before < needed <= num_after:
        return True
    return is_end and (needed is None or num_after < needed)


def stage_seconds(times: Mapping[str, float]) -> dict[str, float]:
    """Stage -> seconds, for the stages whose two boundaries were both crossed, in order."""
    out = {}
    for i, stage in enumerate(STAGES):
        start, end = times.get(BOUNDARIES[i]), times.get(BOUNDARIES[i + 1])
        if start is not None and end is not None:
            out[stage] = end - start
    return out


def server_timing(times: Mapping[str, float]) -> str:
    """A W3C Server-Timing header value: one `name;dur=MS` metric per stage crossed, then `total` from `received`
    to the last boundary crossed (a streamed response's headers leave before its first bytes: its total ends
    when the HTTP worker took the first audio)."""
    metrics = [f"{stage};dur={1000 * s:.3f}" for stage, s in stage_seconds(times).items() if math.isfinite(s)]
    crossed = [times[b] for b in BOUNDARIES if b in times]
    if "received" in times and len(crossed) > 1:
        metrics.append(f"{HEADER_TOTAL};dur={1000 * (crossed[-1] - times['received']):.3f}")
    return ", ".join(metrics)
