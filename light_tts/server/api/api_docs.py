"""What /docs and /openapi.json say about the endpoints: the multipart form of /inference_zero_shot (parsed by our
own strict streaming parser, so FastAPI cannot infer it), the audio responses, the JSON error body, and the API
keys (a bearer security scheme and a 401 on every operation that needs one), and no 422 (bad input is a 400)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response

from light_tts.request_rules import MAX_SPEED, MIN_SPEED, SEED_LIMIT
from light_tts.server.api.auth import ApiKeyMiddleware
from light_tts.server.api.openai.schema import ErrorBody
from light_tts.server.runtime.settings import ServerSettings


class PCMResponse(Response):
    """Raw int16 little-endian mono PCM at the model's sample rate, no header."""

    media_type = "application/octet-stream"


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    reasons = {400: "bad input (the message names the field)", 401: "a missing or wrong API key",
               404: "no such saved voice (voice_id) or model", 408: "the request body stalled",
               413: "the body or what it asks for is too large",
               429: "every request slot is busy (see Retry-After)", 499: "the client left first",
               503: "not ready, shutting down or a worker failed", 504: "the request ran past --request_timeout_s"}
    body = {"application/json": {"schema": ErrorBody.model_json_schema()}}  # inline: whatever the route's class
    return {status: {"description": reasons[status], "content": body} for status in statuses}


def audio_responses(settings: ServerSettings) -> dict[int | str, dict[str, Any]]:
    rate = settings.model.sample_rate
    return {200: {"description": f"int16 little-endian mono PCM at {rate} Hz, no header; streamed in chunks "
                                 "when stream=true",
                  "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            **error_responses(400, 404, 413, 429, 503, 504)}


def zero_shot_request_body(settings: ServerSettings) -> dict[str, Any]:
    """The multipart form of /inference_zero_shot, as request_parsing.parse_zero_shot reads it."""
    cfg = settings.cfg
    text = {"type": "string", "maxLength": cfg.max_text_chars}
    properties = {
        "tts_text": {**text, "description": "the text to speak"},
        "prompt_text": {**text, "description": "what the voice prompt says (its transcript); required unless "
                                               "voice_id"},
        "prompt_wav": {"type": "string", "format": "binary", "maxLength": cfg.max_prompt_wav_bytes,
                       "description": f"the voice prompt: wav, flac, ogg or mp3, any rate, at most "
                                      f"{cfg.max_prompt_seconds:g} s; required unless voice_id"},
        "voice_id": {"type": "string", "description": "a saved voice (POST /v1/audio/voices) instead of "
                                                      "prompt_text and prompt_wav; for a model that speaks in named "
                                                      "voices (Orpheus) one of its names, which without "
                                                      "tts_model_name also picks that model"},
        "stream": {"type": "boolean", "default": False, "description": "stream the audio as it is made"},
        "speed": {"type": "number", "minimum": MIN_SPEED, "maximum": MAX_SPEED, "default": 1.0,
                  "description": "speaking rate (only without streaming)"},
        "seed": {"type": "integer", "minimum": 0, "maximum": SEED_LIMIT - 1,
                 "description": "same inputs and seed give the same audio; random when absent"},
        "tts_model_name": {"type": "string", "default": "default", "enum": ["default", *settings.model_names]},
        "fixed_speech_tokens": {"type": "integer", "minimum": 1, "maximum": settings.max_fixed_speech_tokens,
                                "description": f"benchmarks: every sentence gets exactly this many speech tokens "
                                               f"({settings.model.token_rate} per second of audio)"},
    }
    schema = {"type": "object", "required": ["tts_text"], "properties": properties}
    # without a file (a saved voice), a urlencoded form works as well
    no_file = {**schema, "properties": {k: v for k, v in properties.items() if k != "prompt_wav"}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema},
                                                          "application/x-www-form-urlencoded": {"schema": no_file}}}}


def finish_openapi(app: FastAPI, auth) -> None:
    """What FastAPI's generated schema gets wrong or cannot know: a validation failure is our 400 (openai_schema's
    handler), never FastAPI's 422; with API keys, a bearer scheme (the Authorize button of /docs) and a 401
    answer on every operation the middleware protects."""
    is_public = ApiKeyMiddleware(None, auth).is_public

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            components = schema.setdefault("components", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.get("schemas", {}).pop(name, None)
            if auth.is_enabled:
                components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            for path, item in schema["paths"].items():
                for operation in item.values():
                    if operation["responses"].pop("422", None) is not None:
                        operation["responses"].setdefault("400", error_responses(400)[400])
                    if auth.is_enabled and not is_public(path):
                        operation["security"] = [{"bearer": []}]
                        operation["responses"].setdefault("401", error_responses(401)[401])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
