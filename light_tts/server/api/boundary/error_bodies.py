"""The two shapes of an error answer, and which routes get which.

LightTTS routes answer `{"error": "<message>", "kind": "<kind>"}` (what the upstream clients and our own read).
The OpenAI-style routes (`/v1/*` and `/ws/tts`) answer OpenAI's shape, `{"error": {"message", "type", "param",
"code"}}`: the `openai` package and litellm pick the exception class from the status (400 BadRequestError, 401
AuthenticationError, 404 NotFoundError, 409 ConflictError, 429 RateLimitError, 5xx InternalServerError) and show
`error.message` in `str(e)`. `code` is our error kind, `param` the request field at fault (or null).
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from light_tts.errors import ErrorKind, LightTTSError, error_from_kind, kind_of

OPENAI_PREFIXES = ("/v1/", "/ws/tts")
# OpenAI's `type` by status; anything else of 4xx is an invalid request.
OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
INTERNAL_MESSAGE = "internal error"  # its details stay in the server log


def is_openai_path(path: str) -> bool:
    return path.startswith(OPENAI_PREFIXES) or path == "/v1"


def openai_type(status: int) -> str:
    return "server_error" if status >= 500 else OPENAI_TYPES.get(status, "invalid_request_error")


def status_of(error: BaseException) -> int:
    return error.http_status if isinstance(error, LightTTSError) else 500


def message_of(error: BaseException) -> str:
    """The text a client may see: an unexpected exception's own text stays in the server log."""
    return str(error) if isinstance(error, LightTTSError) else INTERNAL_MESSAGE


def openai_error(error: BaseException) -> dict:
    """The inner object of OpenAI's error body (also the `error` of a WebSocket or SSE error event)."""
    return {
        "message": message_of(error),
        "type": openai_type(status_of(error)),
        "param": getattr(error, "param", None),
        "code": kind_of(error),
    }


def openai_error_of_kind(message: str, kind: ErrorKind, param: str | None = None) -> dict:
    """The same object for a failure known by its kind (a WebSocket session's verdict on a message)."""
    return {
        "message": message,
        "type": openai_type(error_from_kind(kind, "").http_status),
        "param": param,
        "code": kind,
    }


def error_body(error: BaseException, is_openai: bool) -> dict:
    if is_openai:
        return {"error": openai_error(error)}
    return {"error": message_of(error), "kind": kind_of(error)}


def error_response(error: BaseException, is_openai: bool = False) -> JSONResponse:
    """The JSON answer of a failed request in the shape of its route; a 429 says when to come back."""
    status = status_of(error)
    headers = {"Retry-After": "1"} if status == 429 else None
    return JSONResponse(error_body(error, is_openai), status_code=status, headers=headers)


def openai_error_response(error: BaseException) -> JSONResponse:
    return error_response(error, is_openai=True)


def error_response_for(path: str, error: BaseException) -> JSONResponse:
    return error_response(error, is_openai_path(path))


class RouteError(LightTTSError):
    """Starlette's own 404/405 (no such route, or not that method) as one of ours, for the OpenAI shape."""

    def __init__(self, message: str, status: int, code: str):
        super().__init__(message)
        self.http_status, self.kind = status, code  # type: ignore[assignment]


async def http_exception_handler(request: Request, exc: HTTPException):
    """An unknown URL or method under /v1 gets OpenAI's shape (as OpenAI words it); elsewhere FastAPI's own."""
    if not is_openai_path(request.url.path):
        from fastapi.exception_handlers import http_exception_handler as fastapi_handler

        return await fastapi_handler(request, exc)
    code = {404: "unknown_url", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    error = RouteError(
        f"Invalid URL ({request.method} {request.url.path})" if exc.status_code in (404, 405) else str(exc.detail),
        exc.status_code,
        code,
    )
    return JSONResponse(error_body(error, True), status_code=exc.status_code, headers=exc.headers)


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A bug: 500 in the route's shape (Starlette still logs the traceback)."""
    return error_response_for(request.url.path, exc)


def install_error_handlers(app, validation_handler) -> None:
    """Every error the framework raises, in the shape of the route it happened on."""
    app.add_exception_handler(RequestValidationError, validation_handler)  # our 400, not FastAPI's 422
    app.add_exception_handler(HTTPException, http_exception_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
