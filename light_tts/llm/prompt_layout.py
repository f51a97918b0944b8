"""The layout of a plain causal LM (Orpheus): the request's `text_token_ids` are its whole prompt, already in the
model's vocabulary (the family's prompt builder made them), and the model samples ids of that same vocabulary.

Audio comes as frames of `frame_len` tokens; position p of a frame takes the `codes_per_position` ids from
`first_audio_id + p * codes_per_position` on. Before min_len a request may only emit audio ids, in frame order:
min_len counts audio tokens, so `fixed_speech_tokens` N gives exactly N / frame_len frames of audio even from
random weights. After it, with `audio_only` the same holds, except that at a frame boundary the stop ids may come
too (the range from the lowest stop id to the audio ids, whose other ids must then be stop ids as well); without
it the model is free to emit anything (the codec drops what is not a valid frame, as the references do).
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
    audio_only: bool = False  # past min_len too: only its position's audio ids, and the stop ids at a frame boundary

    def __post_init__(self):
        if self.audio_only:
            lo, hi = self.allowed_ids(0, 0)
            codebook = range(self.first_audio_id, self.first_audio_id + self.codes_per_position)
            strays = [i for i in range(lo, hi) if i not in codebook and i not in self.stop_ids]
            if strays:
                raise ValueError(
                    f"audio-only sampling allows the ids from the lowest stop id to the audio ids at a frame "
                    f"boundary, but {len(strays)} of them (e.g. {strays[0]}) are not stop ids"
                )

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

    def sampled_range(self) -> tuple[int, int]:
        """The ids [lo, hi) that contain every step's allowed_ids: with audio_only the stop ids up to the last
        audio id, else the whole vocabulary."""
        if not self.audio_only:
            return 0, self.vocab_size
        last_audio = self.first_audio_id + self.frame_len * self.codes_per_position
        return min(self.first_audio_id, min(self.stop_ids)), max(last_audio, max(self.stop_ids) + 1)

    def allowed_ids(self, num_output: int, min_len: int) -> tuple[int, int]:
        """The ids [lo, hi) a request that has emitted num_output ids may emit next."""
        position = num_output % self.frame_len
        lo = self.first_audio_id + position * self.codes_per_position
        hi = lo + self.codes_per_position
        if num_output < min_len:
            return lo, hi
        if not self.audio_only:
            return 0, self.vocab_size
        if position == 0:  # a frame boundary: the utterance may end here
            return min(lo, min(self.stop_ids)), max(hi, max(self.stop_ids) + 1)
        return lo, hi
