"""Typed errors raised for bad models and bad requests; the server maps each to an HTTP status."""


class LightTTSError(Exception):
    """Base class. `kind` labels the error in metrics and JSON bodies; `http_status` is what a client sees."""

    kind = "internal"
    http_status = 500


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


class OverloadedError(LightTTSError):
    """Every request slot is busy; the client should retry later."""

    kind = "overloaded"
    http_status = 429


class WorkerDiedError(LightTTSError):
    """A worker process died while the request was in flight."""

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


class PayloadTooLargeError(RequestError):
    """An upload is larger than the server accepts."""

    kind = "payload_too_large"
    http_status = 413


class VoiceLimitError(LightTTSError):
    """The server already holds as many saved voices as it is configured to keep."""

    kind = "too_many_voices"
    http_status = 409
