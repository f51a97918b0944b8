"""Bad input gets a 4xx JSON answer, never takes the server down and never leaks a slot."""

from __future__ import annotations

import asyncio
import io
import json
import wave

import httpx
import numpy as np
import pytest
import websockets
from server_harness import voice_wav

GOOD = {"tts_text": "Hello.", "prompt_text": "A prompt.", "stream": "false"}


def long_wav(seconds: float, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.sin(np.arange(int(seconds * rate)) * 0.05) * 8000).astype("<i2").tobytes())
    return buf.getvalue()


def without(key):
    return {k: v for k, v in GOOD.items() if k != key}


CASES = {
    "missing tts_text": (without("tts_text"), voice_wav(1)),
    # a missing prompt_text is a voice without a transcript (cross-lingual, issue 24); a blank one is a mistake
    "blank prompt_text": ({**GOOD, "prompt_text": "  "}, voice_wav(1)),
    "missing prompt_wav": (GOOD, None),
    "0-byte wav": (GOOD, b""),
    "not audio": (GOOD, b"this is not a wav file, just some text " * 20),
    "not audio, streamed": ({**GOOD, "stream": "true"}, b"RIFF\x00\x00garbage" * 50),
    "60 s prompt": (GOOD, long_wav(60)),
    "100k characters": ({**GOOD, "tts_text": "a" * 100_000}, voice_wav(1)),
    "negative speed": ({**GOOD, "speed": "-1"}, voice_wav(1)),
    "speed not a number": ({**GOOD, "speed": "fast"}, voice_wav(1)),
    "stream with speed": ({**GOOD, "stream": "true", "speed": "1.5"}, voice_wav(1)),
    "stream not a bool": ({**GOOD, "stream": "maybe"}, voice_wav(1)),
    "unknown model": ({**GOOD, "tts_model_name": "nope"}, voice_wav(1)),
    "bad seed": ({**GOOD, "seed": "-3"}, voice_wav(1)),
    "blank text": ({**GOOD, "tts_text": "   "}, voice_wav(1)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_form_gets_4xx_json(server, name):
    data, wav = CASES[name]
    files = {"prompt_wav": ("p.wav", wav, "audio/wav")} if wav is not None else None
    if files is None:  # still multipart, just without the file
        files = {"unrelated": ("x.txt", b"x", "text/plain")}
    r = httpx.post(f"{server.url}/inference_zero_shot", data=data, files=files, timeout=60)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert "error" in r.json()


def test_invalid_utf8_text(server):
    boundary = "XbOuNdArY"
    parts = [
        (b'name="tts_text"', b"\xff\xfe bad \xc3\x28"),
        (b'name="prompt_text"', b"ok"),
        (b'name="prompt_wav"; filename="p.wav"', voice_wav(1)),
    ]
    body = (
        b"".join(
            b"--" + boundary.encode() + b"\r\nContent-Disposition: form-data; " + head + b"\r\n\r\n" + value + b"\r\n"
            for head, value in parts
        )
        + b"--"
        + boundary.encode()
        + b"--\r\n"
    )
    r = httpx.post(
        f"{server.url}/inference_zero_shot",
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 400 and "UTF-8" in r.json()["error"]


def test_not_multipart(server):
    r = httpx.post(f"{server.url}/inference_zero_shot", json={"tts_text": "hi"})
    assert r.status_code == 400


async def ws_exchange(url: str, messages: list) -> tuple[list, int]:
    received = []
    async with websockets.connect(f"{url.replace('http', 'ws')}/inference_zero_shot_bistream") as ws:

        async def read():
            try:
                async for message in ws:
                    received.append(message)
            except websockets.ConnectionClosed:
                pass

        reader = asyncio.create_task(read())
        try:
            for m in messages:
                await ws.send(m)
        except websockets.ConnectionClosed:
            pass  # the server closed first, having answered an earlier message
        await asyncio.wait_for(reader, timeout=60)
        return received, ws.close_code


@pytest.mark.parametrize(
    "messages,code",
    [
        (["not json"], 1008),
        ([json.dumps([1, 2])], 1008),
        ([json.dumps({"prompt_text": 5})], 1008),
        ([json.dumps({"prompt_text": "p"}), json.dumps({"tts_text": "wav expected"})], 1008),
        (
            [
                json.dumps({"prompt_text": "p"}),
                b"not a wav" * 30,
                json.dumps({"tts_text": "Hi."}),
                json.dumps({"finish": True}),
            ],
            1003,
        ),
        ([json.dumps({"prompt_text": "p"}), voice_wav(2), json.dumps({"tts_txt": "typo"})], 1008),
        ([json.dumps({"prompt_text": "p"}), voice_wav(2), b"binary instead of text"], 1008),
    ],
)
def test_bad_websocket_messages(server, messages, code):
    received, close_code = asyncio.run(ws_exchange(server.url, messages))
    assert close_code == code
    assert any(isinstance(m, str) and "error" in json.loads(m) for m in received)


def test_no_slot_leaked_and_server_still_serves(server):
    server.wait_slots_free(2.0)
    m = server.metrics()
    assert m[("lighttts_errors_total", (("kind", "bad_audio"),))] >= 4
    assert m[("lighttts_errors_total", (("kind", "bad_text"),))] >= 2
    files = {"prompt_wav": ("p.wav", voice_wav(1), "audio/wav")}
    r = httpx.post(f"{server.url}/inference_zero_shot", data=GOOD, files=files, timeout=60)
    assert r.status_code == 200 and len(r.content) > 0
    assert httpx.get(f"{server.url}/readiness").status_code == 200
