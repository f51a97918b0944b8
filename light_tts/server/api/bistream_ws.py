"""WebSocket /inference_zero_shot_bistream: text arrives in pieces, audio leaves as it is made.

Protocol: JSON {"prompt_text"?, "instruct_text"?, "mode"?, "tts_model_name"?, "seed"?, "fixed_speech_tokens"?},
one binary frame of prompt wav, JSON {"tts_text"} pieces, JSON {"finish": true}; a saved voice replaces the prompt:
{"voice_id", ...} and no wav frame. Without prompt_text the voice has no transcript (cross-lingual); with
instruct_text the request is in instruct mode. The server sends binary int16 PCM frames and closes with 1000; on error
it sends JSON {"error": ...}
and closes with 1003 (bad wav), 1008 (bad message, an unknown voice, or no message for --ws_idle_timeout_s
before the finish), 1013 (overloaded) or 1011.
A reader task takes the client's messages while the handler sends audio; the reader's failures (a malformed
message, a disconnect) reach the sender through the request's event queue.
"""

from __future__ import annotations

import asyncio
import json

from fastapi import WebSocket
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from light_tts.errors import LightTTSError, RequestError, SlowClientError, TextError
from light_tts.request_rules import check_seed
from light_tts.server.api.http_manager import HttpServerManager, RequestHandle
from light_tts.server.api.request_metrics import ActiveRequest, ClientGone, record_finished, record_rejected
from light_tts.server.api.request_parsing import check_fixed_speech_tokens, check_prompt_wav, check_text, parse_mode
from light_tts.server.api.voices.voice_store import VoicePrompt, VoiceStore
from light_tts.server.ipc import stage_trace
from light_tts.server.runtime.config import ServerConfig
from light_tts.server.runtime.settings import ServerSettings

ENDPOINT = "inference_zero_shot_bistream"
MAX_FRAME_BYTES = 96000  # 2 s of audio: a decode step that caught up on many tokens still reaches clients in
# frames that common WebSocket clients accept (websockets' default limit is 1 MiB)


def close_code(error: LightTTSError) -> int:
    if error.kind == "bad_audio":
        return 1003
    if error.http_status == 429:
        return 1013
    return 1008 if 400 <= error.http_status < 500 else 1011


async def receive_message(ws: WebSocket, timeout_s: float | None) -> dict | bytes:
    """The client's next message; SlowClientError when none comes within timeout_s (None: wait for ever)."""
    try:
        message = await asyncio.wait_for(ws.receive(), timeout_s)
    except asyncio.TimeoutError:
        raise SlowClientError(f"no message for {timeout_s:g} s (--ws_idle_timeout_s)") from None
    if message["type"] == "websocket.disconnect":
        raise ClientGone()
    if message.get("bytes") is not None:
        return message["bytes"]
    try:
        value = json.loads(message.get("text") or "")
    except ValueError:
        raise RequestError("expected a JSON object message") from None
    if not isinstance(value, dict):
        raise RequestError("expected a JSON object message")
    return value


async def receive_start(
    ws: WebSocket, settings: ServerSettings, check_model_name, voices: VoiceStore
) -> tuple[str | None, bytes, dict]:
    """(prompt text, prompt wav, submit options) of a valid start: its JSON message and the wav frame, or a saved
    voice's start (the options then name it, and there is no wav)."""
    cfg = settings.cfg
    start = await receive_message(ws, cfg.ws_idle_timeout_s)
    if not isinstance(start, dict):
        raise RequestError(
            'the first message must be JSON {"prompt_text": "...", "tts_model_name": ...} (or {"voice_id": ...})'
        )
    voice_id = start.get("voice_id")
    if voice_id is not None and (not isinstance(voice_id, str) or not voice_id or "prompt_text" in start):
        raise RequestError('a saved voice\'s start is {"voice_id": "voice_...", ...}, without prompt_text or wav')
    texts = {name: start.get(name) for name in ("prompt_text", "instruct_text", "mode")}
    for name, value in texts.items():
        if value is not None and not isinstance(value, str):
            raise RequestError(f"{name} must be a string")
        if value is not None:  # a blank prompt_text is a 400 (leave it out for a voice without a transcript)
            check_text(value, name, cfg, allow_empty=name != "prompt_text")
    model = check_model_name(str(start.get("tts_model_name", "default")))  # NotFoundError: 1008
    entry = settings.models[model]
    if not entry.facts.takes_prompt_audio:  # its text goes whole into its prompt: /ws/tts streams it instead
        raise RequestError(
            f"model {entry.name!r} takes no prompt audio and no text pieces; speak with one of its "
            f"voices ({', '.join(entry.facts.voices)}) on /ws/tts or /v1/audio/speech"
        )
    options = {
        "seed": check_seed(start.get("seed")),
        "model": model,
        "fixed_speech_tokens": check_fixed_speech_tokens(start.get("fixed_speech_tokens"), settings),
        "mode": parse_mode(texts["mode"]),
        "instruction": texts["instruct_text"],
    }
    if voice_id:
        saved: VoicePrompt = await run_in_threadpool(
            voices.load_features,
            voice_id,  # NotFoundError: 1008
            settings.models[model].frontend_key,
        )
        return saved.text, b"", {**options, "saved_voice": saved}
    wav = await receive_message(ws, cfg.ws_idle_timeout_s)
    if not isinstance(wav, bytes):
        raise RequestError("the second message must be one binary frame with the prompt wav")
    check_prompt_wav(wav, cfg)
    return texts["prompt_text"], wav, options


async def read_text(ws: WebSocket, manager: HttpServerManager, handle: RequestHandle, cfg: ServerConfig) -> None:
    """Forward {"tts_text"} pieces until {"finish": true}; then keep listening so a disconnect still cancels.
    A client silent for --ws_idle_timeout_s before its finish is cut (it would hold a slot for nothing)."""
    num_chars, is_finished = 0, False
    try:
        while True:
            message = await receive_message(ws, None if is_finished else cfg.ws_idle_timeout_s)
            if is_finished:
                continue
            if not isinstance(message, dict) or not (
                isinstance(message.get("tts_text"), str) or message.get("finish") is True
            ):
                raise RequestError('expected {"tts_text": "..."} or {"finish": true}')
            text = message.get("tts_text", "")
            if not isinstance(text, str):
                raise RequestError("tts_text must be a string")
            check_text(text, "tts_text", cfg, allow_empty=True)
            num_chars += len(text)
            if num_chars > cfg.max_text_chars:
                raise TextError(f"the pieces of tts_text exceed {cfg.max_text_chars} characters")
            is_finished = message.get("finish") is True
            if text or is_finished:
                manager.send_text(handle, text, is_finished)
    except (LightTTSError, ClientGone) as e:
        handle.events.put_nowait(e)


async def serve_bistream(
    ws: WebSocket, manager: HttpServerManager, settings: ServerSettings, check_model_name, voices: VoiceStore
) -> None:
    await ws.accept()
    handle, reader, error = None, None, None
    received_at = stage_trace.now()  # the trace's "parse" stage is the client sending its start and wav
    try:
        prompt_text, wav, options = await receive_start(ws, settings, check_model_name, voices)
        with ActiveRequest():  # a request only once it is complete: a silent socket is not one
            client = ws.client.host if ws.client else ""
            handle = manager.submit(
                "",
                prompt_text,
                wav,
                stream=True,
                speed=1.0,
                is_bistream=True,
                client=client,
                received_at=received_at,
                **options,
            )
            reader = asyncio.create_task(read_text(ws, manager, handle, settings.cfg))
            while (chunk := await manager.next_event(handle)) is not None:
                for start in range(0, len(chunk), MAX_FRAME_BYTES):
                    await ws.send_bytes(chunk[start : start + MAX_FRAME_BYTES])
                manager.first_bytes_written(handle)
        await ws.close(1000)
    except (RuntimeError, OSError) as e:  # a send or close after the client vanished
        error = ClientGone(str(e))
    except LightTTSError as e:
        error = e
        await send_error(ws, e)
    except (ClientGone, WebSocketDisconnect) as e:
        error = ClientGone() if isinstance(e, WebSocketDisconnect) else e
    finally:
        if reader is not None:
            reader.cancel()
        if handle is None:
            if error is not None:
                record_rejected(ENDPOINT, error)
        else:
            manager.finish(handle)
            record_finished(ENDPOINT, handle, error)


async def send_error(ws: WebSocket, error: LightTTSError) -> None:
    try:
        await ws.send_json({"error": str(error), "kind": error.kind})
        await ws.close(close_code(error))
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client left before hearing why
