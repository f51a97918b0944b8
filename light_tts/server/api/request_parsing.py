"""Reading and validating client input in the HTTP worker, before anything reaches a slot.

Form bodies (multipart, or urlencoded without files) are parsed here (not with Starlette's form parser) so that
text fields stay bytes until we decode them strictly: invalid UTF-8 is a 400, not silently re-read as Latin-1.
Sizes are capped while the body streams in, so an oversized upload is refused without being buffered whole.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from light_tts.errors import AudioError, RequestError, TextError, TooLargeError
from light_tts.request_rules import TEXT_MODES, check_seed, check_speed, describe_bytes
from light_tts.server.api.boundary.body_limit import body_too_large
from light_tts.server.runtime.config import ServerConfig
from light_tts.server.runtime.model_set import ModelEntry, check_voice, model_for_voice, refuse_prompt_audio
from light_tts.server.runtime.settings import ServerSettings

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class ZeroShotInputs:
    tts_text: str
    prompt_text: str | None  # None: the prompt has no transcript (cross-lingual)
    prompt_wav: bytes
    stream: bool
    speed: float
    seed: int | None
    tts_model_name: str
    fixed_speech_tokens: int | None
    voice_id: str | None = None  # a saved voice instead of prompt_text + prompt_wav (then both empty)
    instruct_text: str | None = None  # instruct mode's instruction
    mode: str | None = None  # a mode the client asked for (request_rules.resolve_mode)
    voice: str | None = None  # the named voice of a model without prompt audio (voice_id names it; Orpheus)


async def read_form(request: Request, max_bytes: int) -> dict[str, bytes]:
    """Field name -> raw bytes of a multipart/form-data body (file parts included), or of a urlencoded one (a
    form without files, as HTTP clients send one that names a saved voice instead of uploading a prompt)."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type == b"application/x-www-form-urlencoded":
        body = b"".join([chunk async for chunk in body_chunks(request, max_bytes)])
        return parse_urlencoded(body)
    return await read_multipart(request, max_bytes)


def parse_urlencoded(body: bytes) -> dict[str, bytes]:
    """Field name -> raw bytes of an application/x-www-form-urlencoded body (values stay bytes, as multipart
    ones do: urllib's parse_qsl would decode them, then fail to give bytes back for anything but ASCII)."""
    fields = {}
    for pair in body.split(b"&"):
        if pair:
            name, _, value = pair.partition(b"=")
            name, value = (unquote_to_bytes(x.replace(b"+", b" ")) for x in (name, value))
            fields[name.decode("utf-8", "replace")] = value
    return fields


async def body_chunks(request: Request, max_bytes: int):
    """The body as it streams in. Over max_bytes: 413, from its Content-Length before anything is read, or as
    soon as it streams past the limit (a body that stalls or trickles is cut by body_deadline.BodyDeadline)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise body_too_large(max_bytes, int(declared))
    num_bytes = 0
    async for chunk in request.stream():
        num_bytes += len(chunk)
        if num_bytes > max_bytes:
            raise body_too_large(max_bytes)
        yield chunk


async def read_multipart(request: Request, max_bytes: int) -> dict[str, bytes]:
    """Field name -> raw bytes (file parts included) of a multipart/form-data body, bounded as body_chunks says."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise RequestError("expected a multipart/form-data body (fields tts_text, prompt_text, prompt_wav)")
    parts: dict[str, bytes] = {}
    current = {"header": b"", "value": b"", "disposition": b"", "data": bytearray()}

    def on_header_field(data, start, end):
        current["header"] += data[start:end]

    def on_header_value(data, start, end):
        current["value"] += data[start:end]

    def on_header_end():
        if current["header"].lower() == b"content-disposition":
            current["disposition"] = current["value"]
        current["header"], current["value"] = b"", b""

    def on_part_data(data, start, end):
        current["data"] += data[start:end]

    def on_part_end():
        _, disposition = parse_options_header(current["disposition"])
        if b"name" not in disposition:
            raise RequestError("a multipart part has no field name")
        parts[disposition[b"name"].decode("utf-8", "replace")] = bytes(current["data"])
        current["disposition"], current["data"] = b"", bytearray()

    parser = MultipartParser(
        options[b"boundary"],
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in body_chunks(request, max_bytes):
            parser.write(chunk)
        parser.finalize()
    except (RequestError, ClientDisconnect):  # the client left mid-body: nobody to answer (BodyDeadline)
        raise
    except Exception as e:  # python-multipart raises its own errors on malformed bodies
        raise RequestError(f"malformed multipart body: {e}") from None
    return parts


def decode_text(raw: bytes, name: str, cfg: ServerConfig, allow_empty: bool = False) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TextError(f"{name} is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    check_text(text, name, cfg, allow_empty)
    return text


def check_text(text: str, name: str, cfg: ServerConfig, allow_empty: bool = False) -> None:
    """The checks every entry point applies to a text (form field, JSON field, WebSocket piece) before it
    reaches a slot; what is speakable is the encode process's verdict (text_norm)."""
    if not allow_empty and not text.strip():
        raise TextError(f"{name} is empty")
    if len(text) > cfg.max_text_chars:
        raise TextError(f"{name} has {len(text)} characters; the limit is {cfg.max_text_chars}")
    if "\x00" in text:
        raise TextError(f"{name} contains a NUL character")
    surrogate = _LONE_SURROGATE.search(text)
    if surrogate:  # JSON can carry "\ud800"; such a string has no UTF-8 form
        raise TextError(
            f"{name} contains a lone surrogate (U+{ord(surrogate.group()):04X}) at position "
            f"{surrogate.start()}: not valid Unicode"
        )


def check_prompt_wav(wav: bytes, cfg: ServerConfig) -> None:
    """Cheap checks here; decoding the audio (format, duration) is the encode process's job."""
    if not wav:
        raise AudioError("prompt_wav is empty (0 bytes)")
    if len(wav) > cfg.max_prompt_wav_bytes:
        raise TooLargeError(
            f"prompt_wav is {describe_bytes(len(wav))}; the limit is "
            f"{describe_bytes(cfg.max_prompt_wav_bytes)} (--max_prompt_wav_bytes)",
            "prompt_wav",
        )


def parse_bool(raw: bytes | str, name: str) -> bool:
    text = (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise RequestError(f"{name} must be true or false, got {text!r}")


def parse_number(raw: bytes, name: str, kind: type) -> float | int:
    try:
        value = kind(raw.decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError):
        raise RequestError(f"{name} must be a{'n integer' if kind is int else ' number'}") from None
    if kind is float and not math.isfinite(value):
        raise RequestError(f"{name} must be finite")
    return value


def check_fixed_speech_tokens(value: object, settings: ServerSettings) -> int | None:
    """None, or the number of speech tokens every sentence must get (1 .. the engine's per-request bound)."""
    if value is None:
        return None
    bound = settings.max_fixed_speech_tokens
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= bound:
        raise RequestError(f"fixed_speech_tokens must be an integer in [1, {bound}], got {value!r}")
    return value


def parse_mode(raw: str | None) -> str | None:
    """A request's `mode` field: None or one of the text modes (a 400 names them)."""
    if raw is None:
        return None
    if raw not in TEXT_MODES:
        raise RequestError(f"mode must be one of {', '.join(TEXT_MODES)}, got {raw!r}")
    return raw


async def parse_zero_shot(request: Request, settings: ServerSettings) -> ZeroShotInputs:
    cfg = settings.cfg
    parts = await read_form(request, settings.max_body_bytes)
    voice_id = decode_text(parts["voice_id"], "voice_id", cfg) if "voice_id" in parts else None
    prompt_fields = ("prompt_text", "prompt_wav")
    if "tts_model_name" in parts:
        tts_model_name = decode_text(parts["tts_model_name"], "tts_model_name", cfg)
    else:  # no model named: a named voice's model (voice_id=tara), else the default
        tts_model_name = settings.models[model_for_voice(settings.models, None, voice_id or "")].name
    index = settings.model_index(tts_model_name)  # an unknown name is the caller's 404
    if index is not None and not settings.models[index].facts.takes_prompt_audio:
        return parse_named_voice(parts, settings.models[index], voice_id, settings)
    if voice_id is not None and any(name in parts for name in prompt_fields):
        raise RequestError("give voice_id (a saved voice) or prompt_wav (and its prompt_text), not both")
    for name in ("tts_text",) + (() if voice_id is not None else ("prompt_wav",)):
        if name not in parts:
            raise RequestError(f"missing field {name}" + ("" if name == "tts_text" else " (or give voice_id)"))
    if voice_id is None:
        check_prompt_wav(parts["prompt_wav"], cfg)
    return ZeroShotInputs(
        tts_text=decode_text(parts["tts_text"], "tts_text", cfg),
        # a blank prompt_text is a 400 (leave the field out for a voice without a transcript: cross-lingual)
        prompt_text=None if "prompt_text" not in parts else decode_text(parts["prompt_text"], "prompt_text", cfg),
        prompt_wav=parts.get("prompt_wav", b""),
        tts_model_name=tts_model_name,
        voice_id=voice_id,
        **parse_options(parts, settings),
    )


def parse_named_voice(
    parts: dict[str, bytes], entry: ModelEntry, voice: str | None, settings: ServerSettings
) -> ZeroShotInputs:
    """The form for a model that speaks in named voices (Orpheus): voice_id names one; a prompt is refused (a mode
    or an instruction too, when the request is submitted: model_set.has_modes)."""
    if "prompt_wav" in parts or "prompt_text" in parts:
        raise refuse_prompt_audio(entry)
    if voice is None:
        raise RequestError(f"missing field voice_id: model {entry.name!r} speaks as {', '.join(entry.facts.voices)}")
    if "tts_text" not in parts:
        raise RequestError("missing field tts_text")
    return ZeroShotInputs(
        tts_text=decode_text(parts["tts_text"], "tts_text", settings.cfg),
        prompt_text=None,
        prompt_wav=b"",
        tts_model_name=entry.name,
        voice=check_voice(entry, voice),
        **parse_options(parts, settings),
    )


def parse_options(parts: dict[str, bytes], settings: ServerSettings) -> dict:
    """stream, speed, seed, fixed_speech_tokens, instruct_text and mode of a form, checked."""
    stream = parse_bool(parts.get("stream", b"false"), "stream")
    speed = float(parse_number(parts["speed"], "speed", float)) if "speed" in parts else 1.0
    check_speed(speed, stream)
    seed = check_seed(int(parse_number(parts["seed"], "seed", int)) if "seed" in parts else None)
    fixed = parts.get("fixed_speech_tokens")
    fixed_speech_tokens = check_fixed_speech_tokens(
        None if fixed is None else int(parse_number(fixed, "fixed_speech_tokens", int)), settings
    )
    optional = {
        name: decode_text(parts[name], name, settings.cfg, allow_empty=True) if name in parts else None
        for name in ("instruct_text", "mode")
    }
    return {
        "stream": stream,
        "speed": speed,
        "seed": seed,
        "fixed_speech_tokens": fixed_speech_tokens,
        "instruct_text": optional["instruct_text"],
        "mode": parse_mode(optional["mode"]),
    }
