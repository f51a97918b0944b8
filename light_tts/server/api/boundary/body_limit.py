"""One bound on every request body (ServerSettings.max_body_bytes), with one 413 message that has units.

`BodyLimitMiddleware` refuses a body whose Content-Length is over the bound before any route reads it (JSON
routes included, which FastAPI would otherwise buffer whole); the form readers (request_parsing.body_chunks)
apply the same bound while a body without a Content-Length streams in.
"""

from __future__ import annotations

import json

from light_tts.errors import TooLargeError
from light_tts.request_rules import describe_bytes
from light_tts.server.api.boundary.error_bodies import error_body, is_openai_path

CLOSE_ABOVE = 4  # a declared body over this many times the bound: answer and close, do not read it


def body_too_large(max_bytes: int, num_bytes: int | None = None) -> TooLargeError:
    """The 413 of every endpoint; `num_bytes` None: the body streamed past the bound (its size is unknown)."""
    size = f"is {describe_bytes(num_bytes)}" if num_bytes is not None else "streamed past the limit"
    return TooLargeError(
        f"the request body {size}; the server takes at most {describe_bytes(max_bytes)} "
        f"(--max_prompt_wav_bytes for a prompt and a second recording or the texts, plus form fields)"
    )


class BodyLimitMiddleware:
    """Pure ASGI: a declared Content-Length over `max_bytes` is a 413 in the route's error shape."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
            if declared.isdigit() and int(declared) > self.max_bytes:
                error = body_too_large(self.max_bytes, int(declared))
                return await refuse(scope, send, error, int(declared) > CLOSE_ABOVE * self.max_bytes)
        return await self.app(scope, receive, send)


async def refuse(scope, send, error: TooLargeError, close: bool) -> None:
    """A body a little over the bound is read and dropped by the server (uvicorn discards the body of an answered
    request), so that the client, still writing it, gets to read the 413 (into a closed socket it would get a
    reset instead); one far over it closes the connection."""
    body = json.dumps(error_body(error, is_openai_path(scope["path"]))).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
