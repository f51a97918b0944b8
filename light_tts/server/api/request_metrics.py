"""Per-request bookkeeping shared by the HTTP and WebSocket endpoints: outcome metrics (error bodies are
error_bodies.py's)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import get_args

from fastapi import Request

from light_tts.errors import ErrorKind, LightTTSError
from light_tts.request_rules import TEXT_MODES, VC
from light_tts.server.api.http_manager import RequestHandle
from light_tts.server.metrics import prometheus as metrics

log = logging.getLogger("light_tts.http")
# The `endpoint` label of every route that runs syntheses (each route names itself so).
VC_ENDPOINT = "v1_audio_voice_conversion"  # its one mode is vc
ENDPOINTS = (
    "inference_zero_shot",
    "inference_zero_shot_bistream",
    "v1_audio_speech",
    "v1_audio_speech_stream",
    "ws_tts",
    VC_ENDPOINT,
)
VOICE_KINDS = ("saved", "new")


def init_request_series(model_names: list[str]) -> None:
    """Create the labelled series that dashboards query, at 0, when an HTTP worker starts: a fresh server's
    /metrics has them before its first request (a rate() over a series that appears later misses its start,
    and a panel over none shows "No data" instead of 0). Each endpoint's series exist for every mode it serves."""
    for endpoint in ENDPOINTS:
        metrics.REQUESTS.labels(endpoint, "overloaded", "none", "none")  # a 429 comes before model and mode
        for model, mode in itertools.product(model_names, (VC,) if endpoint == VC_ENDPOINT else TEXT_MODES):
            metrics.REQUESTS.labels(endpoint, "ok", model, mode)
            metrics.REQUEST_LATENCY.labels(endpoint, model, mode)
            metrics.REAL_TIME_FACTOR.labels(endpoint, model, mode)
            for voice_kind in VOICE_KINDS:
                metrics.TIME_TO_FIRST_AUDIO.labels(endpoint, voice_kind, model, mode)
    for kind in (*get_args(ErrorKind), ClientGone.kind):
        metrics.ERRORS.labels(kind)


class ClientGone(Exception):
    """The client disconnected while its request ran."""

    kind = "client_gone"


class StreamCut(Exception):
    """Ends a response whose 200 and first audio are sent: uvicorn then closes the connection without the chunked
    transfer's last chunk, so the client sees a cut (never a short body passing for a whole one). The failure was
    logged in one line where it happened; uvicorn's "Exception in ASGI application" record of it is dropped
    (QuietStreamCuts), so the log holds no traceback for it."""


class QuietStreamCuts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], StreamCut))


def quiet_stream_cuts() -> None:
    """Install the filter on uvicorn's error logger (once per process)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, QuietStreamCuts) for f in logger.filters):
        logger.addFilter(QuietStreamCuts())


def cut_stream(error: BaseException, what: str, audio_seconds: float | None = None) -> StreamCut:
    """The one log line of a request that failed after its 200, and the exception that cuts its transfer."""
    sent = "" if audio_seconds is None else f" after {audio_seconds:.2f} s of audio"
    log.warning("%s cut%s: %s (%s)", what, sent, error, error_kind(error))
    return StreamCut(str(error))


async def cut_on_failure(body, what: str):
    """`body`'s pieces; a LightTTSError after the 200 cuts the transfer (cut_stream) instead of ending it as if
    complete or logging a traceback."""
    try:
        async for piece in body:
            yield piece
    except LightTTSError as e:
        raise cut_stream(e, what) from None


async def until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, coro):
    """Await `coro`, cancelling it and raising ClientGone if the client hangs up first."""
    work, watch = asyncio.ensure_future(coro), asyncio.ensure_future(until_disconnect(request))
    try:
        await asyncio.wait((work, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not work.done():
        work.cancel()
        raise ClientGone()
    return work.result()


def error_kind(error: BaseException) -> str:
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return "client_gone"  # Starlette cancels a streaming response when its client disconnects; a closed
        # synthesis (openai_api) sees GeneratorExit
    return getattr(error, "kind", "internal")


def record_rejected(endpoint: str, error: BaseException, model: str = "none", mode: str = "none") -> None:
    """A request refused before it got a slot (bad input, overload; `model`, `mode`: none when not known yet)."""
    kind = error_kind(error)
    metrics.REQUESTS.labels(endpoint, kind, model, mode).inc()
    metrics.ERRORS.labels(kind).inc()


def record_finished(endpoint: str, handle: RequestHandle, error: BaseException | None) -> None:
    """Latency, first-audio time, real-time factor and audio seconds of a request that held a slot, and its log
    line (INFO: endpoint, model, mode, voice kind, outcome, audio seconds, first-audio time, latency)."""
    latency, model, mode = time.monotonic() - handle.arrival, handle.model_name, handle.mode
    ttfa = None if handle.first_audio_at is None else handle.first_audio_at - handle.arrival
    log.info(
        "request %d %s model=%s mode=%s voice=%s outcome=%s audio=%.2fs ttfa=%s latency=%.3fs",
        handle.req_id,
        endpoint,
        model,
        mode,
        handle.voice_kind,
        "ok" if error is None else error_kind(error),
        handle.audio_seconds,
        "-" if ttfa is None else f"{ttfa:.3f}s",
        latency,
    )
    if error is not None:
        record_rejected(endpoint, error, model, mode)
        if error_kind(error) == "internal":
            log.error("request %d failed: %r", handle.req_id, error)
        return
    metrics.REQUESTS.labels(endpoint, "ok", model, mode).inc()
    metrics.REQUEST_LATENCY.labels(endpoint, model, mode).observe(latency)
    metrics.AUDIO_SECONDS.inc(handle.audio_seconds)
    if ttfa is not None:
        metrics.TIME_TO_FIRST_AUDIO.labels(endpoint, handle.voice_kind, model, mode).observe(ttfa)
    if handle.audio_seconds > 0:
        metrics.REAL_TIME_FACTOR.labels(endpoint, model, mode).observe(latency / handle.audio_seconds)


class ActiveRequest:
    """Counts a request in lighttts_active_requests for as long as the `with` block runs."""

    def __enter__(self):
        metrics.ACTIVE_REQUESTS.inc()
        return self

    def __exit__(self, *exc):
        metrics.ACTIVE_REQUESTS.dec()
        return False
