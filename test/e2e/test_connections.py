"""Connection hygiene: an oversized body is a 413 before it is read, a stalled or trickled body a 408, and a
WebSocket that goes quiet (bistream, or text-in with nothing being spoken) is closed with its reason and holds
nothing (no slot, no active request) past --ws_idle_timeout_s."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
import websockets
from conftest import IDLE_TIMEOUT_S
from openai_harness import event_error
from server_harness import voice_wav


def raw_request(server, head: bytes, body: bytes) -> bytes:
    """Send a request by hand (headers that promise more than is sent) and read the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10 * IDLE_TIMEOUT_S) as s:
        s.sendall(head + b"\r\n\r\n" + body)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = s.recv(65536)
            if not data:
                break
            answer += data
    return answer


HEAD = (
    b"POST /inference_zero_shot HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n"
    b"Content-Length: %d"
)


def test_headers_that_never_finish_are_cut(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10 * IDLE_TIMEOUT_S) as s:
        s.sendall(b"POST /inference_zero_shot HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        assert s.recv(1024) == b""  # the server closed the connection


def test_a_body_declared_too_large_is_413_before_it_is_read(server):
    answer = raw_request(server, HEAD % 10**12, b"--XyZ\r\n")
    assert answer.startswith(b"HTTP/1.1 413") and b'"too_large"' in answer


def test_a_body_that_stalls_is_408(server):
    answer = raw_request(server, HEAD % 1000, b'--XyZ\r\nContent-Disposition: form-data; name="tts_text"\r\n\r\n')
    assert answer.startswith(b"HTTP/1.1 408") and b'"slow_client"' in answer
    server.wait_slots_free(2.0)


@pytest.mark.parametrize("sends_start", [True, False])
def test_a_quiet_websocket_is_closed_and_holds_nothing(server, sends_start):
    async def run():
        async with websockets.connect(f"{server.url.replace('http', 'ws')}/inference_zero_shot_bistream") as ws:
            if sends_start:
                await ws.send(json.dumps({"prompt_text": "A prompt."}))
                await ws.send(voice_wav(4))
                await asyncio.sleep(0.5)
                assert server.slots_in_use() == 1  # a complete request, waiting for its text
            else:
                await asyncio.sleep(0.5)
                metrics = server.metrics()
                assert metrics[("lighttts_active_requests", ())] == 0  # a silent socket is not a request
            messages = []
            try:
                async for message in ws:
                    messages.append(message)
            except websockets.ConnectionClosed:
                pass  # 1008 is an error close for the client library
        return messages, ws.close_code

    messages, code = asyncio.run(asyncio.wait_for(run(), 10 * IDLE_TIMEOUT_S))
    assert code == 1008 and json.loads(messages[-1])["kind"] == "slow_client"
    server.wait_slots_free(2.0)


def test_a_trickled_body_is_cut_at_its_deadline(server):
    """A byte every half second never leaves a 3-s gap (--http_body_timeout_s), yet the body is cut with 408 at its
    6-s total (--http_body_deadline_s): a trickle cannot hold a connection for ever."""
    head = (
        b"POST /inference_zero_shot HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n"
        b'Content-Length: 100000\r\n\r\n--XyZ\r\nContent-Disposition: form-data; name="tts_text"\r\n\r\n'
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as s:
        s.sendall(head)
        answer, start = b"", time.monotonic()
        while b"slow_client" not in answer and time.monotonic() - start < 60:
            try:
                s.sendall(b"a")  # the text field, a letter at a time
            except OSError:  # the server closed the connection after answering
                pass
            s.settimeout(0.5)
            try:
                answer += s.recv(65536)
            except TimeoutError:
                pass
    assert answer.startswith(b"HTTP/1.1 408") and b"--http_body_deadline_s" in answer
    server.wait_slots_free(5.0)


def test_an_idle_text_in_websocket_is_closed_with_a_reason(server):
    async def run():
        async with websockets.connect(f"{server.url.replace('http', 'ws')}/ws/tts") as ws:
            messages = []
            try:
                async for message in ws:
                    messages.append(message)
            except websockets.ConnectionClosed:
                pass
            return messages, ws.close_code, ws.close_reason

    messages, code, reason = asyncio.run(asyncio.wait_for(run(), 60))
    assert code == 1008 and "--ws_idle_timeout_s" in reason  # OpenAI's error object in the event (/ws/tts)
    assert event_error(json.loads(messages[-1]))[0] == "slow_client"
