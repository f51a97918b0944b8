"""Wire shapes of the OpenAI-compatible endpoints: pydantic models (so /openapi.json describes them), the SSE
events of `stream_format: "sse"`, and the handler that turns a validation failure into our 400 body.

Validation is strict, as OpenAI's is: unknown fields, wrong JSON types ("1.5" for a number) and values out of
range are 400 `{"error": "<field>: <why>", "kind": "bad_request"}`, never FastAPI's 422 shape.
"""

from __future__ import annotations

import base64
import json
from typing import Annotated, Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from light_tts.errors import LightTTSError, RequestError
from light_tts.request_rules import MAX_SPEED, MIN_SPEED, SEED_LIMIT

MAX_INPUT_CHARS = 4096  # OpenAI's limit for `input`
ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
INSTRUCTIONS_UNSUPPORTED = (
    "instructions are not supported: CosyVoice2 zero-shot cloning takes the speaking style from the voice's "
    "recording, so save a voice recorded in the style you want")


def voice_id_of(value):
    """OpenAI's custom-voice form `{"id": "voice_..."}` or the bare id."""
    if isinstance(value, dict) and set(value) == {"id"}:
        return value["id"]
    return value


def reject_instructions(value: str | None) -> str | None:
    if value is not None and value.strip():
        raise ValueError(INSTRUCTIONS_UNSUPPORTED)
    return value


# Field types shared with the WebSocket session config (speech_ws.py).
VoiceId = Annotated[str, Field(min_length=1, description='a saved voice id from POST /v1/audio/voices, a '
                                                       'model\'s named voice (Orpheus: tara, ...), or {"id": ...}'),
                    BeforeValidator(voice_id_of)]
Speed = Annotated[float, Field(ge=MIN_SPEED, le=MAX_SPEED)]
Seed = Annotated[int | None, Field(ge=0, lt=SEED_LIMIT, description="same inputs and seed give the same audio")]
FixedSpeechTokens = Annotated[int | None, Field(ge=1, description=(
    "benchmarks: every sentence generates exactly this many speech tokens (25 = 1 s), ignoring end-of-speech"))]
Instructions = Annotated[str | None, AfterValidator(reject_instructions),
                         Field(description="must be empty: " + INSTRUCTIONS_UNSUPPORTED)]


class SpeechRequest(BaseModel):
    """POST /v1/audio/speech."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, description="a model id from GET /v1/models (or tts-1, tts-1-hd, "
                                                 "gpt-4o-mini-tts, default: the first model)")
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS, description="the text to speak")
    voice: VoiceId
    response_format: ResponseFormat = "mp3"
    speed: Speed = Field(1.0, description="!= 1 waits for the whole audio before sending any")
    stream_format: Literal["audio", "sse"] = Field("audio", description="audio: the file's bytes, chunked as "
                                                   "they are encoded; sse: speech.audio.delta events")
    instructions: Instructions = None
    fixed_speech_tokens: FixedSpeechTokens = None
    seed: Seed = None

    @field_validator("input")
    @classmethod
    def input_has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("input is empty")
        if "\x00" in value:
            raise ValueError("input contains a NUL character")
        return value



class SpeechUsage(BaseModel):
    input_tokens: int  # text tokens of `input`
    output_tokens: int  # speech tokens generated (25 per second of audio)
    total_tokens: int

    @classmethod
    def of(cls, input_tokens: int, output_tokens: int) -> "SpeechUsage":
        return cls(input_tokens=input_tokens, output_tokens=output_tokens, total_tokens=input_tokens + output_tokens)


class ErrorBody(BaseModel):
    """Every error answer of the server."""

    error: str
    kind: str  # light_tts.errors.ErrorKind


class VoiceObject(BaseModel):
    id: str
    object: Literal["voice"] = "voice"
    name: str
    text: str = Field(description="the transcript of the recording (the prompt text)")
    duration_s: float
    created_at: int = Field(description="unix seconds")
    model: str | None = Field(None, description="a model's named voice (its id is the name; no recording): the "
                                                "model that speaks it; absent for a saved voice")

    @classmethod
    def of(cls, voice) -> "VoiceObject":
        """From a voice_store.Voice."""
        return cls(id=voice.id, name=voice.name, text=voice.text, duration_s=round(voice.duration_s, 3),
                   created_at=voice.created_at)


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


def validation_error(errors: list[dict]) -> RequestError:
    return RequestError(describe_errors(errors))


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    """app.add_exception_handler(RequestValidationError, validation_error_handler)"""
    error = validation_error(exc.errors())
    return JSONResponse({"error": str(error), "kind": error.kind}, status_code=error.http_status)


# ---- SSE events (stream_format: "sse")

def sse_event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def audio_delta_event(audio: bytes) -> bytes:
    """One piece of the encoded audio (in the request's response_format)."""
    return sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(audio).decode("ascii")})


def audio_done_event(usage: SpeechUsage) -> bytes:
    return sse_event({"type": "speech.audio.done", "usage": usage.model_dump()})


def error_event(error: BaseException) -> bytes:
    """A failure after the stream started (the status line already said 200): our error body as an event."""
    message, kind = (str(error), error.kind) if isinstance(error, LightTTSError) else ("internal error", "internal")
    return sse_event({"type": "error", "error": message, "kind": kind})
