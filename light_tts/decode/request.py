"""Per-request state of the decode engine (CPU only: no tensors but the request's own HiFT state and generator).

A request is one utterance's token2wav: a stream (chunks as tokens arrive, upstream's hop schedule) or a whole
utterance (non-stream). It is admitted into the page pool when its first chunk can run; until then its tokens
queue here. `t0` counts the tokens whose flow keys/values are in its pages (prompt included; a shared voice prefix
counts from the start).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from light_tts.models.cosyvoice2.hift.streaming import HiFTStreamState
from light_tts.token2wav import ChunkSchedule

SAMPLE_RATE = 24000


@dataclass
class DecodeRequest:
    req_id: str
    stream: bool
    speed: float
    schedule: ChunkSchedule
    prompt_tokens: np.ndarray  # (P,) int32
    prompt_mel: np.ndarray  # (2P, 80) float32
    embedding: torch.Tensor  # (1, 192) on the engine's device
    generator: torch.Generator
    max_tokens: int  # speech tokens this request may reach (its page budget is sized from it)
    prefix_key: str | None  # the voice: streams of one voice share its prompt's first pages
    arrival: float
    hift_state: Any = field(default_factory=HiFTStreamState)  # the engine's vocoder stream (new_vocoder_state)
    is_last: bool = False  # every token has arrived
    error: str | None = None  # set when the request failed; reported by the next step
    error_kind: str = "bad_request"  # its light_tts.errors kind
    # admission
    slot: int = -1  # tail slot, once admitted
    t0: int = 0  # tokens whose keys/values are in the pool
    read_slot: int = 0  # where the next chunk reads its conv context (0: zeros)
    num_chunks: int = 0  # flow chunks computed
    admission: int = 0  # order of its last admission
    waiting_since: float | None = None  # ready, but its chunk could not run (no pages, slot or real-time capacity)
    ready_since: float | None = None  # when its first chunk became ready (a non-stream utterance's hold time)
    preempted_at: float | None = None  # when its pages were last taken back (at most once per interval)
    # playback (deadline scheduling): when its listener started hearing it and how much was sent since
    audio_start: float | None = None
    samples_sent: int = 0
    seed: int = 0  # keys its counter-based HiFT noise (hift_stage.py)
    hift_frames: int = 0  # mel frames vocoded so far (the overlap not counted twice): where its noise continues

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_tokens)

    def mel_mismatch(self) -> bool:
        return len(self.prompt_mel) != 2 * len(self.prompt_tokens)

    @property
    def is_admitted(self) -> bool:
        return self.slot >= 0

    def deadline(self, margin_s: float) -> float:
        """When its listener runs out of audio (minus a margin); -inf before the first chunk (time to first audio
        comes first)."""
        if self.audio_start is None:
            return float("-inf")
        return self.audio_start + self.samples_sent / SAMPLE_RATE - margin_s

    def ready_chunk(self) -> tuple[list[int], bool] | None:
        """(the next chunk's new tokens and lookahead, finalize) if it can run now, else None."""
        sched = self.schedule
        if self.stream and sched.ready():
            return sched.chunk_tokens(False), False
        if self.is_last:
            return sched.chunk_tokens(True), True
        return None
