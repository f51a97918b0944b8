"""What a new user of an OpenAI client meets first, on a fresh server with API keys and OpenAI voice names mapped
by the operator (--voice_alias): the dashboard's series before any request, the official `openai` package's
exception classes with our messages in str(e), and `voice="alloy"`."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
import websockets
from openai_harness import (
    AUTH,
    EXTRA,
    KEY,
    LONG_TOKENS,
    SAMPLES_PER_TOKEN,
    SEED,
    TEXT,
    TOKENS,
    WRONG_KEY,
    Server,
    client,
    event_error,
    openai_error,
)
from server_harness import voice_wav
from test_dashboard import queried

__all__ = ["client"]  # a fixture, used by name


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    srv = Server(
        tiny_model_dir,
        tmp_path_factory,
        1,
        "--voice_alias",
        "alloy=Alice",
        "--voice_alias",
        "nova=voice_0000gone",
        "--max_requests_per_client",
        "1",
    )
    try:
        yield srv
    finally:
        srv.stop()


def test_a_fresh_server_exports_every_series_the_dashboard_queries(server):
    """Before any request (this test runs first): every metric and label the Grafana dashboard queries."""
    labels: dict[str, set[str]] = {}
    for (name, items), _ in server.metrics().items():
        labels.setdefault(name, set()).update(label for label, _ in items)
    missing = [
        item
        for item in queried()
        if item.partition("{")[0] not in labels
        or item.partition("{")[2].rstrip("}") not in labels[item.partition("{")[0]] | {""}
    ]
    assert missing == []


def test_openai_voice_names_map_to_saved_voices(server, client):
    with pytest.raises(openai.NotFoundError) as e:  # mapped, but no voice named Alice yet
        client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT)
    assert "voice 'alloy' is an alias of 'Alice', which is no saved voice's id or name" in str(e.value)
    assert "no saved voices" in str(e.value) and e.value.param == "voice"

    blank = httpx.post(
        f"{server.url}/v1/audio/voices",
        headers=AUTH,
        data={"name": "Alice", "text": " "},
        files={"audio": ("a.wav", voice_wav(8), "audio/wav")},
        timeout=60,
    )
    assert blank.status_code == 400 and openai_error(blank)[0] == "bad_text"
    saved = httpx.post(
        f"{server.url}/v1/audio/voices",
        headers=AUTH,
        data={"name": "Alice"},  # no transcript
        files={"audio": ("a.wav", voice_wav(8), "audio/wav")},
        timeout=60,
    )
    assert saved.status_code == 201 and saved.json()["aliases"] == ["alloy"], saved.text
    voice = saved.json()["id"]
    pcm = client.audio.speech.create(
        model="tts-1", voice="alloy", input=TEXT, response_format="pcm", extra_body=EXTRA
    ).content
    assert len(pcm) == 2 * TOKENS * SAMPLES_PER_TOKEN
    listed = httpx.get(f"{server.url}/v1/audio/voices", headers=AUTH).json()["data"]
    assert [(v["id"], v["aliases"]) for v in listed] == [(voice, ["alloy"])]

    with pytest.raises(openai.NotFoundError) as e:  # OpenAI's name that is not mapped: the 404 lists what is
        client.audio.speech.create(model="tts-1", voice="shimmer", input=TEXT)
    message = str(e.value)
    assert "voice 'shimmer' not found" in message and f"saved voices: {voice} (Alice)" in message
    assert "aliases: alloy -> Alice, nova -> voice_0000gone" in message

    async def orpheus(voice_name: str) -> dict:
        async with websockets.connect(server.url.replace("http", "ws") + "/ws/tts", additional_headers=AUTH) as ws:
            await ws.send(json.dumps({"text": TEXT, "voice": voice_name}))
            while isinstance(message := await ws.recv(), bytes):
                pass
            return json.loads(message)

    code, text = event_error(asyncio.run(orpheus("nova")))
    assert code == "not_found" and "'nova' is an alias of 'voice_0000gone'" in text


def test_openai_client_exception_classes_carry_our_messages(server, client):
    voice = "alloy"
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.speech.create(model="tts-1", voice=voice, input=TEXT, speed=8.0)
    assert "speed: Input should be less than or equal to 4" in str(e.value) and e.value.param == "speed"
    assert (e.value.type, e.value.code) == ("invalid_request_error", "bad_request")

    with openai.OpenAI(base_url=server.url + "/v1", api_key=WRONG_KEY, max_retries=0) as stranger:
        with pytest.raises(openai.AuthenticationError) as e:
            stranger.models.list()
    assert "invalid API key" in str(e.value) and e.value.type == "authentication_error"

    with pytest.raises(openai.NotFoundError) as e:
        client.get("/audio/translations-of-speech", cast_to=object)
    assert "Invalid URL (GET /v1/audio/translations-of-speech)" in str(e.value)

    with pytest.raises(openai.APIStatusError) as e:  # one bound for every body, said with its units
        client.audio.speech.create(model="tts-1", voice=voice, input="x" * 900_000)  # over 2 x 400 KB + 64 KiB
    assert e.value.status_code == 413 and "the server takes at most" in str(e.value) and "MiB" in str(e.value)

    with client.audio.speech.with_streaming_response.create(  # --max_requests_per_client 1: this one holds it
        model="tts-1",
        voice=voice,
        input=TEXT,
        response_format="pcm",
        extra_body={"seed": SEED, "fixed_speech_tokens": LONG_TOKENS},
    ) as held:
        pieces = held.iter_bytes()
        next(pieces)
        with pytest.raises(openai.RateLimitError) as e:
            client.audio.speech.create(model="tts-1", voice=voice, input=TEXT)
        b"".join(pieces)
    assert e.value.response.headers["retry-after"] == "1" and e.value.type == "rate_limit_error"
    assert e.value.message.partition(" - ")[2] == openai_error(e.value.response)[1]  # our message, whole
    assert httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
