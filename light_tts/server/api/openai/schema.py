"""Wire shapes of the OpenAI-compatible endpoints: pydantic models (so /openapi.json describes them), the SSE
events of `stream_format: "sse"`, and the handler that turns a validation failure into our 400 body.

Validation is strict, as OpenAI's is: unknown fields, wrong JSON types ("1.5" for a number) and values out of
range are 400 with the message `<field>: <why>` (and `param: "<field>"`), in OpenAI's error shape on /v1/* and
`{"error", "kind"}` elsewhere (error_bodies.py), never FastAPI's 422 shape.
"""

from __future__ import annotations

import base64
import json
from typing import Annotated, Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)

from light_tts.errors import RequestError
from light_tts.request_rules import MAX_SPEED, MIN_SPEED, SEED_LIMIT, resolve_mode
from light_tts.server.api.boundary.error_bodies import error_response_for, openai_error

MAX_INPUT_CHARS = 4096  # OpenAI's limit for `input` (and for `instructions`)
ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
# Formats whose header holds the length: streamed, it must say "unknown" (WAV sizes 0xFFFFFFFF, FLAC 0 samples),
# which Python's wave and libsndfile misread; so by default they come whole, with exact headers.
WHOLE_FILE_FORMATS = ("wav", "flac")


def voice_id_of(value):
    """OpenAI's custom-voice form `{"id": "voice_..."}` or the bare id."""
    if isinstance(value, dict) and set(value) == {"id"}:
        return value["id"]
    return value


def check_mode(mode: str | None, instructions: str | None) -> None:
    """ValueError (a 400 naming the problem) for a mode the instructions contradict; whether the voice has the
    transcript a mode needs is known only once the voice is loaded (HttpServerManager.submit)."""
    try:
        resolve_mode(mode, instructions, "a transcript")
    except RequestError as e:
        raise ValueError(str(e)) from None


def no_nul(value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise ValueError("contains a NUL character")
    return value


# Field types shared with the WebSocket session config (speech_ws.py).
VoiceId = Annotated[
    str,
    Field(
        min_length=1,
        description="a saved voice id from POST /v1/audio/voices, a "
        'model\'s named voice (Orpheus: tara, ...), or {"id": ...}',
    ),
    BeforeValidator(voice_id_of),
]
Speed = Annotated[float, Field(ge=MIN_SPEED, le=MAX_SPEED)]
Seed = Annotated[int | None, Field(ge=0, lt=SEED_LIMIT, description="same inputs and seed give the same audio")]
FixedSpeechTokens = Annotated[
    int | None,
    Field(
        ge=1,
        description=(
            "benchmarks: every sentence generates exactly this many speech tokens (25 = 1 s), ignoring end-of-speech"
        ),
    ),
]
Instructions = Annotated[
    Annotated[str, Field(max_length=MAX_INPUT_CHARS)] | None,
    AfterValidator(no_nul),
    Field(
        description=(
            "how to speak (style, emotion, pace, dialect), e.g. 'Speak slowly and softly.': the model's instruct "
            "mode, in the voice of `voice`; blank or absent: the voice's own style"
        )
    ),
]
Mode = Annotated[
    Literal["zero_shot", "instruct", "cross_lingual"] | None,
    Field(
        description=(
            "LightTTS: force a mode (default: instruct with instructions, zero_shot for a voice with a transcript, "
            "cross_lingual for one without); cross_lingual ignores the transcript, for a voice whose language differs "
            "from the text's"
        )
    ),
]


class SpeechRequest(BaseModel):
    """POST /v1/audio/speech."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(
        min_length=1,
        description="a model id from GET /v1/models (or tts-1, tts-1-hd, gpt-4o-mini-tts, default: the first model)",
    )
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS, description="the text to speak")
    voice: VoiceId
    response_format: ResponseFormat = "mp3"
    speed: Speed = Field(1.0, description="!= 1 waits for the whole audio before sending any")
    stream_format: Literal["audio", "sse"] = Field(
        "audio", description="audio: the file's bytes; sse: speech.audio.delta events as the audio is encoded"
    )
    stream: bool | None = Field(
        None,
        description=(
            "LightTTS: true sends the audio as it is encoded (first bytes sooner; wav and flac then carry streaming "
            "headers: unknown length), false one file with exact headers and Content-Length once complete. "
            "Default: true for mp3, opus, aac and pcm, false for wav and flac"
        ),
    )
    instructions: Instructions = None
    mode: Mode = None
    fixed_speech_tokens: FixedSpeechTokens = None
    seed: Seed = None

    @model_validator(mode="after")
    def stream_is_possible(self) -> SpeechRequest:
        if self.stream and self.speed != 1.0:
            raise ValueError("stream needs speed 1.0: speed is applied to the whole audio")
        if self.stream is False and self.stream_format == "sse":
            raise ValueError('stream_format "sse" is a stream; leave out stream or set it true')
        return self

    def is_streamed(self) -> bool:
        """The audio goes out as it is encoded (else as one file with exact headers, once complete)."""
        if self.stream_format == "sse":
            return True
        if self.speed != 1.0:
            return False
        return self.stream if self.stream is not None else self.response_format not in WHOLE_FILE_FORMATS

    @field_validator("input")
    @classmethod
    def input_has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("input is empty")
        if "\x00" in value:
            raise ValueError("input contains a NUL character")
        return value

    @model_validator(mode="after")
    def mode_fits_instructions(self) -> SpeechRequest:
        check_mode(self.mode, self.instructions)
        return self


class SpeechUsage(BaseModel):
    input_tokens: int  # text tokens of `input`
    output_tokens: int  # speech tokens generated (25 per second of audio)
    total_tokens: int

    @classmethod
    def of(cls, input_tokens: int, output_tokens: int) -> SpeechUsage:
        return cls(input_tokens=input_tokens, output_tokens=output_tokens, total_tokens=input_tokens + output_tokens)


class ErrorBody(BaseModel):
    """The error answer of the LightTTS routes."""

    error: str
    kind: str  # light_tts.errors.ErrorKind


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, rate_limit_error or server_error")
    param: str | None = Field(description="the request field at fault, if one is")
    code: str | None = Field(description="the error kind (light_tts.errors): bad_request, not_found, ...")


class OpenAIErrorBody(BaseModel):
    """The error answer of the /v1/* routes, in OpenAI's shape (what the openai package and litellm read)."""

    error: OpenAIErrorDetail


class VoiceObject(BaseModel):
    id: str
    object: Literal["voice"] = "voice"
    name: str
    text: str | None = Field(
        description="the transcript of the recording (the prompt text); null: none, the voice is spoken cross-lingual"
    )
    duration_s: float
    created_at: int = Field(description="unix seconds")
    aliases: list[str] = Field(
        default_factory=list,
        description="names that requests may use for this voice (--voice_alias, e.g. OpenAI's alloy)",
    )
    model: str | None = Field(
        None,
        description="a model's named voice (its id is the name; no recording): the "
        "model that speaks it; absent for a saved voice",
    )

    @model_serializer(mode="wrap")
    def drop_absent_model(self, handler):
        """A saved voice has no `model` key (its wire shape is as before; its `text` stays, null or not)."""
        data = handler(self)
        if data.get("model", 0) is None:
            del data["model"]
        return data

    @classmethod
    def of(cls, voice, aliases: list[str] = ()) -> VoiceObject:
        """From a voice_store.Voice and the aliases that name it."""
        return cls(
            id=voice.id,
            name=voice.name,
            text=voice.text or None,
            duration_s=round(voice.duration_s, 3),
            created_at=voice.created_at,
            aliases=list(aliases),
        )


class VoiceList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VoiceObject]


class VoiceDeleted(BaseModel):
    id: str
    object: Literal["voice"] = "voice"
    deleted: bool = True


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lighttts"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- validation errors -> our 400 body


def describe_errors(errors: list[dict]) -> str:
    """pydantic's error list as one line: `speed: Input should be less than or equal to 4; ...`."""
    parts = []
    for error in errors:
        loc = tuple(error["loc"])
        field = ".".join(str(p) for p in loc if p != "body") or ("request body" if loc == ("body",) else "")
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            parts.append(f"unknown field {field!r}")
        elif error["type"] == "json_invalid":
            parts.append(f"request body is not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})")
        else:
            parts.append(f"{field}: {message}" if field else message)  # no field: a check across fields
    return "; ".join(parts)


def field_of(errors: list[dict]) -> str | None:
    """The request field the first error is about (OpenAI's `param`), if it names one."""
    loc = [str(p) for p in (errors[0]["loc"] if errors else ()) if p != "body"]
    return ".".join(loc) or None


def validation_error(errors: list[dict]) -> RequestError:
    return RequestError(describe_errors(errors), param=field_of(errors))


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A validation failure as our 400, in the shape of the route (error_bodies.install_error_handlers)."""
    return error_response_for(request.url.path, validation_error(exc.errors()))


# ---- SSE events (stream_format: "sse")


def sse_event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def audio_delta_event(audio: bytes) -> bytes:
    """One piece of the encoded audio (in the request's response_format)."""
    return sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(audio).decode("ascii")})


def audio_done_event(usage: SpeechUsage) -> bytes:
    return sse_event({"type": "speech.audio.done", "usage": usage.model_dump()})


def error_event(error: BaseException) -> bytes:
    """A failure after the stream started (the status line already said 200): OpenAI's error object as an event."""
    return sse_event({"type": "error", "error": openai_error(error)})
