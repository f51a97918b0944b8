"""What /docs and /openapi.json say about the endpoints: the multipart form of /inference_zero_shot (parsed by our
own strict streaming parser, so FastAPI cannot infer it), the audio responses and the JSON error body."""

from __future__ import annotations

from typing import Any

from fastapi.responses import Response
from pydantic import BaseModel

from light_tts.request_rules import MAX_SPEED, MIN_SPEED, SEED_LIMIT
from light_tts.server.settings import ServerSettings


class PCMResponse(Response):
    """Raw int16 little-endian mono PCM at the model's sample rate, no header."""

    media_type = "application/octet-stream"


class ErrorBody(BaseModel):
    error: str
    kind: str  # light_tts.errors.ErrorKind


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    reasons = {400: "bad input (the message names the field)", 413: "the body or what it asks for is too large",
               429: "every request slot is busy (see Retry-After)", 499: "the client left first",
               503: "not ready, shutting down or a worker failed", 504: "the request ran past --request_timeout_s"}
    body = {"application/json": {"schema": ErrorBody.model_json_schema()}}  # inline: whatever the route's class
    return {status: {"description": reasons[status], "content": body} for status in statuses}


def audio_responses(settings: ServerSettings) -> dict[int | str, dict[str, Any]]:
    rate = settings.model.sample_rate
    return {200: {"description": f"int16 little-endian mono PCM at {rate} Hz, no header; streamed in chunks "
                                 "when stream=true",
                  "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            **error_responses(400, 413, 429, 503, 504)}


def zero_shot_request_body(settings: ServerSettings) -> dict[str, Any]:
    """The multipart form of /inference_zero_shot, as request_parsing.parse_zero_shot reads it."""
    cfg = settings.cfg
    text = {"type": "string", "maxLength": cfg.max_text_chars}
    properties = {
        "tts_text": {**text, "description": "the text to speak"},
        "prompt_text": {**text, "description": "what the voice prompt says (its transcript)"},
        "prompt_wav": {"type": "string", "format": "binary", "maxLength": cfg.max_prompt_wav_bytes,
                       "description": f"the voice prompt: wav, flac, ogg or mp3, any rate, at most "
                                      f"{cfg.max_prompt_seconds:g} s"},
        "stream": {"type": "boolean", "default": False, "description": "stream the audio as it is made"},
        "speed": {"type": "number", "minimum": MIN_SPEED, "maximum": MAX_SPEED, "default": 1.0,
                  "description": "speaking rate (only without streaming)"},
        "seed": {"type": "integer", "minimum": 0, "maximum": SEED_LIMIT - 1,
                 "description": "same inputs and seed give the same audio; random when absent"},
        "tts_model_name": {"type": "string", "default": "default", "enum": ["default", settings.model.name]},
        "fixed_speech_tokens": {"type": "integer", "minimum": 1, "maximum": settings.max_fixed_speech_tokens,
                                "description": f"benchmarks: every sentence gets exactly this many speech tokens "
                                               f"({settings.model.token_rate} per second of audio)"},
    }
    schema = {"type": "object", "required": ["tts_text", "prompt_text", "prompt_wav"], "properties": properties}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}
