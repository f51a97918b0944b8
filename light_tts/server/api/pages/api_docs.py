"""What /docs and /openapi.json say about the endpoints: the multipart form of /inference_zero_shot (parsed by our
own strict streaming parser, so FastAPI cannot infer it), the audio responses, the JSON error body, and the API
keys (a bearer security scheme and a 401 on every operation that needs one), and no 422 (bad input is a 400)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response

from light_tts.families import family_of
from light_tts.request_rules import MAX_SPEED, MIN_SPEED, SEED_LIMIT, TEXT_MODES
from light_tts.server.api.boundary.auth import ApiKeyMiddleware
from light_tts.server.api.boundary.error_bodies import is_openai_path
from light_tts.server.api.openai.schema import ErrorBody, OpenAIErrorBody
from light_tts.server.runtime.settings import ServerSettings


class PCMResponse(Response):
    """Raw int16 little-endian mono PCM at the model's sample rate, no header."""

    media_type = "application/octet-stream"


def error_responses(*statuses: int, is_openai: bool = False) -> dict[int | str, dict[str, Any]]:
    reasons = {
        400: "bad input (the message names the field)",
        401: "a missing or wrong API key",
        404: "no such saved voice (voice_id) or model",
        408: "the request body stalled",
        413: "the body or what it asks for is too large",
        429: "every request slot is busy (see Retry-After)",
        499: "the client left first",
        503: "not ready, shutting down or a worker failed",
        504: "the request ran past --request_timeout_s",
    }
    model = OpenAIErrorBody if is_openai else ErrorBody
    body = {"application/json": {"schema": model.model_json_schema()}}  # inline: whatever the route's class
    return {status: {"description": reasons[status], "content": body} for status in statuses}


def audio_responses(settings: ServerSettings) -> dict[int | str, dict[str, Any]]:
    rate = settings.model.sample_rate
    return {
        200: {
            "description": f"int16 little-endian mono PCM at {rate} Hz, no header; streamed in chunks when stream=true",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        },
        **error_responses(400, 404, 413, 429, 503, 504),
    }


def control_tags(settings: ServerSettings) -> tuple[str, ...]:
    """The default model's control tags (its family's tokenizer tokens that a text may carry)."""
    return family_of(settings.models[0].model_dir).CONTROL_TAGS


def api_description(settings: ServerSettings) -> str:
    """The top of /docs: the modes and the control tags (docs/openai-api.md has the details)."""
    return (
        "Text to speech in the voice of a prompt. **Modes**: zero_shot (the voice's transcript), instruct "
        "(`instructions` / `instruct_text`: how to speak), cross_lingual (a voice without a transcript, or "
        "`mode: cross_lingual`), and voice conversion (`POST /v1/audio/voice-conversion`). **Control tags** "
        "in a text are spoken as such, each one token: "
        + ", ".join(f"`{t}`" for t in control_tags(settings))
        + ". Text that only looks like a tag (`See [1]`, `[sic]`) is read as text."
    )


def zero_shot_request_body(settings: ServerSettings) -> dict[str, Any]:
    """The multipart form of /inference_zero_shot, as request_parsing.parse_zero_shot reads it."""
    cfg = settings.cfg
    text = {"type": "string", "maxLength": cfg.max_text_chars}
    tags = ", ".join(control_tags(settings))
    properties = {
        "tts_text": {**text, "description": f"the text to speak; control tags are spoken as such: {tags}"},
        "prompt_text": {
            **text,
            "description": "what the voice prompt says (its transcript); without it (or blank) "
            "the voice is spoken cross-lingual",
        },
        "instruct_text": {
            **text,
            "description": "how to speak (style, emotion, pace, dialect), e.g. 'Speak slowly "
            "and softly.': instruct mode, in the prompt's voice",
        },
        "mode": {
            "type": "string",
            "enum": list(TEXT_MODES),
            "description": "force a mode (default: instruct with instruct_text, zero_shot with a transcript, "
            "cross_lingual without)",
        },
        "prompt_wav": {
            "type": "string",
            "format": "binary",
            "maxLength": cfg.max_prompt_wav_bytes,
            "description": f"the voice prompt: wav, flac, ogg or mp3, any rate, at most "
            f"{cfg.max_prompt_seconds:g} s; required unless voice_id",
        },
        "voice_id": {
            "type": "string",
            "description": "a saved voice (POST /v1/audio/voices) instead of "
            "prompt_text and prompt_wav; for a model that speaks in named "
            "voices (Orpheus) one of its names, which without "
            "tts_model_name also picks that model",
        },
        "stream": {"type": "boolean", "default": False, "description": "stream the audio as it is made"},
        "speed": {
            "type": "number",
            "minimum": MIN_SPEED,
            "maximum": MAX_SPEED,
            "default": 1.0,
            "description": "speaking rate (only without streaming)",
        },
        "seed": {
            "type": "integer",
            "minimum": 0,
            "maximum": SEED_LIMIT - 1,
            "description": "same inputs and seed give the same audio; random when absent",
        },
        "tts_model_name": {"type": "string", "default": "default", "enum": ["default", *settings.model_names]},
        "fixed_speech_tokens": {
            "type": "integer",
            "minimum": 1,
            "maximum": settings.max_fixed_speech_tokens,
            "description": f"benchmarks: every sentence gets exactly this many speech tokens "
            f"({settings.model.token_rate} per second of audio)",
        },
    }
    schema = {"type": "object", "required": ["tts_text"], "properties": properties}
    # without a file (a saved voice), a urlencoded form works as well
    no_file = {**schema, "properties": {k: v for k, v in properties.items() if k != "prompt_wav"}}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": schema},
                "application/x-www-form-urlencoded": {"schema": no_file},
            },
        }
    }


def finish_openapi(app: FastAPI, auth) -> None:
    """What FastAPI's generated schema gets wrong or cannot know: a validation failure is our 400 (openai_schema's
    handler), never FastAPI's 422; with API keys, a bearer scheme (the Authorize button of /docs) and a 401
    answer on every operation the middleware protects."""
    is_public = ApiKeyMiddleware(None, auth).is_public

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.get("schemas", {}).pop(name, None)
            if auth.is_enabled:
                components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for path, item in schema["paths"].items():
                errors = error_responses(400, 401, is_openai=is_openai_path(path))
                for operation in item.values():
                    if operation["responses"].pop("422", None) is not None:
                        operation["responses"].setdefault("400", errors[400])
                    if auth.is_enabled and not is_public(path):
                        operation["security"] = [{"bearer": []}]
                        operation["responses"].setdefault("401", errors[401])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
