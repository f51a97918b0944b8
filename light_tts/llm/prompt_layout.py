"""The layout of a plain causal LM (Orpheus): the request's `text_token_ids` are its whole prompt, already in the
model's vocabulary (the family's prompt builder made them), and the model samples ids of that same vocabulary.

Audio comes as frames of `frame_len` tokens; position p of a frame takes the `codes_per_position` ids from
`first_audio_id + p * codes_per_position` on. The model is free to emit anything (the codec drops what is not a
valid frame, as the references do), except that before min_len a request may only emit audio ids, in frame
order: min_len counts audio tokens, so `fixed_speech_tokens` N gives exactly N / frame_len frames of audio even
from random weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from light_tts.llm.request import LLMRequest, Sequence


@dataclass(frozen=True)
class PromptLayout:
    vocab_size: int
    stop_ids: frozenset[int]
    first_audio_id: int
    codes_per_position: int
    frame_len: int
    default_max_len: int  # generated ids when the request gives no max_len

    @property
    def num_embeddings(self) -> int:
        return self.vocab_size

    @property
    def eos(self) -> int:
        """The id the engine reports as a request's stop (any stop id ends it)."""
        return min(self.stop_ids)

    def start(self, seq: Sequence) -> None:
        seq.token_ids = list(seq.req.text_token_ids)

    def length_bounds(self, req: LLMRequest, max_total_len: int) -> tuple[int, int]:
        return (req.min_len or 0, self.default_max_len if req.max_len is None else req.max_len)

    def shareable_prefix_len(self, seq: Sequence) -> int:
        return 0  # the voice is a few tokens of text inside the prompt: nothing worth sharing

    def check(self, req: LLMRequest) -> str | None:
        if req.bistream:
            return "this model takes its text whole (no bistream)"
        if req.prompt_text_token_ids or req.prompt_speech_token_ids:
            return "this model takes no prompt audio or prompt text"
        if not req.text_token_ids:
            return "empty prompt"
        return self.check_text(req.text_token_ids)

    def check_text(self, text_token_ids: list[int]) -> str | None:
        if any(not 0 <= t < self.vocab_size for t in text_token_ids):
            return f"token ids must be in [0, {self.vocab_size})"
        return None

    def allowed_range(self, seq: Sequence) -> tuple[int, int]:
        return self.allowed_ids(seq.num_output, seq.min_len)

    def allowed_ids(self, num_output: int, min_len: int) -> tuple[int, int]:
        """The ids [lo, hi) a request that has emitted num_output ids may emit next."""
        if num_output < min_len:
            lo = self.first_audio_id + (num_output % self.frame_len) * self.codes_per_position
            return lo, lo + self.codes_per_position
        return 0, self.vocab_size
