"""The OpenAI-compatible HTTP endpoints and saved-voice CRUD, on top of a synthesis backend.

The backend is the server's way to run a request (speech_backend.py, over the HTTP manager: slots,
encode/LLM/decode processes); this module only speaks the protocols: validation, voices, encoding, SSE, status
codes. The two text-in WebSockets are in speech_ws_api.py. Blocking store calls (SQLite, files) run in the
thread pool. A client that hangs up before its answer starts cancels the work (unless_disconnected); after
that, Starlette cancels the streaming body, which closes the synthesis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from light_tts.errors import LightTTSError, RequestError, TextError
from light_tts.server.api.audio_encoding import CONTENT_TYPES, encode_file, make_encoder
from light_tts.server.api.boundary.error_bodies import openai_error_response
from light_tts.server.api.openai.schema import (
    ModelCard,
    ModelList,
    OpenAIErrorBody,
    SpeechRequest,
    SpeechUsage,
    VoiceDeleted,
    VoiceList,
    VoiceObject,
    audio_delta_event,
    audio_done_event,
    error_event,
)
from light_tts.server.api.request_metrics import ClientGone, cut_on_failure, unless_disconnected
from light_tts.server.api.request_parsing import read_multipart
from light_tts.server.api.voices.voice_store import ID_PREFIX, PromptFeatures, VoicePrompt, VoiceStore
from light_tts.server.runtime.model_set import (
    ModelEntry,
    check_voice,
    model_for_voice,
    refuse_prompt_audio,
    voice_model,
)

log = logging.getLogger("light_tts.openai")
SAMPLE_RATE = 24000
# OpenAI's model names, accepted for the default model so that clients with a fixed model name work.
OPENAI_MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
ERRORS = {status: {"model": OpenAIErrorBody} for status in (400, 401, 404, 408, 409, 413, 429, 503, 504)}
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request whose client left first


@dataclass
class SynthesisJob:
    text: str
    prompt: VoicePrompt | None  # a saved voice (models with prompt audio), or None with `voice`
    speed: float = 1.0
    is_streamed: bool = True  # False: the backend may return the whole audio at once (speed needs that)
    seed: int | None = None
    fixed_speech_tokens: int | None = None
    endpoint: str = "v1_audio_speech"  # the metrics' label
    client: str = ""  # the client's address (--max_requests_per_client)
    usage: SpeechUsage | None = None  # set by the backend once the audio is complete
    model: int = 0  # index of the model in ServerSettings.models
    received_at: float | None = None  # when the route started (the request trace's first boundary)
    server_timing: str = ""  # the Server-Timing header of its stages, set by the backend with the first chunk
    instructions: str | None = None  # instruct mode's instruction
    mode: str | None = None  # a mode the client asked for (request_rules.resolve_mode decides)
    source_audio: bytes = b""  # voice conversion (mode vc): the recording to speak in the voice; no text
    voice: str | None = None  # the model's named voice (models without prompt audio: Orpheus)


class SynthesisBackend(Protocol):
    def synthesize(self, job: SynthesisJob) -> AsyncIterator[bytes]:
        """int16 LE mono 24 kHz chunks; raises LightTTSError (before the first chunk for bad input or overload).
        Closing the iterator early (the client left) must abort the request."""

    async def compute_features(self, audio: bytes, client: str = "", model: int = 0) -> tuple[PromptFeatures, float]:
        """The prompt features of an uploaded recording and its seconds, by the frontend of model index `model` (the
        encode process's job); raises AudioError for audio that is not a usable prompt."""


async def first_chunk(chunks) -> bytes:
    """Wait for the first chunk before answering, so that an early failure still gets its HTTP status."""
    try:
        return await anext(chunks, b"")
    except BaseException:
        await chunks.aclose()
        raise


def timing_header(job: SynthesisJob) -> dict[str, str] | None:
    """Server-Timing of the job's stages up to its first audio (the backend's trace), when it has one."""
    return {"Server-Timing": job.server_timing} if job.server_timing else None


def client_of(request: Request) -> str:
    return request.client.host if request.client else ""


async def load_voice(store: VoiceStore, entry: ModelEntry, voice: str) -> tuple[VoicePrompt | None, str | None]:
    """A request's `voice` for its model: (the saved voice, None) for a model with prompt audio (an id or an
    alias; NotFoundError for an unknown one), (None, the name) for one with named voices (RequestError naming
    them; a saved voice's id is refused as prompt audio)."""
    if entry.facts.takes_prompt_audio:
        return await run_in_threadpool(store.load_features, voice, entry.frontend_key), None
    if voice.startswith(ID_PREFIX) and voice not in entry.facts.voices:
        raise refuse_prompt_audio(entry)
    return None, check_voice(entry, voice)


def named_voices(models: Sequence[ModelEntry], created_at: int) -> list[VoiceObject]:
    """The models' built-in voices (a name in the prompt, no recording), for the voice list."""
    return [
        VoiceObject(id=voice, name=voice, text="", duration_s=0.0, created_at=created_at, model=m.name)
        for m in models
        for voice in m.facts.voices
    ]


def create_openai_router(
    backend: SynthesisBackend, store: VoiceStore, models: Sequence[ModelEntry], max_body_bytes: int
) -> APIRouter:
    router = APIRouter()
    created_at = int(time.time())

    @router.post(
        "/v1/audio/speech",
        responses={
            200: {
                "description": "the audio in `response_format` (chunked as it is encoded), or SSE events",
                "content": {t: {} for t in (*CONTENT_TYPES.values(), "text/event-stream")},
            },
            **ERRORS,
        },
        summary="Speak a text with a saved voice (OpenAI)",
    )
    async def create_speech(body: SpeechRequest, request: Request):
        """Speak `input` with a saved voice, in the style `instructions` ask for if any: streamed as it is
        encoded, or one file with exact headers (wav and flac by default, any format with `stream: false`).
        Control tags in `input` (e.g. `[laughter]`, `<strong>...</strong>`) are spoken as such."""
        received_at = time.monotonic()  # the body is parsed already (FastAPI): the trace's parse stage is ~0
        try:
            # unknown: 404 naming the models; tts-1 with an Orpheus voice: the Orpheus model
            model = model_for_voice(models, body.model, body.voice, OPENAI_MODEL_ALIASES)
            prompt, voice = await load_voice(store, models[model], body.voice)
            # the engine streams at speed 1 whatever the response's form, so every format carries the same audio
            job = SynthesisJob(
                body.input,
                prompt,
                body.speed,
                body.speed == 1.0,
                body.seed,
                body.fixed_speech_tokens,
                client=client_of(request),
                model=model,
                instructions=body.instructions,
                mode=body.mode,
                received_at=received_at,
                voice=voice,
            )
            return await audio_answer(
                request,
                backend.synthesize(job),
                job,
                body.response_format,
                not body.is_streamed(),
                is_sse=body.stream_format == "sse",
            )
        except LightTTSError as e:
            return openai_error_response(e)
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it; keeps the log quiet

    @router.post(
        "/v1/audio/voices",
        status_code=201,
        response_model=VoiceObject,
        responses=ERRORS,
        summary="Save a voice: a recording and its transcript",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["audio", "name"],
                            "properties": {
                                "audio": {"type": "string", "format": "binary", "description": "wav, flac, ogg or mp3"},
                                "text": {
                                    "type": "string",
                                    "description": "the transcript (the prompt text); leave it "
                                    "out for a voice without one (spoken "
                                    "cross-lingual); blank: 400",
                                },
                                "name": {"type": "string"},
                                "model": {
                                    "type": "string",
                                    "description": "the model whose frontend computes the "
                                    "features (default: the first that takes prompt audio; a model of another "
                                    "frontend computes its own "
                                    "from the stored audio when it uses the voice)",
                                },
                            },
                        }
                    }
                },
            }
        },
    )
    async def create_voice(request: Request):
        """Save a voice: its prompt features are computed once, now, by the frontend of the model named in `model`
        (default: the first that takes prompt audio; one without, Orpheus, is a 400); a failure saves nothing."""
        try:
            name, text, audio, model_name = await read_voice_upload(request, max_body_bytes)
            # the model named (404 unknown, 400 without prompt audio), else the first that takes prompt audio
            model = voice_model(models, model_name, OPENAI_MODEL_ALIASES)
            await run_in_threadpool(store.check_upload, name, text, audio)  # cheap checks before the model runs
            features, duration_s = await unless_disconnected(
                request, backend.compute_features(audio, client_of(request), model)
            )
            # a model of another frontend computes its own features from the stored audio when it uses the voice
            voice = await run_in_threadpool(
                store.create, name, text, audio, features, duration_s, models[model].frontend_key
            )
        except LightTTSError as e:
            return openai_error_response(e)
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        aliases = store.aliases_of(await run_in_threadpool(store.list)).get(voice.id, [])
        return JSONResponse(VoiceObject.of(voice, aliases).model_dump(), status_code=201)

    # a saved voice has no `model` (exclude_none keeps its wire shape); a model's named voice says whose it is
    @router.get(
        "/v1/audio/voices",
        response_model=VoiceList,
        response_model_exclude_none=True,
        responses=ERRORS,
        summary="The saved voices, then the models' named voices",
    )
    async def list_voices():
        """Saved voices (any model with prompt audio speaks them), then each model's named voices (Orpheus':
        `model` says whose; their id is the name)."""
        voices = await run_in_threadpool(store.list)
        aliases = store.aliases_of(voices)
        saved = [VoiceObject.of(v, aliases.get(v.id, [])) for v in voices]
        return VoiceList(data=saved + named_voices(models, created_at))

    @router.get(
        "/v1/audio/voices/{voice_id}",
        response_model=VoiceObject,
        responses=ERRORS,
        summary="One saved voice (by id or alias), or a model's named voice",
    )
    async def get_voice(voice_id: str):
        named = [v for v in named_voices(models, created_at) if v.id == voice_id]
        if named:
            return named[0]
        try:
            voice = await run_in_threadpool(store.find, voice_id)
            return VoiceObject.of(voice, store.aliases_of(await run_in_threadpool(store.list)).get(voice.id, []))
        except LightTTSError as e:
            return openai_error_response(e)

    @router.delete(
        "/v1/audio/voices/{voice_id}", response_model=VoiceDeleted, responses=ERRORS, summary="Delete a saved voice"
    )
    async def delete_voice(voice_id: str):
        """Requests already using the voice finish with it; later ones get 404."""
        try:
            await run_in_threadpool(store.delete, voice_id)
        except LightTTSError as e:
            return openai_error_response(e)
        return VoiceDeleted(id=voice_id)

    @router.get("/v1/models", response_model=ModelList, responses=ERRORS, summary="The served models (OpenAI)")
    async def list_models():
        return ModelList(data=[ModelCard(id=m.name, created=created_at) for m in models])

    return router


async def audio_answer(request: Request, chunks, job: SynthesisJob, fmt: str, is_whole: bool, is_sse: bool = False):
    """The answer of a synthesis: it waits for the first chunk (so that an early failure still gets its HTTP
    status), then sends the whole audio as one file with exact headers, or streams it as it is encoded (SSE
    events with `is_sse`), with the job's Server-Timing header. A failure after the headers cuts the transfer,
    which the client sees (one log line, no traceback); in SSE it is the stream's last event."""
    first = await unless_disconnected(request, first_chunk(chunks))
    if is_whole:
        audio = await unless_disconnected(request, rest_of(first, chunks))
        return Response(encode_file(fmt, audio, SAMPLE_RATE), media_type=CONTENT_TYPES[fmt], headers=timing_header(job))
    if is_sse:
        return StreamingResponse(
            sse_body(first, chunks, job, fmt), media_type="text/event-stream", headers=timing_header(job)
        )
    return StreamingResponse(
        cut_on_failure(encoded(first, chunks, fmt), f"{job.endpoint} request"),
        media_type=CONTENT_TYPES[fmt],
        headers=timing_header(job),
    )


async def rest_of(first: bytes, chunks) -> bytes:
    async with aclosing(chunks):
        return first + b"".join([c async for c in chunks])


async def encoded(first: bytes, chunks, fmt: str):
    """The response_format bytes as each chunk is encoded; closing this closes (aborts) the synthesis."""
    encoder = make_encoder(fmt, SAMPLE_RATE)
    try:
        async with aclosing(chunks):
            if out := encoder.encode(first):
                yield out
            async for chunk in chunks:
                if out := encoder.encode(chunk):
                    yield out
        yield encoder.finish()
    finally:
        encoder.close()


async def sse_body(first: bytes, chunks, job: SynthesisJob, fmt: str):
    try:
        async with aclosing(encoded(first, chunks, fmt)) as pieces:
            async for piece in pieces:
                if piece:
                    yield audio_delta_event(piece)
        yield audio_done_event(job.usage or SpeechUsage.of(0, 0))
    except Exception as e:  # after the 200: the error is the stream's last event
        if not isinstance(e, LightTTSError):
            log.exception("speech stream failed")
        yield error_event(e)


async def read_voice_upload(request: Request, max_body_bytes: int) -> tuple[str, str | None, bytes, str | None]:
    """The multipart fields audio, text, name and model (None when absent); a body over the limit is refused
    before it is read (413); one that stalls or trickles is cut by body_deadline.BodyDeadline (408). No `text`
    field: a voice without a transcript (None; cross-lingual); a `text` field that is blank is a mistake (a 400),
    not a way to say that."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise RequestError("expected a multipart/form-data body with fields audio, text and name")
    parts = await read_multipart(request, max_body_bytes)
    for field in ("audio", "name"):
        if field not in parts:
            raise RequestError(f"missing field {field}", field)
    try:
        name, text = parts["name"].decode("utf-8"), parts["text"].decode("utf-8") if "text" in parts else None
        model = parts["model"].decode("utf-8") if "model" in parts else None
    except UnicodeDecodeError as e:
        raise TextError(f"name, text and model must be UTF-8 ({e.reason} at byte {e.start})") from None
    if text is not None and not text.strip():
        raise TextError(
            "text is empty: give the recording's transcript, or leave the field out for a voice without one", "text"
        )
    return name, text, parts["audio"], model
