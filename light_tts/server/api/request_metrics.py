"""Per-request bookkeeping shared by the HTTP and WebSocket endpoints: outcome metrics (error bodies are
error_bodies.py's)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import get_args

from fastapi import Request

from light_tts.errors import ErrorKind
from light_tts.server.metrics import prometheus as metrics
from light_tts.server.api.http_manager import RequestHandle

log = logging.getLogger("light_tts.http")
# The `endpoint` label of every route that runs syntheses (each route names itself so).
ENDPOINTS = ("inference_zero_shot", "inference_zero_shot_bistream", "v1_audio_speech", "v1_audio_speech_stream",
             "ws_tts")
VOICE_KINDS = ("saved", "new")


def init_request_series(model_names: list[str]) -> None:
    """Create the labelled series that dashboards query, at 0, when an HTTP worker starts: a fresh server's
    /metrics has them before its first request (a rate() over a series that appears later misses its start,
    and a panel over none shows "No data" instead of 0)."""
    for endpoint in ENDPOINTS:
        metrics.REQUESTS.labels(endpoint, "overloaded", "none")  # a 429 comes before the model is looked up
        for model in model_names:
            metrics.REQUESTS.labels(endpoint, "ok", model)
            metrics.REQUEST_LATENCY.labels(endpoint, model)
            metrics.REAL_TIME_FACTOR.labels(endpoint, model)
            for voice_kind in VOICE_KINDS:
                metrics.TIME_TO_FIRST_AUDIO.labels(endpoint, voice_kind, model)
    for kind in (*get_args(ErrorKind), ClientGone.kind):
        metrics.ERRORS.labels(kind)


class ClientGone(Exception):
    """The client disconnected while its request ran."""

    kind = "client_gone"


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


def record_rejected(endpoint: str, error: BaseException, model: str = "none") -> None:
    """A request refused before it got a slot (bad input, overload; `model`: none when not known yet)."""
    kind = error_kind(error)
    metrics.REQUESTS.labels(endpoint, kind, model).inc()
    metrics.ERRORS.labels(kind).inc()


def record_finished(endpoint: str, handle: RequestHandle, error: BaseException | None) -> None:
    """Latency, first-audio time, real-time factor and audio seconds of a request that held a slot."""
    latency, model = time.monotonic() - handle.arrival, handle.model_name
    if error is not None:
        record_rejected(endpoint, error, model)
        if error_kind(error) == "internal":
            log.error("request %d failed: %r", handle.req_id, error)
        return
    metrics.REQUESTS.labels(endpoint, "ok", model).inc()
    metrics.REQUEST_LATENCY.labels(endpoint, model).observe(latency)
    metrics.AUDIO_SECONDS.inc(handle.audio_seconds)
    if handle.first_audio_at is not None:
        metrics.TIME_TO_FIRST_AUDIO.labels(endpoint, handle.voice_kind, model).observe(
            handle.first_audio_at - handle.arrival)
    if handle.audio_seconds > 0:
        metrics.REAL_TIME_FACTOR.labels(endpoint, model).observe(latency / handle.audio_seconds)


class ActiveRequest:
    """Counts a request in lighttts_active_requests for as long as the `with` block runs."""

    def __enter__(self):
        metrics.ACTIVE_REQUESTS.inc()
        return self

    def __exit__(self, *exc):
        metrics.ACTIVE_REQUESTS.dec()
        return False
