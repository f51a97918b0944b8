"""fixed_speech_tokens (the benchmark option): every sentence gets exactly N speech tokens, over HTTP and the
bistream WebSocket; out-of-range values are a 400."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets
from conftest import MAX_REQ_TOTAL_LEN
from server_harness import voice_wav

TWO_SENTENCES = "Go on now. " * 13  # two pieces for the tiny tokenizer (80 + 24 tokens), as in test_synthesis
SAMPLES_PER_TOKEN = 960  # 24 kHz audio, 25 tokens per second


def llm_tokens(server) -> float:
    return sum(v for (name, _), v in server.metrics().items() if name == "lighttts_llm_tokens_total")


def post(server, fixed, text=TWO_SENTENCES, stream=False):
    data = {
        "tts_text": text,
        "prompt_text": "A prompt.",
        "stream": str(stream).lower(),
        "seed": "4",
        "fixed_speech_tokens": str(fixed),
    }
    files = {"prompt_wav": ("p.wav", voice_wav(6), "audio/wav")}
    return httpx.post(f"{server.url}/inference_zero_shot", data=data, files=files, timeout=120)


@pytest.mark.parametrize("stream", [False, True])
def test_every_sentence_gets_exactly_n_tokens(server, stream):
    before = llm_tokens(server)
    r = post(server, 30, stream=stream)
    assert r.status_code == 200, r.text
    assert llm_tokens(server) - before == 2 * 30
    assert len(r.content) == 2 * 30 * SAMPLES_PER_TOKEN * 2  # int16: exactly the audio of 60 tokens


def test_bistream_gets_exactly_n_tokens(server):
    async def run() -> bytes:
        audio = bytearray()
        async with websockets.connect(f"{server.url.replace('http', 'ws')}/inference_zero_shot_bistream") as ws:
            await ws.send(json.dumps({"prompt_text": "A prompt.", "seed": 2, "fixed_speech_tokens": 40}))
            await ws.send(voice_wav(7))
            for piece in ("Some words ", "in pieces."):
                await ws.send(json.dumps({"tts_text": piece}))
            await ws.send(json.dumps({"finish": True}))
            async for message in ws:
                audio += message
        return bytes(audio)

    before = llm_tokens(server)
    audio = asyncio.run(run())
    assert llm_tokens(server) - before == 40
    assert len(audio) == 40 * SAMPLES_PER_TOKEN * 2


@pytest.mark.parametrize("fixed", [0, -1, MAX_REQ_TOTAL_LEN + 1, "many"])
def test_out_of_range_is_a_400(server, fixed):
    r = post(server, fixed, text="Hi.")
    assert r.status_code == 400 and "fixed_speech_tokens" in r.json()["error"]


def test_a_length_that_does_not_fit_the_prompt_is_a_400(server):
    """Within the HTTP bound, but the prompt leaves less room: the LLM process refuses it before generating."""
    r = post(server, MAX_REQ_TOTAL_LEN, text="Hi.")
    assert r.status_code == 400 and "does not fit" in r.json()["error"]
    server.wait_slots_free(2.0)
