"""Bounds on reading a request body, for every HTTP endpoint (multipart, urlencoded and JSON alike): a body that
sends nothing for --http_body_timeout_s, or is not complete --http_body_deadline_s after the request began (a
trickle of a few bytes a second never trips the first), gets 408 `slow_client` and the connection is closed.

A pure ASGI middleware around the app's `receive`: the body's messages are awaited within both bounds; past one,
the middleware answers 408 itself and tells the app the client is gone, and whatever the app does next (its own
answer, an exception from reading a body that ended) is dropped, so the log holds no traceback for it. A client
that disconnects while sending its body ends the same quiet way. Once the body is complete, `receive` is the
app's again untimed (it then waits for a disconnect while the request runs).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from starlette.requests import ClientDisconnect

from light_tts.errors import SlowClientError
from light_tts.server.api.boundary.error_bodies import error_body, is_openai_path
from light_tts.server.api.request_metrics import record_rejected

log = logging.getLogger("light_tts.http")


class BodyDeadline:
    def __init__(self, app, gap_s: float, total_s: float):
        self.app, self.gap_s, self.total_s = app, gap_s, total_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        deadline = time.monotonic() + self.total_s
        is_body_done, is_answered, is_started = False, False, False

        async def timed_receive():
            nonlocal is_body_done, is_answered
            if is_answered:
                return {"type": "http.disconnect"}
            if is_body_done:
                return await receive()
            remaining = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, min(self.gap_s, remaining)))
            except asyncio.TimeoutError:
                if self.gap_s < remaining:
                    error = SlowClientError(
                        f"the request body sent nothing for {self.gap_s:g} s (--http_body_timeout_s)"
                    )
                else:
                    error = SlowClientError(
                        f"the request body was not complete within {self.total_s:g} s (--http_body_deadline_s)"
                    )
                is_answered = True
                await answer(error)
                return {"type": "http.disconnect"}
            is_body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def answer(error: SlowClientError) -> None:
            record_rejected(scope["path"].strip("/").replace("/", "_") or "root", error)
            if is_started:  # a response already began (none of ours does before its body): just stop
                return
            body = json.dumps(error_body(error, is_openai_path(scope["path"]))).encode()  # the route's shape
            await send(
                {
                    "type": "http.response.start",
                    "status": error.http_status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"connection", b"close"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})

        async def guarded_send(message):
            nonlocal is_started
            if is_answered:  # the 408 went out instead
                return
            is_started = is_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except ClientDisconnect:  # the body ended early: the client left, or the 408 above ended it
            if not is_answered:
                log.info("%s: the client left before its request body was complete", scope["path"])
        except Exception:
            if not is_answered:
                raise
