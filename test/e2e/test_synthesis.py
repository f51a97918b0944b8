"""End to end through the real server: its audio equals the offline pipeline's for the same seed, streamed or
not, over HTTP and the bistream WebSocket, alone or 16 requests at once, on either decode process."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
import websockets
from server_harness import assert_same_audio, voice_wav

from light_tts.decode.engine import to_int16

PROMPT_TEXT = "A short prompt."


def zero_shot_form(text: str, seed: int, stream: bool = False, speed: float = 1.0, prompt_text: str = PROMPT_TEXT):
    return {
        "tts_text": text,
        "prompt_text": prompt_text,
        "stream": str(stream).lower(),
        "speed": str(speed),
        "seed": str(seed),
    }


def post_zero_shot(url: str, text: str, wav: bytes, seed: int, stream: bool = False, speed: float = 1.0):
    """Returns (status, body bytes, list of streamed chunks)."""
    files = {"prompt_wav": ("p.wav", wav, "audio/wav")}
    chunks = []
    with httpx.stream(
        "POST", f"{url}/inference_zero_shot", data=zero_shot_form(text, seed, stream, speed), files=files, timeout=120
    ) as r:
        for chunk in r.iter_raw():
            chunks.append(chunk)
        return r.status_code, b"".join(chunks), chunks


def reference_pcm(pipeline, text: str, wav: bytes, seed: int, stream: bool = False, speed: float = 1.0) -> bytes:
    audio = np.concatenate(list(pipeline.synthesize(text, wav, PROMPT_TEXT, stream=stream, speed=speed, seed=seed)))
    return to_int16(audio).tobytes()


def test_non_stream_equals_offline_pipeline(server, pipeline):
    wav = voice_wav(1)
    status, body, _ = post_zero_shot(server.url, "Hello there.", wav, seed=11)
    assert status == 200
    assert_same_audio(body, reference_pcm(pipeline, "Hello there.", wav, seed=11))


def test_speed_changes_length_like_the_pipeline(server, pipeline):
    wav = voice_wav(2)
    status, body, _ = post_zero_shot(server.url, "Hi there.", wav, seed=5, speed=1.5)
    assert status == 200
    assert_same_audio(body, reference_pcm(pipeline, "Hi there.", wav, seed=5, speed=1.5))


def test_stream_chunks_concatenate_to_streaming_pipeline(server, pipeline):
    wav = voice_wav(3)
    text = "Streaming works. Sentence two follows."
    status, body, chunks = post_zero_shot(server.url, text, wav, seed=7, stream=True)
    assert status == 200 and len(chunks) > 1
    assert_same_audio(body, reference_pcm(pipeline, text, wav, seed=7, stream=True))


def test_long_text_streams_sentences_in_order(server, pipeline):
    wav = voice_wav(4)
    text = "Go on now. " * 13  # 104 tokens of the tiny tokenizer: split into two pieces (80 + 24 tokens)
    assert len(pipeline.frontend.normalize_and_split(text)) == 2
    status, body, _ = post_zero_shot(server.url, text, wav, seed=9, stream=True)
    assert status == 200
    assert_same_audio(body, reference_pcm(pipeline, text, wav, seed=9, stream=True))


async def bistream(url: str, pieces: list[str], wav: bytes, seed: int, start: dict | None = None, **fields) -> bytes:
    """The audio of a bistream session; `start`: its start message (default: PROMPT_TEXT's zero-shot with the
    seed and `fields`, e.g. tts_model_name)."""
    audio = bytearray()
    async with websockets.connect(f"{url.replace('http', 'ws')}/inference_zero_shot_bistream") as ws:
        await ws.send(json.dumps(start or {"prompt_text": PROMPT_TEXT, "seed": seed, **fields}))
        await ws.send(wav)
        for piece in pieces:
            await ws.send(json.dumps({"tts_text": piece}))
        await ws.send(json.dumps({"finish": True}))
        async for message in ws:
            assert isinstance(message, bytes), message
            audio += message
        assert ws.close_code == 1000
    return bytes(audio)


def test_bistream_text_in_pieces(server, pipeline):
    wav = voice_wav(5)
    pieces = ["Text that ", "arrives in ", "four ", "pieces."]
    audio = asyncio.run(bistream(server.url, pieces, wav, seed=13))
    want = np.concatenate(list(pipeline.synthesize_bistream(iter(pieces), wav, PROMPT_TEXT, seed=13)))
    assert_same_audio(audio, to_int16(want).tobytes())


def test_16_concurrent_requests_each_get_their_own_audio(server, pipeline):
    """Different voices and texts at once: each result equals its own single-request reference."""
    jobs = [(f"Hi {i}.", voice_wav(10 + i % 8), 100 + i, i % 2 == 0) for i in range(16)]
    before = server.metrics()

    async def one(client, text, wav, seed, stream):
        files = {"prompt_wav": ("p.wav", wav, "audio/wav")}
        r = await client.post(f"{server.url}/inference_zero_shot", data=zero_shot_form(text, seed, stream), files=files)
        return r.status_code, r.content

    async def all_at_once():
        async with httpx.AsyncClient(timeout=180) as client:
            return await asyncio.gather(*(one(client, *job) for job in jobs))

    results = asyncio.run(all_at_once())
    for (text, wav, seed, stream), (status, body) in zip(jobs, results):
        assert status == 200
        assert_same_audio(body, reference_pcm(pipeline, text, wav, seed, stream=stream))
    after = server.metrics()
    started = {
        rank: after[("lighttts_stage_requests_total", (("rank", rank), ("stage", "decode")))]
        - before.get(("lighttts_stage_requests_total", (("rank", rank), ("stage", "decode"))), 0)
        for rank in ("0", "1")
    }
    assert started["0"] > 0 and started["1"] > 0 and sum(started.values()) == 16, started
    hits = after[("lighttts_voice_cache_lookups_total", (("result", "hit"),))]
    assert hits >= 8  # 16 requests over 8 voices: at least half found their voice cached
    server.wait_slots_free(60.0)


def test_metrics_move(server):
    m = server.metrics()
    ttfa = {labels: v for (name, labels), v in m.items() if name == "lighttts_time_to_first_audio_seconds_count"}
    model, mode = ("model", "tiny"), ("mode", "zero_shot")  # the model's label: its folder's name
    assert ttfa[(("endpoint", "inference_zero_shot"), mode, model, ("voice_kind", "new"))] > 0  # first voices: new
    assert ttfa[(("endpoint", "inference_zero_shot"), mode, model, ("voice_kind", "saved"))] > 0  # later: cached
    assert m[("lighttts_audio_seconds_total", ())] > 0
    assert m[("lighttts_real_time_factor_count", (("endpoint", "inference_zero_shot"), mode, model))] > 0
    assert m[("lighttts_batch_size_count", (("rank", "0"), ("stage", "llm")))] > 0
    for kind in ("prefill", "decode"):  # every LLM step is timed, by kind
        assert m[("lighttts_llm_step_seconds_count", (("kind", kind), model))] > 0
    assert m[("lighttts_process_ready", (("rank", "1"), ("stage", "decode")))] == 1


@pytest.mark.parametrize("path", ["/healthz", "/liveness", "/readiness", "/health"])
def test_health_endpoints(server, path):
    assert httpx.get(f"{server.url}{path}", timeout=60).status_code == 200


def test_query_tts_model(server):
    for method in ("GET", "POST"):
        r = httpx.request(method, f"{server.url}/query_tts_model")
        assert r.status_code == 200 and r.json()["tts_models"]
