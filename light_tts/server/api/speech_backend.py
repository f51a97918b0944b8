"""The synthesis backend of the OpenAI endpoints and the text-in WebSockets: their jobs run as server requests.

openai_api.py and speech_ws_api.py speak the protocols over a SynthesisBackend; this one submits each job to the
HTTP worker's HttpServerManager with the saved voice's prompt features (so the encode process only tokenizes
the text), and records the request's metrics as the other endpoints do. Closing the audio iterator early (the
client left) ends the request in every stage through HttpServerManager.finish.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from light_tts.request_rules import VC
from light_tts.server.api.http_manager import HttpServerManager
from light_tts.server.api.openai.routes import SynthesisJob
from light_tts.server.api.openai.schema import SpeechUsage
from light_tts.server.api.request_metrics import ActiveRequest, ClientGone, record_finished, record_rejected
from light_tts.server.api.request_parsing import check_fixed_speech_tokens, check_text
from light_tts.server.api.voices.voice_store import PromptFeatures


class ServerBackend:
    def __init__(self, manager: HttpServerManager):
        self.manager = manager

    async def synthesize(self, job: SynthesisJob) -> AsyncIterator[bytes]:
        """int16 chunks as the decode processes make them; job.usage is set once the last one arrived."""
        try:
            if job.mode != VC:  # length (--max_text_chars), NUL, lone surrogates
                check_text(job.text, "input", self.manager.cfg)
            if job.instructions:
                check_text(job.instructions, "instructions", self.manager.cfg)
            check_fixed_speech_tokens(job.fixed_speech_tokens, self.manager.settings)
            handle = self.manager.submit(
                job.text,
                "",
                b"",
                stream=job.is_streamed,
                speed=job.speed,
                seed=job.seed,
                fixed_speech_tokens=job.fixed_speech_tokens,
                client=job.client,
                saved_voice=job.prompt,
                model=job.model,
                mode=job.mode,
                instruction=job.instructions,
                source_wav=job.source_audio,
                received_at=job.received_at,
                voice=job.voice,
            )
        except Exception as e:
            record_rejected(job.endpoint, e, self.manager.settings.models[job.model].name, job.mode or "none")
            raise
        error: BaseException | None = None
        try:
            with ActiveRequest():
                while (chunk := await self.manager.next_event(handle)) is not None:
                    job.server_timing = job.server_timing or handle.server_timing()
                    yield chunk
                    self.manager.first_bytes_written(handle)  # resumed when the next chunk is wanted
            job.usage = SpeechUsage.of(*self.manager.usage(handle))
        except GeneratorExit:  # closed before the end: the client left
            error = ClientGone()
            raise
        except BaseException as e:
            error = e
            raise
        finally:
            self.manager.finish(handle)
            record_finished(job.endpoint, handle, error)

    async def compute_features(self, audio: bytes, client: str = "", model: int = 0) -> tuple[PromptFeatures, float]:
        return await self.manager.compute_features(audio, client, model)
