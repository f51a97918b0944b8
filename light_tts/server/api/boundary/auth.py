"""API keys: an ASGI middleware in front of the whole app that lets a request through only with a known key.

HTTP and WebSocket clients send `Authorization: Bearer KEY`. Browsers cannot set headers on a WebSocket, so
a WebSocket may instead offer the subprotocol `lighttts.bearer.KEY` (`new WebSocket(url, ["lighttts.bearer." +
key])`, as OpenAI's Realtime API does with its own prefix); the middleware takes it out of what the endpoint
sees and answers the handshake with it, as browsers require. The health probes need no key, nor /metrics
with --metrics_public, nor the playground's static files (/ and /static/: they hold no data, and the page asks
for the key that its API calls then send). A missing or wrong key gets 401 in the route's error shape
(error_bodies.py: OpenAI's on /v1/*, `{"error", "kind": "unauthorized"}` elsewhere); a WebSocket gets it as the
handshake's HTTP answer where the server supports that, else close code 1008.

Keys are compared as SHA-256 digests with hmac.compare_digest against every configured key (no early exit,
equal lengths), so timing says nothing about a key. No key is echoed in an error, and `install_log_redaction`
takes keys out of every log line of the process (at debug level uvicorn's WebSocket layer logs the
handshake's headers, Authorization included).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re

from light_tts.errors import UnauthorizedError
from light_tts.server.api.boundary.error_bodies import error_body, is_openai_path
from light_tts.server.runtime.auth_keys import (
    METRICS_PATH,
    PAGE_PATHS,
    PAGE_PREFIX,
    PUBLIC_PATHS,
    WS_KEY_PROTOCOL,
    AuthSettings,
)

CLOSE_POLICY_VIOLATION = 1008

log = logging.getLogger("light_tts.auth")
# What a key can follow in a log line: an Authorization header value, or our WebSocket subprotocol.
KEY_CONTEXT = re.compile(r"(?i)(bearer\s+|" + re.escape(WS_KEY_PROTOCOL) + r")[^\s,'\"]+")
REDACTED = "[redacted]"


def install_log_redaction(settings: AuthSettings):
    """Every log record made in this process from now on has bearer tokens and the configured keys replaced by
    [redacted], whichever logger or handler it goes to. Returns a function that undoes it."""
    previous = logging.getLogRecordFactory()
    keys = sorted(settings.api_keys, key=len, reverse=True)

    def make_record(*args, **kwargs):
        record = previous(*args, **kwargs)
        message = record.getMessage()
        redacted = KEY_CONTEXT.sub(lambda m: m.group(1) + REDACTED, message)
        for key in keys:
            redacted = redacted.replace(key, REDACTED)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return record

    logging.setLogRecordFactory(make_record)
    return lambda: logging.setLogRecordFactory(previous)


class ApiKeyMiddleware:
    """Pure ASGI (Starlette's BaseHTTPMiddleware does not see WebSockets); add it as the outermost layer."""

    def __init__(self, app, settings: AuthSettings):
        self.app = app
        self.settings = settings
        self.digests = [hashlib.sha256(k.encode()).digest() for k in settings.api_keys]
        self.public_paths = PUBLIC_PATHS | PAGE_PATHS | ({METRICS_PATH} if settings.metrics_public else frozenset())

    def is_known(self, key: bytes) -> bool:
        digest = hashlib.sha256(key).digest()
        is_match = False
        for known in self.digests:  # every key, always: the time does not depend on which one matched
            is_match |= hmac.compare_digest(digest, known)
        return is_match

    def is_public(self, path: str, is_http: bool = True) -> bool:
        return path in self.public_paths or (is_http and path.startswith(PAGE_PREFIX))

    async def __call__(self, scope, receive, send):
        if (
            scope["type"] not in ("http", "websocket")
            or not self.digests
            or self.is_public(scope["path"], scope["type"] == "http")
        ):
            return await self.app(scope, receive, send)
        key = bearer_token(scope["headers"])
        offered_protocol = None
        if key is None and scope["type"] == "websocket":
            offered_protocol = next((p for p in scope.get("subprotocols", []) if p.startswith(WS_KEY_PROTOCOL)), None)
            if offered_protocol is not None:
                key = offered_protocol[len(WS_KEY_PROTOCOL) :].encode("latin-1")
        if key is None or not self.is_known(key):
            reason = "missing API key" if key is None else "invalid API key"
            log.info("%s %s refused: %s", scope["type"], scope["path"], reason)
            return await reject(
                scope,
                receive,
                send,
                UnauthorizedError(f"{reason}: send the header 'Authorization: Bearer <key>'"),
                key is not None,
            )
        if offered_protocol is None:
            return await self.app(scope, receive, send)
        await self.app(
            without_key_protocol(scope, offered_protocol), receive, answering_protocol(send, offered_protocol)
        )


def bearer_token(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" and token.strip() else None
    return None


def without_key_protocol(scope: dict, protocol: str) -> dict:
    """The endpoint sees neither the key's subprotocol nor the key in the raw header."""
    others = [p for p in scope.get("subprotocols", []) if p != protocol]
    headers = [(n, v) for n, v in scope["headers"] if n != b"sec-websocket-protocol"]
    if others:
        headers.append((b"sec-websocket-protocol", ", ".join(others).encode("latin-1")))
    return {**scope, "subprotocols": others, "headers": headers}


def answering_protocol(send, protocol: str):
    """A browser that offered subprotocols fails the handshake unless the server picks one: pick the key's
    unless the endpoint chose another of the client's."""

    async def send_with_protocol(message):
        if message["type"] == "websocket.accept" and message.get("subprotocol") is None:
            message = {**message, "subprotocol": protocol}
        await send(message)

    return send_with_protocol


async def reject(scope, receive, send, error: UnauthorizedError, is_wrong_key: bool) -> None:
    body = json.dumps(error_body(error, is_openai_path(scope["path"]))).encode()
    challenge = b'Bearer error="invalid_token"' if is_wrong_key else b"Bearer"
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", challenge),
    ]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": error.http_status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await receive()  # websocket.connect
    if "websocket.http.response" in scope.get("extensions", {}):  # ASGI's denial response: a real 401
        await send({"type": "websocket.http.response.start", "status": error.http_status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": CLOSE_POLICY_VIOLATION, "reason": "unauthorized"})
