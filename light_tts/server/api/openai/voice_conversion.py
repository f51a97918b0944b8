"""POST /v1/audio/voice-conversion: a source recording spoken again in another voice (upstream's inference_vc).

The source's speech tokens (the encode process runs the speech tokenizer on it) go straight to the flow with the
target voice's prompt tokens, mel and speaker embedding: no text and no LLM step, and the decode processes batch
it with every other request. The target is a saved voice (`voice`) or an uploaded recording (`prompt_audio`,
through the voice cache). Answers as /v1/audio/speech does: every response_format, streamed as it is encoded or
one whole file. A source over --max_vc_source_seconds (or over --max_prompt_wav_bytes) is refused with 413.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from light_tts.errors import AudioError, LightTTSError, RequestError, TooLargeError
from light_tts.request_rules import VC, check_seed, check_speed, describe_bytes
from light_tts.server.api.audio_encoding import CONTENT_TYPES
from light_tts.server.api.boundary.error_bodies import openai_error_response
from light_tts.server.api.openai.routes import (
    CLIENT_CLOSED_REQUEST,
    ERRORS,
    OPENAI_MODEL_ALIASES,
    SynthesisBackend,
    SynthesisJob,
    audio_answer,
    client_of,
)
from light_tts.server.api.request_metrics import VC_ENDPOINT, ClientGone
from light_tts.server.api.request_parsing import parse_bool, parse_number, read_multipart
from light_tts.server.api.voices.voice_store import VoicePrompt, VoiceStore
from light_tts.server.runtime.model_set import DEFAULT_NAME, ModelEntry, resolve_model

ENDPOINT = VC_ENDPOINT


@dataclass
class ConversionRequest:
    source: bytes  # the recording to convert
    voice_id: str | None  # the target: a saved voice ...
    prompt_audio: bytes | None  # ... or a recording of it
    model: str
    response_format: str
    stream: bool
    speed: float
    seed: int | None


def check_audio(data: bytes, name: str, max_bytes: int) -> bytes:
    if not data:
        raise AudioError(f"{name} is empty (0 bytes)", name)
    if len(data) > max_bytes:
        raise TooLargeError(
            f"{name} is {describe_bytes(len(data))}; the limit is {describe_bytes(max_bytes)} (--max_prompt_wav_bytes)",
            name,
        )
    return data


async def read_conversion(request: Request, max_audio_bytes: int, max_body_bytes: int) -> ConversionRequest:
    """The multipart form: audio (the source), voice or prompt_audio (the target), and the options; the body
    within the server's one bound (ServerSettings.max_body_bytes), each recording within max_audio_bytes."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise RequestError(
            "expected a multipart/form-data body with the source as `audio` and `voice` or `prompt_audio`"
        )
    parts = await read_multipart(request, max_body_bytes)
    if "audio" not in parts:
        raise RequestError("missing field audio (the source recording)", "audio")
    if ("voice" in parts) == ("prompt_audio" in parts):
        raise RequestError(
            "give the target voice as voice (a saved voice id) or prompt_audio (a recording), one of them"
        )
    try:
        text = {name: parts[name].decode("utf-8") for name in ("voice", "model", "response_format") if name in parts}
    except UnicodeDecodeError as e:
        raise RequestError(f"form fields must be UTF-8 ({e.reason} at byte {e.start})") from None
    response_format = text.get("response_format", "mp3")
    if response_format not in CONTENT_TYPES:
        raise RequestError(f"response_format must be one of {', '.join(CONTENT_TYPES)}, got {response_format!r}")
    stream = parse_bool(parts.get("stream", b"false"), "stream")
    speed = float(parse_number(parts["speed"], "speed", float)) if "speed" in parts else 1.0
    check_speed(speed, stream)
    seed = check_seed(int(parse_number(parts["seed"], "seed", int)) if "seed" in parts else None)
    prompt_audio = parts.get("prompt_audio")
    return ConversionRequest(
        check_audio(parts["audio"], "audio", max_audio_bytes),
        text.get("voice"),
        None if prompt_audio is None else check_audio(prompt_audio, "prompt_audio", max_audio_bytes),
        text.get("model", DEFAULT_NAME),
        response_format,
        stream,
        speed,
        seed,
    )


def add_voice_conversion(
    router: APIRouter,
    backend: SynthesisBackend,
    store: VoiceStore,
    models: Sequence[ModelEntry],
    max_source_seconds: float,
    max_body_bytes: int,
) -> None:
    form = {
        "type": "object",
        "required": ["audio"],
        "properties": {
            "audio": {
                "type": "string",
                "format": "binary",
                "description": f"the source recording (wav, flac, ogg or mp3), at most {max_source_seconds:g} s "
                f"and {store.limits.max_upload_bytes} bytes (longer or larger: 413)",
            },
            "voice": {"type": "string", "description": "the target voice: a saved voice id (or give prompt_audio)"},
            "prompt_audio": {"type": "string", "format": "binary", "description": "the target voice: a recording"},
            "model": {"type": "string", "default": DEFAULT_NAME},
            "response_format": {"type": "string", "enum": list(CONTENT_TYPES), "default": "mp3"},
            "stream": {"type": "boolean", "default": False, "description": "send the audio as it is encoded"},
            "speed": {"type": "number", "default": 1.0, "description": "only without stream"},
            "seed": {"type": "integer", "minimum": 0},
        },
    }

    @router.post(
        "/v1/audio/voice-conversion",
        summary="Speak a recording again in another voice",
        responses={
            200: {"description": "the audio in `response_format`", "content": {t: {} for t in CONTENT_TYPES.values()}},
            **ERRORS,
        },
        openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form}}}},
    )
    async def convert_voice(request: Request):
        """The source's speech (its speech tokens) in the target voice, as long as the source."""
        received_at = time.monotonic()  # the request trace's first boundary (the form is read below)
        try:
            body = await read_conversion(request, store.limits.max_upload_bytes, max_body_bytes)
            model = resolve_model(models, body.model, OPENAI_MODEL_ALIASES)
            if body.voice_id is not None:
                target = await run_in_threadpool(store.load_features, body.voice_id, models[model].frontend_key)
            else:  # computed by the encode process, through the voice cache
                target = VoicePrompt(hashlib.sha256(body.prompt_audio).hexdigest(), None, None, body.prompt_audio)
            job = SynthesisJob(
                "",
                target,
                body.speed,
                body.stream,
                body.seed,
                endpoint=ENDPOINT,
                client=client_of(request),
                model=model,
                mode=VC,
                source_audio=body.source,
                received_at=received_at,
            )
            return await audio_answer(request, backend.synthesize(job), job, body.response_format, not body.stream)
        except LightTTSError as e:
            return openai_error_response(e)
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
