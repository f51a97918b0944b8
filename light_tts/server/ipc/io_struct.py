"""Every message that crosses a process boundary, named by what it carries, and how it is (de)serialised.

Messages are msgspec Structs, tagged with their class name and encoded as MessagePack: nothing on the wire is
unpickled, and a receiver decodes only the union of the types it handles (an unknown or malformed message fails
validation and is logged, never executed). Big payloads never ride on ZMQ: request text, prompt wav bytes, prompt
features and audio live in the request slot in shared memory (shm.py) and messages carry the slot index. Token
lists are small and go inline.

Flow:  HTTP --EncodeRequest/TextPiece--> encode --LLMRequestIn/TextTokens (VCRequestIn)--> LLM
       LLM --DecodeStart/SpeechTokenBatch--> decode --AudioReady--> HTTP
       HTTP --AbortRequest--> every stage --AbortDone--> HTTP;  any stage --RequestFailed--> HTTP
       voice upload: HTTP --ComputeFeatures--> encode --FeaturesReady (or RequestFailed)--> HTTP
"""

from __future__ import annotations

from typing import Any

import msgspec

from light_tts.errors import ErrorKind


class Message(msgspec.Struct, tag=True):
    """Base of every wire message; the tag (the class name) says which one a frame holds."""


class RequestParams(msgspec.Struct):
    """What every stage needs to know about a request besides its inputs (set by the HTTP worker)."""

    req_id: int  # unique per request (random 40 bits + 1; 0 marks a free slot)
    slot: int  # index into the shared-memory request slots
    http_rank: int  # which HTTP worker's endpoint receives the replies
    stream: bool
    speed: float
    seed: int
    fixed_speech_tokens: int | None = None  # every sentence gets exactly this many speech tokens (benchmarks)
    mode: str = "zero_shot"  # request_rules.MODES: how the LLM's prompt is built (or, vc, that there is no LLM)


class EncodeRequest(Message):
    """HTTP -> encode. tts_text, prompt_text, instruct_text and the prompt wav (and a voice conversion's source
    wav) are already in the slot; params.mode says which the request uses.

    With `saved_voice_key` the slot holds no wav but the saved voice's prompt features (speech tokens, embedding,
    mel): the encode process then only tokenizes the texts, and runs neither the speech tokenizer nor the
    speaker model. With `voice` (a model without prompt audio, Orpheus) the slot holds no prompt at all: the
    voice is a name in the LLM's prompt."""

    params: RequestParams
    is_bistream: bool  # True: tts_text arrives later as TextPiece messages
    saved_voice_key: str | None = None  # the saved voice's stored key (its features are in the slot)
    voice: str | None = None  # the model's named voice (checked by the HTTP worker)


class TextPiece(Message):
    """HTTP -> encode: one piece of bistream text; `is_last` closes the text."""

    req_id: int
    text: str
    is_last: bool


class LLMRequestIn(Message):
    """encode -> LLM: a request whose prompt (text tokens, speech tokens, embedding, mel) is in its slot."""

    params: RequestParams
    voice_key: str  # hex key of the prompt voice (voice cache key): equal keys share prompt state downstream
    is_bistream: bool  # its TextTokens are pieces of one utterance, not sentences


class VCRequestIn(Message):
    """encode -> LLM: a voice conversion. Its prompt's features are in the slot; the source recording's speech
    tokens go to a decode process as they are, one sentence, without an LLM step (upstream's inference_vc)."""

    params: RequestParams
    voice_key: str  # as in LLMRequestIn
    source_tokens: list[int]


class TextTokens(Message):
    """encode -> LLM: the next sentences of a request, in order; `is_last` means no more will come."""

    req_id: int
    sentences: list[list[int]]
    is_last: bool


class DecodeStart(Message):
    """LLM -> decode: a request was assigned to this decode process; its prompt is in the slot."""

    params: RequestParams
    voice_key: str  # as in LLMRequestIn: the decode engine shares prompt pages between streams of one voice


class SpeechTokenBatch(Message):
    """LLM -> decode: new speech tokens of one engine step, struct-of-arrays over requests."""

    req_ids: list[int] = msgspec.field(default_factory=list)
    sentence_idxs: list[int] = msgspec.field(default_factory=list)
    token_lists: list[list[int]] = msgspec.field(default_factory=list)
    is_sentence_end: list[bool] = msgspec.field(default_factory=list)
    is_request_end: list[bool] = msgspec.field(default_factory=list)
    seeds: list[int] = msgspec.field(default_factory=list)  # the sentence's seed (LLM sampling and token2wav)
    max_tokens: list[int] = msgspec.field(default_factory=list)  # the sentence's speech-token bound (page budget)

    def append(
        self,
        req_id: int,
        sentence_idx: int,
        tokens: list[int],
        sentence_end: bool,
        request_end: bool,
        seed: int,
        max_tokens: int,
    ) -> None:
        self.max_tokens.append(max_tokens)
        self.req_ids.append(req_id)
        self.sentence_idxs.append(sentence_idx)
        self.seeds.append(seed)
        self.token_lists.append(tokens)
        self.is_sentence_end.append(sentence_end)
        self.is_request_end.append(request_end)

    def __len__(self) -> int:
        return len(self.req_ids)


class AudioReady(Message):
    """decode -> HTTP: `num_samples` int16 samples at position `offset` of the slot's audio ring (audio_ring.py).

    `pcm` carries the samples inline instead, when the ring had no room (a reader far behind).
    """

    req_id: int
    offset: int
    num_samples: int
    pcm: bytes | None
    is_last: bool


class RequestFailed(Message):
    """any stage -> HTTP: the request cannot finish; the HTTP worker answers with the kind's error class."""

    req_id: int
    kind: ErrorKind
    stage: str  # which process failed it, e.g. "encode0"
    message: str


class ComputeFeatures(Message):
    """HTTP -> encode: compute the prompt features of the audio in the slot's wav (a voice upload) and write them
    into the slot's prompt arrays; answered by FeaturesReady or RequestFailed."""

    req_id: int
    slot: int
    http_rank: int


class FeaturesReady(Message):
    """encode -> HTTP: the prompt features asked for by ComputeFeatures are in the slot."""

    req_id: int
    duration_s: float  # of the uploaded audio


class AbortRequest(Message):
    """HTTP -> every stage: drop the request (client gone, timeout, or an error elsewhere)."""

    req_id: int
    http_rank: int


class AbortDone(Message):
    """stage -> HTTP: this stage holds nothing of the request and will ignore late messages for it.

    The HTTP worker frees the slot once every stage has answered, so no stage ever touches a reused slot.
    """

    req_id: int
    stage: str


# What each process's inbox accepts; anything else fails to decode there.
ENCODE_INBOX = EncodeRequest | TextPiece | ComputeFeatures | AbortRequest
LLM_INBOX = LLMRequestIn | VCRequestIn | TextTokens | AbortRequest
DECODE_INBOX = DecodeStart | SpeechTokenBatch | AbortRequest
HTTP_INBOX = AudioReady | RequestFailed | AbortDone | FeaturesReady

_ENCODER = msgspec.msgpack.Encoder()


def encode(message: Message) -> bytes:
    return _ENCODER.encode(message)


def decoder(inbox_type: Any) -> msgspec.msgpack.Decoder[Any]:
    """A decoder that accepts exactly the messages of one inbox union; others raise msgspec.ValidationError."""
    return msgspec.msgpack.Decoder(inbox_type)
