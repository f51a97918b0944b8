"""The two text-in WebSocket protocols as state machines: frames in, a list of actions out, no I/O.

The transport (a FastAPI endpoint) feeds each received frame to `on_text` / `on_binary`, carries out the
actions in order (send a JSON or binary frame, synthesize an utterance, close), and reports the end of each
synthesis with `on_synthesis_done`. Utterances are synthesized one at a time in arrival order; text for the
next one may arrive meanwhile and waits (at most `max_pending` flushed utterances).

Protocols (event fields in docs/openai-api.md): /v1/audio/speech/stream is vLLM-Omni's (session.config,
input.text pieces, input.done flushes an utterance, session.close; audio.start, audio frames, audio.done,
session.done per utterance), /ws/tts the Orpheus style ({"text", "voice"} in, PCM frames, b"__END__"; a voice
is an Orpheus model's voice name, or a saved voice id).

Errors: a message the session cannot use gets an error event (`{"type": "error", "message", "error": {"message",
"type", "param", "code"}}`, OpenAI's error object) and the session goes on, except: anything
wrong before a valid session.config closes with 1008 (policy violation), and a binary frame from the client
closes with 1003 (unsupported data). session.close / __END__ close with 1000.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from light_tts.errors import ErrorKind, LightTTSError, RequestError, kind_of
from light_tts.request_rules import SEED_LIMIT
from light_tts.server.api.boundary.error_bodies import message_of, openai_error_of_kind
from light_tts.server.api.openai.schema import (
    FixedSpeechTokens,
    Instructions,
    Mode,
    ResponseFormat,
    Seed,
    Speed,
    VoiceId,
    check_mode,
    describe_errors,
    field_of,
)

CLOSE_NORMAL, CLOSE_UNSUPPORTED_DATA, CLOSE_POLICY_VIOLATION = 1000, 1003, 1008
END_MARKER = b"__END__"
PCM_SAMPLE_RATE = 24000
CLIENT_EVENTS = ("session.config", "input.text", "input.done", "session.close")


class StreamSessionConfig(BaseModel):
    """session.config; unknown fields are refused rather than ignored."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    voice: VoiceId
    response_format: ResponseFormat = "wav"  # vLLM-Omni's default for this endpoint
    speed: Speed = 1.0
    stream_audio: bool = False  # True: audio frames as they are encoded; False: one whole file per utterance
    seed: Seed = None
    fixed_speech_tokens: FixedSpeechTokens = None
    instructions: Instructions = None
    mode: Mode = None
    # LightTTS splits sentences itself and streams them in order; only "none" (one request per flush) fits.
    split_granularity: Literal["none"] = "none"

    @model_validator(mode="after")
    def speed_needs_whole_audio(self) -> StreamSessionConfig:
        if self.stream_audio and self.speed != 1.0:
            raise ValueError("stream_audio needs speed 1.0: speed is applied to the whole audio")
        check_mode(self.mode, self.instructions)
        return self


@dataclass(frozen=True)
class Utterance:
    index: int
    text: str
    voice_id: str
    response_format: str
    speed: float
    is_streamed: bool  # send chunks as they are encoded (else one frame with the whole file)
    seed: int | None = None
    fixed_speech_tokens: int | None = None
    model: str | None = None  # session.config's model (None: the default model)
    instructions: str | None = None  # session.config's instructions (instruct mode)
    mode: str | None = None  # session.config's mode


@dataclass(frozen=True)
class SendJson:
    payload: dict


@dataclass(frozen=True)
class SendBytes:
    data: bytes


@dataclass(frozen=True)
class Synthesize:
    utterance: Utterance


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


def error_event(message: str, kind: ErrorKind = RequestError.kind, param: str | None = None, **extra) -> SendJson:
    """`message` on top (vLLM-Omni's clients read it) and OpenAI's error object (as the Realtime API sends it)."""
    return SendJson({"type": "error", "message": message, "error": openai_error_of_kind(message, kind, param), **extra})


class SerialSession:
    """Utterances answered one at a time, in order; closes once asked to and nothing is left."""

    def __init__(self, max_pending: int):
        self.max_pending = max_pending
        self.pending: deque[Utterance] = deque()
        self.active: Utterance | None = None
        self.is_closing = False
        self.is_closed = False

    def on_binary(self, data: bytes) -> list:
        self.is_closed = True
        return [
            error_event("binary frames are not part of this protocol; send JSON text messages"),
            Close(CLOSE_UNSUPPORTED_DATA, "binary frame"),
        ]

    def on_synthesis_done(self, total_bytes: int, error: BaseException | None = None) -> list:
        """The active utterance ended (all its audio sent), or failed with `error` (a LightTTSError's message and
        kind reach the client; anything else is reported as internal)."""
        utterance, self.active = self.active, None
        if utterance is None:
            raise RuntimeError("on_synthesis_done() without an utterance in progress")
        actions = []
        if error is not None:
            extra = {"partial_audio": True, "action": "discard"} if total_bytes else {}
            actions.append(
                error_event(
                    f"utterance {utterance.index} failed: {message_of(error)}",
                    kind_of(error),
                    getattr(error, "param", None),
                    **extra,
                )
            )
        return actions + self.done_actions(utterance, total_bytes, error is not None) + self.advance()

    def enqueue(self, utterance: Utterance) -> list:
        self.pending.append(utterance)
        return self.advance()

    def advance(self) -> list:
        actions = []
        while self.active is None and self.pending:
            utterance = self.pending.popleft()
            if utterance.text.strip():
                self.active = utterance
                actions += self.start_actions(utterance) + [Synthesize(utterance)]
            else:
                actions += self.done_actions(utterance, 0, False, num_sentences=0)
        if self.is_closing and self.active is None and not self.is_closed:
            self.is_closed = True
            actions.append(Close(CLOSE_NORMAL, "session closed"))
        return actions

    def is_queue_full(self) -> bool:
        return len(self.pending) >= self.max_pending

    def start_actions(self, utterance: Utterance) -> list:
        return []

    def done_actions(self, utterance: Utterance, total_bytes: int, is_error: bool, num_sentences: int = 1) -> list:
        raise NotImplementedError


def is_int_in(value: object, low: int, high: int | None) -> bool:
    """A JSON integer (not a bool) in [low, high) (no upper bound: None)."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value and (high is None or value < high)


def parse_json_object(raw: str) -> tuple[dict | None, str | None]:
    try:
        message = json.loads(raw)
    except json.JSONDecodeError as e:
        return None, f"message is not valid JSON: {e.msg} at position {e.pos}"
    if not isinstance(message, dict):
        return None, "messages must be JSON objects"
    return message, None


class StreamSpeechSession(SerialSession):
    """/v1/audio/speech/stream. `check_voice(voice, model)` raises a LightTTSError (404 for an unknown saved voice,
    400 for a voice the model does not speak)."""

    def __init__(
        self,
        max_utterance_chars: int,
        max_pending: int = 8,
        check_voice: Callable[[str, str | None], None] | None = None,
    ):
        super().__init__(max_pending)
        self.max_utterance_chars = max_utterance_chars
        self.check_voice = check_voice
        self.config: StreamSessionConfig | None = None
        self.buffer: list[str] = []
        self.num_buffered_chars = 0
        self.next_index = 0

    def on_text(self, raw: str) -> list:
        if self.is_closed:
            return []
        message, problem = parse_json_object(raw)
        event = message.get("type") if message else None
        if problem is None and self.config is None and event != "session.config":
            problem = f"the first message must be session.config, got {event!r}"
        if problem is not None:
            return self.refuse(problem)
        handler = {
            "session.config": self.on_config,
            "input.text": self.on_input_text,
            "input.done": self.on_input_done,
            "session.close": self.on_close,
        }.get(event)
        if handler is None:
            return self.refuse(f"unknown message type {event!r}; expected one of {', '.join(CLIENT_EVENTS)}")
        return handler(message)

    def refuse(self, problem: str, kind: ErrorKind = RequestError.kind, param: str | None = None) -> list:
        """An error event; before a usable session.config there is no session to go on with."""
        if self.config is not None:
            return [error_event(problem, kind, param)]
        self.is_closed = True
        return [error_event(problem, kind, param), Close(CLOSE_POLICY_VIOLATION, "no valid session.config")]

    def on_config(self, message: dict) -> list:
        if self.buffer:
            return self.refuse("session.config cannot change an utterance in progress; send input.done first")
        try:
            config = StreamSessionConfig.model_validate({k: v for k, v in message.items() if k != "type"})
            if self.check_voice is not None:
                self.check_voice(config.voice, config.model)
        except ValidationError as e:
            return self.refuse(f"invalid session.config: {describe_errors(e.errors())}", param=field_of(e.errors()))
        except LightTTSError as e:
            return self.refuse(str(e), e.kind, e.param or "voice")
        self.config = config
        return []

    def on_input_text(self, message: dict) -> list:
        text = message.get("text")
        if not isinstance(text, str) or set(message) != {"type", "text"}:
            return self.refuse('input.text takes exactly one field, "text", a string')
        if self.is_closing:
            return self.refuse("the session is closing (session.close was sent)")
        if self.num_buffered_chars + len(text) > self.max_utterance_chars:
            return self.refuse(
                f"this piece would make the utterance longer than {self.max_utterance_chars} "
                "characters; it was not added (send input.done to flush what came before)"
            )
        self.buffer.append(text)
        self.num_buffered_chars += len(text)
        return []

    def on_input_done(self, message: dict) -> list:
        if self.is_closing:
            return self.refuse("the session is closing (session.close was sent)")
        if self.is_queue_full():
            return self.refuse(
                f"{self.max_pending} utterances are already waiting; the text stays buffered, "
                "send input.done again after the next session.done",
                "overloaded",
            )
        config = self.config
        utterance = Utterance(
            self.next_index,
            "".join(self.buffer),
            config.voice,
            config.response_format,
            config.speed,
            config.stream_audio,
            config.seed,
            config.fixed_speech_tokens,
            config.model,
            config.instructions,
            config.mode,
        )
        self.next_index += 1
        self.buffer.clear()
        self.num_buffered_chars = 0
        return self.enqueue(utterance)

    def on_close(self, message: dict) -> list:
        self.is_closing = True
        return self.advance()  # text never flushed with input.done is not spoken

    def start_actions(self, utterance: Utterance) -> list:
        start = {
            "type": "audio.start",
            "utterance_index": utterance.index,
            "sentence_index": 0,
            "sentence_text": utterance.text,
            "format": utterance.response_format,
        }
        if utterance.response_format == "pcm":
            start.update(sample_rate=PCM_SAMPLE_RATE, channels=1)
        return [SendJson(start)]

    def done_actions(self, utterance: Utterance, total_bytes: int, is_error: bool, num_sentences: int = 1) -> list:
        done = (
            [
                SendJson(
                    {
                        "type": "audio.done",
                        "utterance_index": utterance.index,
                        "sentence_index": 0,
                        "total_bytes": total_bytes,
                        "error": is_error,
                    }
                )
            ]
            if num_sentences
            else []
        )
        return done + [
            SendJson({"type": "session.done", "utterance_index": utterance.index, "total_sentences": num_sentences})
        ]


class OrpheusSession(SerialSession):
    """/ws/tts: each {"text", "voice"} message is one utterance of streamed PCM, ended by b"__END__". Optional
    "model" (else the model whose named voice it is, else the default model), "seed" and "fixed_speech_tokens"
    (benchmarks); voice and model stick for later messages."""

    FIELDS = ("text", "voice", "model", "seed", "fixed_speech_tokens")

    def __init__(self, max_utterance_chars: int, max_pending: int = 8):
        super().__init__(max_pending)
        self.max_utterance_chars = max_utterance_chars
        self.voice_id: str | None = None
        self.model: str | None = None
        self.next_index = 0

    def on_text(self, raw: str) -> list:
        if self.is_closed:
            return []
        if raw.strip() == END_MARKER.decode():
            return self.on_end()
        message, problem = parse_json_object(raw)
        if problem is not None:
            return [error_event(problem)]
        if message.get("end") is True and set(message) == {"end"}:
            return self.on_end()
        unknown = set(message) - set(self.FIELDS)
        text, voice = message.get("text"), message.get("voice", self.voice_id)
        model, seed, fixed = message.get("model", self.model), message.get("seed"), message.get("fixed_speech_tokens")
        if unknown:
            problem = (
                f'unknown field(s) {sorted(unknown)}; a message is {{"text", "voice", "model"?, '
                f'"seed"?, "fixed_speech_tokens"?}} or {{"end": true}}'
            )
        elif seed is not None and not is_int_in(seed, 0, SEED_LIMIT):
            problem = f'"seed" must be an integer in [0, {SEED_LIMIT})'
        elif fixed is not None and not is_int_in(fixed, 1, None):
            problem = '"fixed_speech_tokens" must be a positive integer'
        elif model is not None and (not isinstance(model, str) or not model):
            problem = '"model" must be a model id from GET /v1/models'
        elif not isinstance(text, str) or not text.strip():
            problem = '"text" must be a non-empty string'
        elif len(text) > self.max_utterance_chars:
            problem = f'"text" is longer than {self.max_utterance_chars} characters'
        elif not isinstance(voice, str) or not voice:
            problem = '"voice" (a model\'s voice name, or a saved voice id) is required in the first message'
        elif self.is_closing:
            problem = "the connection is closing (__END__ was sent)"
        elif self.is_queue_full():
            problem = f"{self.max_pending} messages are already waiting; send more after their __END__"
        if problem is not None:
            return [error_event(problem)]
        self.voice_id, self.model = voice, model
        self.next_index += 1
        return self.enqueue(
            Utterance(
                self.next_index - 1,
                text,
                voice,
                "pcm",
                1.0,
                is_streamed=True,
                seed=seed,
                fixed_speech_tokens=fixed,
                model=model,
            )
        )

    def on_end(self) -> list:
        self.is_closing = True
        return self.advance()

    def done_actions(self, utterance: Utterance, total_bytes: int, is_error: bool, num_sentences: int = 1) -> list:
        return [SendBytes(END_MARKER)]
