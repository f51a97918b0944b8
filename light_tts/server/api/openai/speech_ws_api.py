"""The two text-in WebSocket endpoints: the transport that carries out speech_ws's session actions.

One reader loop feeds every frame to the session while at most one synthesis task speaks the current
utterance, so text for the next utterance (and session.close) is read while audio is still going out. A
client that disconnects cancels the synthesis, which closes (aborts) the backend's request. A session that sends
nothing for --ws_idle_timeout_s while nothing is being spoken gets an error event (`slow_client`) and is closed
with 1008: an idle socket holds no slot, but a connection and a task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from contextlib import aclosing

from fastapi import APIRouter, WebSocket

from light_tts.errors import LightTTSError
from light_tts.server.api.audio_encoding import encode_file
from light_tts.server.api.openai.routes import (
    OPENAI_MODEL_ALIASES,
    SAMPLE_RATE,
    SynthesisBackend,
    SynthesisJob,
    encoded,
    load_voice,
)
from light_tts.server.api.openai.speech_ws import (
    CLOSE_POLICY_VIOLATION,
    Close,
    OrpheusSession,
    SendBytes,
    SendJson,
    SerialSession,
    StreamSpeechSession,
    Synthesize,
    Utterance,
    error_event,
)
from light_tts.server.api.voices.voice_store import VoiceStore
from light_tts.server.runtime.model_set import ModelEntry, check_voice, model_for_voice

log = logging.getLogger("light_tts.ws")


def add_speech_websockets(
    router: APIRouter,
    backend: SynthesisBackend,
    store: VoiceStore,
    models: Sequence[ModelEntry],
    max_utterance_chars: int,
    idle_timeout_s: float,
) -> None:
    def check_session_voice(voice: str, model: str | None) -> None:
        """session.config's voice for its model: a saved voice (an id or an alias), or the model's named voice (4xx
        otherwise)."""
        entry = models[model_for_voice(models, model, voice, OPENAI_MODEL_ALIASES)]
        if entry.facts.takes_prompt_audio:
            store.find(voice)
        else:
            check_voice(entry, voice)

    @router.websocket("/v1/audio/speech/stream")
    async def speech_stream(ws: WebSocket):
        await ws.accept()
        session = StreamSpeechSession(max_utterance_chars, check_voice=check_session_voice)
        await SessionTransport(ws, session, backend, store, models, "v1_audio_speech_stream", idle_timeout_s).run()

    @router.websocket("/ws/tts")
    async def orpheus_tts(ws: WebSocket):
        await ws.accept()
        await SessionTransport(
            ws, OrpheusSession(max_utterance_chars), backend, store, models, "ws_tts", idle_timeout_s
        ).run()


class SessionTransport:
    def __init__(
        self,
        ws: WebSocket,
        session: SerialSession,
        backend: SynthesisBackend,
        store: VoiceStore,
        models: Sequence[ModelEntry],
        endpoint: str,
        idle_timeout_s: float,
    ):
        self.ws, self.session, self.backend, self.store, self.models = ws, session, backend, store, models
        self.endpoint = endpoint  # the metrics' label
        self.client = ws.client.host if ws.client else ""
        self.send_lock = asyncio.Lock()  # the reader and the synthesis task both send
        self.synthesis: asyncio.Task | None = None
        self.is_closed = False
        self.idle_timeout_s = idle_timeout_s
        self.idle_since = time.monotonic()  # the last message, or the end of the last synthesis

    @property
    def is_speaking(self) -> bool:
        return self.synthesis is not None and not self.synthesis.done()

    async def receive(self) -> dict | None:
        """The client's next message; None once it has been silent for idle_timeout_s with nothing spoken."""
        while True:
            quiet_until = self.idle_since + self.idle_timeout_s
            wait_s = self.idle_timeout_s if self.is_speaking else quiet_until - time.monotonic()
            try:
                message = await asyncio.wait_for(self.ws.receive(), max(0.0, wait_s))
            except asyncio.TimeoutError:
                if self.is_speaking or time.monotonic() < self.idle_since + self.idle_timeout_s:
                    continue  # a synthesis ran meanwhile: the quiet time counts from its end
                return None
            self.idle_since = time.monotonic()
            return message

    async def run(self) -> None:
        try:
            while not self.is_closed:
                message = await self.receive()
                if message is None:
                    reason = f"no message for {self.idle_timeout_s:g} s (--ws_idle_timeout_s)"
                    await self.perform([error_event(reason, "slow_client"), Close(CLOSE_POLICY_VIOLATION, reason)])
                    break
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("text") is not None:
                    await self.perform(self.session.on_text(message["text"]))
                else:
                    await self.perform(self.session.on_binary(message.get("bytes") or b""))
        finally:
            if self.synthesis is not None and not self.synthesis.done():
                self.synthesis.cancel()
                await asyncio.gather(self.synthesis, return_exceptions=True)

    async def perform(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, Synthesize):
                self.synthesis = asyncio.create_task(self.speak(action.utterance))
                continue
            async with self.send_lock:
                if self.is_closed:
                    return
                if isinstance(action, SendJson):
                    await self.ws.send_json(action.payload)
                elif isinstance(action, SendBytes):
                    await self.ws.send_bytes(action.data)
                elif isinstance(action, Close):
                    self.is_closed = True
                    await self.ws.close(action.code, action.reason)

    async def speak(self, utterance: Utterance) -> None:
        num_bytes, error = 0, None
        try:
            # no model named: the model of a named voice (/ws/tts {"voice": "tara"}), else the default
            model = model_for_voice(self.models, utterance.model, utterance.voice_id, OPENAI_MODEL_ALIASES)
            prompt, voice = await load_voice(self.store, self.models[model], utterance.voice_id)
            is_streamed = utterance.is_streamed and utterance.speed == 1.0
            chunks = self.backend.synthesize(
                SynthesisJob(
                    utterance.text,
                    prompt,
                    utterance.speed,
                    is_streamed,
                    utterance.seed,
                    utterance.fixed_speech_tokens,
                    self.endpoint,
                    self.client,
                    model=model,
                    voice=voice,
                    instructions=utterance.instructions,
                    mode=utterance.mode,
                )
            )
            if is_streamed:  # closed at once if a send fails, so the request ends with the connection
                async with aclosing(encoded(b"", chunks, utterance.response_format)) as pieces:
                    async for piece in pieces:
                        if piece:
                            await self.perform([SendBytes(piece)])
                            num_bytes += len(piece)
            else:  # one frame holding the whole file, with exact headers
                async with aclosing(chunks):
                    pcm = b"".join([c async for c in chunks])
                data = encode_file(utterance.response_format, pcm, SAMPLE_RATE)
                await self.perform([SendBytes(data)])
                num_bytes = len(data)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if not isinstance(e, LightTTSError):
                log.exception("utterance %d failed", utterance.index)
            error = e
        self.idle_since = time.monotonic()
        if not self.is_closed:
            await self.perform(self.session.on_synthesis_done(num_bytes, error))
