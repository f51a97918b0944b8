"""HTTP front end: the FastAPI app one HTTP worker serves, and the worker's process entry (`run_http_process`).

The command that starts the whole server is `python -m light_tts.server.api_server` (`server/api_server.py`).
"""

from __future__ import annotations

import io
import math
import os
import signal
import socket
import time
import traceback
import wave
from contextlib import asynccontextmanager, contextmanager

import numpy as np
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from light_tts.errors import LightTTSError
from light_tts.server.api.bistream_ws import serve_bistream
from light_tts.server.api.boundary.auth import ApiKeyMiddleware, install_log_redaction
from light_tts.server.api.boundary.body_deadline import BodyDeadline
from light_tts.server.api.boundary.body_limit import BodyLimitMiddleware
from light_tts.server.api.boundary.error_bodies import error_response, install_error_handlers
from light_tts.server.api.http_manager import HttpServerManager, RequestHandle
from light_tts.server.api.openai.routes import create_openai_router
from light_tts.server.api.openai.schema import validation_error_handler
from light_tts.server.api.openai.speech_ws_api import add_speech_websockets
from light_tts.server.api.openai.voice_conversion import add_voice_conversion
from light_tts.server.api.pages.api_docs import (
    PCMResponse,
    api_description,
    audio_responses,
    error_responses,
    finish_openapi,
    zero_shot_request_body,
)
from light_tts.server.api.pages.docs_pages import mount_docs
from light_tts.server.api.playground import mount_playground
from light_tts.server.api.request_metrics import (
    ActiveRequest,
    ClientGone,
    cut_stream,
    init_request_series,
    quiet_stream_cuts,
    record_finished,
    record_rejected,
    unless_disconnected,
)
from light_tts.server.api.request_parsing import parse_zero_shot
from light_tts.server.api.speech_backend import ServerBackend
from light_tts.server.api.voices.voice_store import VoiceStore
from light_tts.server.ipc import stage_trace
from light_tts.server.metrics import prometheus as metrics
from light_tts.server.runtime.model_set import resolve_model
from light_tts.server.runtime.settings import ServerSettings
from light_tts.server.runtime.topology import PortArgs

PCM_MEDIA_TYPE = PCMResponse.media_type
HEALTH_CACHE_S = 10.0  # /health runs a real synthesis at most this often
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request whose client left first


def model_names(settings: ServerSettings) -> list[str]:
    return settings.model_names


def client_address(connection: Request | WebSocket) -> str:
    return connection.client.host if connection.client else ""


async def collect_audio(manager: HttpServerManager, handle: RequestHandle) -> bytes:
    chunks = []
    while (chunk := await manager.next_event(handle)) is not None:
        chunks.append(chunk)
    return b"".join(chunks)


def timing_header(handle: RequestHandle) -> dict[str, str] | None:
    """The W3C Server-Timing header of a request's stages up to its first audio (stage_trace.server_timing)."""
    value = handle.server_timing()
    return {"Server-Timing": value} if value else None


def tone_wav(seconds: float = 1.0, rate: int = 16000) -> bytes:
    """A short synthetic voice prompt (a harmonic tone) for /health, as a WAV file."""
    t = np.arange(int(seconds * rate)) / rate
    x = sum(np.sin(2 * math.pi * 150 * k * t) / k for k in range(1, 6)) * 0.2
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((x * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def create_app(settings: ServerSettings, ports: PortArgs, http_rank: int, on_ready=None) -> FastAPI:
    manager = HttpServerManager(settings, ports, http_rank)
    quiet_stream_cuts()
    voices = VoiceStore(
        settings.data_dir,
        settings.voice_limits(),  # the same files in every HTTP worker
        aliases=settings.cfg.voice_aliases(),
    )
    health = {"checked_at": -math.inf, "ok": False, "detail": ""}

    def check_model_name(name: str) -> int:
        """The index of model `name`; an unknown one is 404 naming the models served."""
        return resolve_model(settings.models, name)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await manager.start()
        if on_ready is not None:
            on_ready()
        yield
        await manager.stop()

    init_request_series(settings.model_names)
    app = FastAPI(
        title="LightTTS", description=api_description(settings), lifespan=lifespan, docs_url=None, redoc_url=None
    )  # docs_pages serves them
    app.state.manager = manager
    install_error_handlers(app, validation_error_handler)  # each in its route's shape (error_bodies.py)
    mount_docs(app)  # before the playground: its /static mount would take /static/docs too
    mount_playground(app)
    backend = ServerBackend(manager)
    router = create_openai_router(backend, voices, settings.models, settings.max_body_bytes)
    add_speech_websockets(
        router, backend, voices, settings.models, settings.cfg.max_text_chars, settings.cfg.ws_idle_timeout_s
    )
    add_voice_conversion(
        router, backend, voices, settings.models, settings.max_vc_source_seconds, settings.max_body_bytes
    )
    app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.auth.is_enabled:
        install_log_redaction(settings.auth)
        app.add_middleware(ApiKeyMiddleware, settings=settings.auth)
    # outermost but Starlette's error handler: a body cut off after its 408 ends quietly, whatever the app did
    app.add_middleware(BodyDeadline, gap_s=settings.cfg.http_body_timeout_s, total_s=settings.cfg.http_body_deadline_s)
    finish_openapi(app, settings.auth)

    @app.post(
        "/inference_zero_shot",
        response_class=PCMResponse,
        responses=audio_responses(settings),
        openapi_extra=zero_shot_request_body(settings),
        summary="Speak a text in the voice of a prompt",
    )
    async def inference_zero_shot(request: Request):
        endpoint = "inference_zero_shot"
        received_at = stage_trace.now()
        try:
            inputs = await parse_zero_shot(request, settings)
            parsed_at = stage_trace.now()
            model = check_model_name(inputs.tts_model_name)
            saved = (
                None
                if inputs.voice_id is None
                else await run_in_threadpool(voices.load_features, inputs.voice_id, settings.models[model].frontend_key)
            )
            handle = manager.submit(
                inputs.tts_text,
                inputs.prompt_text,
                inputs.prompt_wav,
                stream=inputs.stream,
                speed=inputs.speed,
                seed=inputs.seed,
                saved_voice=saved,
                fixed_speech_tokens=inputs.fixed_speech_tokens,
                client=client_address(request),
                model=model,
                mode=inputs.mode,
                instruction=inputs.instruct_text,
                received_at=received_at,
                parsed_at=parsed_at,
                voice=inputs.voice,
            )
        except LightTTSError as e:
            record_rejected(endpoint, e)
            return error_response(e)
        if inputs.stream:
            return await start_stream(request, handle, endpoint)
        error: BaseException | None = None
        try:
            with ActiveRequest():
                audio = await unless_disconnected(request, collect_audio(manager, handle))
            manager.first_bytes_written(handle)  # the whole body goes out now
            return Response(audio, media_type=PCM_MEDIA_TYPE, headers=timing_header(handle))
        except LightTTSError as e:
            error = e
            return error_response(e)
        except ClientGone as e:
            error = e
            return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it; keeps the log quiet
        finally:
            manager.finish(handle)
            record_finished(endpoint, handle, error)

    async def start_stream(request: Request, handle: RequestHandle, endpoint: str):
        """Wait for the first chunk before sending headers, so that an early error still gets its 4xx."""
        try:
            first = await unless_disconnected(request, manager.next_event(handle))
        except BaseException as e:
            manager.finish(handle)
            record_finished(endpoint, handle, e)
            if isinstance(e, LightTTSError):
                return error_response(e)
            if isinstance(e, ClientGone):
                return Response(status_code=CLIENT_CLOSED_REQUEST)
            raise

        async def body():
            error: BaseException | None = None
            try:
                with ActiveRequest():
                    chunk = first
                    while chunk is not None:
                        yield chunk
                        manager.first_bytes_written(handle)  # resumed once the chunk was handed to the socket
                        chunk = await manager.next_event(handle)
            except LightTTSError as e:  # after the 200: the transfer is cut, so the client sees it failed
                error = e
                raise cut_stream(e, f"request {handle.req_id}", handle.audio_seconds) from None
            except BaseException as e:  # the client left (Starlette cancels the body)
                error = e
                raise
            finally:
                manager.finish(handle)
                record_finished(endpoint, handle, error)

        # the headers leave with the first chunk: they carry every stage up to the HTTP worker taking it
        return StreamingResponse(body(), media_type=PCM_MEDIA_TYPE, headers=timing_header(handle))

    @app.websocket("/inference_zero_shot_bistream")
    async def inference_zero_shot_bistream(ws: WebSocket):
        await serve_bistream(ws, manager, settings, check_model_name, voices)

    @app.get("/query_tts_model", summary="The names of the served models (the first is the default)")
    async def query_tts_model_get() -> dict[str, list[str]]:
        return {"tts_models": model_names(settings)}

    @app.post("/query_tts_model", summary="The names of the served models (POST, as upstream clients send it)")
    async def query_tts_model_post() -> dict[str, list[str]]:
        return await query_tts_model_get()

    @app.get("/healthz", summary="The HTTP worker is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/liveness", summary="The HTTP worker is up")
    async def liveness() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readiness", responses=error_responses(503), summary="Every backend process is loaded and alive")
    async def readiness():
        """200 once every backend process is loaded and alive; 503 while models load or after a worker died."""
        reason = manager.unready_reason()
        processes = manager.processes.describe()
        for plan in settings.topology.processes:  # which models each backend serves
            processes[f"{plan.stage}{plan.rank}"]["models"] = list(plan.models)
        body = {"status": "ready" if reason is None else "not ready", "processes": processes}
        if reason is not None:
            body["reason"] = reason
        return JSONResponse(body, status_code=200 if reason is None else 503)

    @app.get("/health", responses=error_responses(503), summary="A real synthesis with a built-in voice")
    async def health_check():
        """A real end-to-end synthesis (cached for a few seconds): 200 with the audio length, else 503."""
        if time.monotonic() - health["checked_at"] > HEALTH_CACHE_S or not health["ok"]:
            try:
                facts = settings.model  # the default model's: a built-in voice, or one of its named ones
                prompt = ("Hi.", tone_wav()) if facts.takes_prompt_audio else ("", b"")
                handle = manager.submit(
                    "Hello.",
                    *prompt,
                    stream=False,
                    speed=1.0,
                    seed=0,
                    voice=None if facts.takes_prompt_audio else facts.voices[0],
                )
                try:
                    audio = await collect_audio(manager, handle)
                finally:
                    manager.finish(handle)
                health.update(ok=len(audio) > 0, detail=f"{len(audio) // 2} samples")
            except LightTTSError as e:
                health.update(ok=False, detail=str(e))
            health["checked_at"] = time.monotonic()
        return JSONResponse(
            {"status": "ok" if health["ok"] else "unhealthy", "detail": health["detail"]},
            status_code=200 if health["ok"] else 503,
        )

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics of every process")
    async def metrics_page():
        collector = metrics.SharedStateCollector(manager.slots, manager.processes, manager.voices)
        return PlainTextResponse(metrics.render(collector), media_type="text/plain; version=0.0.4")

    return app


def listening_socket(host: str, port: int) -> socket.socket:
    """Every HTTP worker binds the same port with SO_REUSEPORT; the kernel spreads connections across them."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(info[4])
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def http_protocol(timeout_s: float):
    """uvicorn's HTTP protocol plus what it lacks, a header-read timeout: a connection that has not sent a
    complete request head within timeout_s of connecting is closed (it holds no slot, but a socket and a task)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # no httptools: uvicorn's pure-Python parser
        from uvicorn.protocols.http.h11_impl import H11Protocol as base

    class TimedHeadersProtocol(base):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.loop.call_later(timeout_s, self.close_if_no_request)

        def close_if_no_request(self) -> None:
            # a WebSocket upgrade hands the transport to another protocol: that connection is not ours to judge
            if self.cycle is None and self.transport.get_protocol() is self and not self.transport.is_closing():
                self.transport.close()

    return TimedHeadersProtocol


def run_http_process(settings: ServerSettings, ports: PortArgs, rank: int, ready_pipe) -> None:
    """Process entry of HTTP worker `rank`: serve the app with uvicorn on the shared port until SIGTERM."""
    import uvicorn

    from light_tts.server.runtime.process import setup_process

    class WorkerServer(uvicorn.Server):
        @contextmanager
        def capture_signals(self):
            """SIGINT is the launcher's (a terminal's Ctrl-C reaches every process); SIGTERM stops gracefully."""
            signal.signal(signal.SIGTERM, lambda *_: setattr(self, "should_exit", True))
            yield

    try:
        cfg = settings.cfg
        setup_process(settings, f"http{rank}", f"{cfg.host}:{cfg.port}")
        sock = listening_socket(cfg.host, cfg.port)
        app = create_app(settings, ports, rank, on_ready=lambda: ready_pipe.send(("ready", os.getpid())))
        config = uvicorn.Config(
            app,
            log_level=cfg.log_level,
            timeout_graceful_shutdown=2,
            ws_max_size=64 << 20,
            http=http_protocol(cfg.http_header_timeout_s),
        )
        server = WorkerServer(config)
    except BaseException:
        ready_pipe.send(("error", traceback.format_exc()))
        raise
    server.run(sockets=[sock])
