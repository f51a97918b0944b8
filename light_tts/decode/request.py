"""Per-request decode state (token schedule, flow cache, HiFT overlap, noise generator) and the chunk jobs that the
engine batches across requests."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from light_tts.models.flow.cache import FlowStreamState
from light_tts.models.hift.streaming import HiFTStreamState
from light_tts.token2wav import ChunkSchedule


@dataclass
class DecodeRequest:
    req_id: str
    stream: bool
    speed: float
    schedule: ChunkSchedule
    prompt_token: torch.Tensor  # (1, P) int32
    flow_state: FlowStreamState  # stale but for speaker and prompt while flow_row is set
    generator: torch.Generator
    hift_state: HiFTStreamState = field(default_factory=HiFTStreamState)
    flow_row: int | None = None  # the request's row in the engine's kept FlowBatch, if in one
    is_last: bool = False  # every token has arrived
    error: str | None = None  # set when the request failed; reported by the next step

    @property
    def num_prompt_tokens(self) -> int:
        return self.prompt_token.shape[1]

    def next_job(self) -> ChunkJob | None:
        """The chunk this request can compute now, if any (a stream's non-final chunks before its final one)."""
        sched = self.schedule
        if self.stream and sched.ready():
            return ChunkJob(self, finalize=False, streaming=True)
        if self.is_last:
            return ChunkJob(self, finalize=True, streaming=self.stream)
        return None


@dataclass
class ChunkJob:
    """One chunk of one request: its flow input tokens and, once the flow ran, its mel."""

    req: DecodeRequest
    finalize: bool
    streaming: bool  # False: the whole utterance at once with full attention (non-stream requests)
    mel: torch.Tensor | None = None  # (1, 80, frames) after the flow (speed applied)
    audio: torch.Tensor | None = None  # (samples,) after HiFT

    @property
    def is_first(self) -> bool:
        return self.req.schedule.offset == 0

    @property
    def tokens(self) -> list[int]:
        """Flow input: the chunk's tokens, after the prompt's on the first chunk (the prompt is encoded with it)."""
        tokens = self.req.schedule.chunk_tokens(self.finalize)
        return self.req.prompt_token[0].tolist() + tokens if self.is_first else tokens

    def flow_key(self) -> tuple:
        """Jobs with equal keys share one flow pass: equal input lengths and masks (caches may differ)."""
        return self.streaming, self.finalize, self.is_first, len(self.tokens)

    def hift_key(self) -> tuple:
        """Jobs with equal keys share one HiFT pass: equal mel lengths and overlap state."""
        return self.finalize, self.req.hift_state.mel is not None, self.mel.shape[2]
