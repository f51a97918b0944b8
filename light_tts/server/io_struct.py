"""Every message that crosses a process boundary, named by what it carries.

Big payloads never ride on ZMQ: request text, prompt wav bytes, prompt features and audio live in the
request slot in shared memory (shm.py) and messages carry the slot index. Token lists are small and go inline.

Flow:  HTTP --EncodeRequest/TextPiece--> encode --LLMRequestIn/TextTokens--> LLM
       LLM --DecodeStart/SpeechTokenBatch--> decode --AudioReady--> HTTP
       HTTP --AbortRequest--> every stage --AbortDone--> HTTP;  any stage --RequestFailed--> HTTP
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestParams:
    """What every stage needs to know about a request besides its inputs."""

    req_id: int
    slot: int  # index into the shared-memory request slots
    http_rank: int  # which HTTP worker's endpoint receives the replies
    stream: bool
    speed: float
    seed: int


@dataclass
class EncodeRequest:
    """HTTP -> encode. tts_text, prompt_text and the prompt wav are already in the slot."""

    params: RequestParams
    is_bistream: bool  # True: tts_text arrives later as TextPiece messages


@dataclass
class TextPiece:
    """HTTP -> encode: one piece of bistream text; `is_last` closes the text."""

    req_id: int
    text: str
    is_last: bool


@dataclass
class LLMRequestIn:
    """encode -> LLM: a request whose prompt (text tokens, speech tokens, embedding, mel) is in its slot."""

    params: RequestParams
    is_bistream: bool  # its TextTokens are pieces of one utterance, not sentences


@dataclass
class TextTokens:
    """encode -> LLM: the next sentences of a request, in order; `is_last` means no more will come."""

    req_id: int
    sentences: list[list[int]]
    is_last: bool


@dataclass
class DecodeStart:
    """LLM -> decode: a request was assigned to this decode process; its prompt is in the slot."""

    params: RequestParams


@dataclass
class SpeechTokenBatch:
    """LLM -> decode: new speech tokens of one engine step, struct-of-arrays over requests."""

    req_ids: list[int] = field(default_factory=list)
    sentence_idxs: list[int] = field(default_factory=list)
    token_lists: list[list[int]] = field(default_factory=list)
    is_sentence_end: list[bool] = field(default_factory=list)
    is_request_end: list[bool] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)  # the sentence's seed (LLM sampling and token2wav both use it)

    def append(self, req_id: int, sentence_idx: int, tokens: list[int], sentence_end: bool, request_end: bool,
               seed: int):
        self.req_ids.append(req_id)
        self.sentence_idxs.append(sentence_idx)
        self.seeds.append(seed)
        self.token_lists.append(tokens)
        self.is_sentence_end.append(sentence_end)
        self.is_request_end.append(request_end)

    def __len__(self) -> int:
        return len(self.req_ids)


@dataclass
class AudioReady:
    """decode -> HTTP: `num_samples` int16 samples at ring position `offset` of the slot's audio ring.

    `pcm` carries the samples inline instead, when the ring had no room (a reader far behind).
    """

    req_id: int
    offset: int
    num_samples: int
    pcm: bytes | None
    is_last: bool


@dataclass
class RequestFailed:
    """any stage -> HTTP: the request cannot finish; `kind`/`http_status` come from light_tts.errors."""

    req_id: int
    kind: str
    http_status: int
    message: str


@dataclass
class AbortRequest:
    """HTTP -> every stage: drop the request (client gone, timeout, or an error elsewhere)."""

    req_id: int
    http_rank: int


@dataclass
class AbortDone:
    """stage -> HTTP: this stage holds nothing of the request and will ignore late messages for it.

    The HTTP worker frees the slot once every stage has answered, so no stage ever touches a reused slot.
    """

    req_id: int
    stage: str
