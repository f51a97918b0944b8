"""Typed errors raised for bad models and bad requests; the server maps each to an HTTP status.

Every error has a `kind` (a label in metrics, JSON bodies and wire messages) and an `http_status`. Stages send a
failure as (kind, message) in a typed message; the HTTP worker rebuilds the same class with `error_from_kind`, so
a kind and its status are written once, here.
"""

from __future__ import annotations

from typing import Literal

# client_gone labels metrics only (request_metrics.ClientGone): nobody is left to receive it
ErrorKind = Literal[
    "internal",
    "model_dir",
    "bad_request",
    "bad_audio",
    "bad_text",
    "too_large",
    "slow_client",
    "overloaded",
    "unavailable",
    "worker_died",
    "timeout",
    "unauthorized",
    "not_found",
    "too_many_voices",
]


class LightTTSError(Exception):
    """Base class. `kind` labels the error in metrics and JSON bodies; `http_status` is what a client sees;
    `param` names the request field at fault when there is one (OpenAI's error bodies carry it)."""

    kind: ErrorKind = "internal"
    http_status = 500

    def __init__(self, message: str = "", param: str | None = None):
        super().__init__(message)
        self.param = param


class ModelDirError(LightTTSError):
    """The model directory is missing a file, or a file in it is malformed."""

    kind = "model_dir"


class RequestError(LightTTSError):
    """A request field is missing or invalid."""

    kind = "bad_request"
    http_status = 400


class AudioError(RequestError):
    """Prompt audio is empty, corrupt, unreadable or too long."""

    kind = "bad_audio"


class TextError(RequestError):
    """Text is empty, too long, or normalises to nothing."""

    kind = "bad_text"


class TooLargeError(RequestError):
    """The request body, or what it asks for (audio, tokens), exceeds a server bound."""

    kind = "too_large"
    http_status = 413


class SlowClientError(RequestError):
    """The client stopped sending its request (body, or WebSocket messages) for longer than the server waits."""

    kind = "slow_client"
    http_status = 408


class OverloadedError(LightTTSError):
    """Every request slot is busy; the client should retry later."""

    kind = "overloaded"
    http_status = 429


class UnavailableError(LightTTSError):
    """The server cannot take requests now: still loading, a worker is restarting, or it is shutting down."""

    kind = "unavailable"
    http_status = 503


class WorkerDiedError(LightTTSError):
    """A worker process died (or hung) while the request was in flight."""

    kind = "worker_died"
    http_status = 503


class RequestTimeoutError(LightTTSError):
    """The request exceeded its time limit."""

    kind = "timeout"
    http_status = 504


class UnauthorizedError(LightTTSError):
    """The request carries no API key, or one the server does not know."""

    kind = "unauthorized"
    http_status = 401


class NotFoundError(LightTTSError):
    """The named resource (e.g. a saved voice) does not exist, or no longer does."""

    kind = "not_found"
    http_status = 404


class VoiceLimitError(LightTTSError):
    """The server already holds as many saved voices as it is configured to keep."""

    kind = "too_many_voices"
    http_status = 409


_BY_KIND: dict[str, type[LightTTSError]] = {
    cls.kind: cls
    for cls in (
        LightTTSError,
        ModelDirError,
        RequestError,
        AudioError,
        TextError,
        TooLargeError,
        SlowClientError,
        OverloadedError,
        UnavailableError,
        WorkerDiedError,
        RequestTimeoutError,
        UnauthorizedError,
        NotFoundError,
        VoiceLimitError,
    )
}


def error_from_kind(kind: ErrorKind, message: str) -> LightTTSError:
    """The error class of `kind` with `message` (a stage's failure, rebuilt on the HTTP side)."""
    return _BY_KIND[kind](message)


def kind_of(error: BaseException) -> ErrorKind:
    """The kind of any exception: a LightTTSError's own, else "internal" (a bug, reported as a 500)."""
    return error.kind if isinstance(error, LightTTSError) else "internal"
