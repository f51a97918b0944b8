"""Saved voices (CRUD over two HTTP workers, deletion mid-use, limits, a restart), API keys on every endpoint
class, and bad input on every new field, on the real server (tiny model) with real clients."""

from __future__ import annotations

import asyncio
import http.client
import json

import httpx
import numpy as np
import openai
import pytest
import websockets
from openai_harness import (
    AUTH,
    EXTRA,
    FILE_KEY,
    KEY,
    LONG_TOKENS,
    MAX_PROMPT_SECONDS,
    MAX_TEXT_CHARS,
    MAX_VOICES,
    MAX_WAV_BYTES,
    SAMPLES_PER_TOKEN,
    SEED,
    TEXT,
    TOKENS,
    WRONG_KEY,
    PinnedClient,
    Server,
    assert_same_audio,
    client,
    event_error,
    openai_error,
    reference_pcm,
    stream_session,
    upload,
    voice,
)
from server_harness import voice_wav

__all__ = ["client", "reference_pcm", "voice"]  # fixtures, used by name


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    srv = Server(tiny_model_dir, tmp_path_factory, num_http_workers=2)
    try:
        yield srv
    finally:
        srv.stop()


def test_voices_crud_across_both_http_workers(server):
    """Created through one HTTP worker, seen, used and deleted through the other (one SQLite under --data_dir)."""
    http0, http1 = PinnedClient(server, "http0"), PinnedClient(server, "http1")
    files = {"audio": ("v.wav", voice_wav(21), "audio/wav")}
    created = http0.request("POST", "/v1/audio/voices", files=files, data={"name": "Bob", "text": "I am Bob."})
    assert created.status_code == 201, created.text
    voice = created.json()
    assert set(voice) == {"id", "object", "name", "text", "duration_s", "created_at", "aliases"}
    assert voice["aliases"] == []  # no --voice_alias names it
    assert (voice["object"], voice["name"], voice["text"], voice["duration_s"]) == ("voice", "Bob", "I am Bob.", 1.5)
    assert voice["id"].startswith("voice_")
    assert http1.request("GET", f"/v1/audio/voices/{voice['id']}").json() == voice
    listed = http1.request("GET", "/v1/audio/voices").json()
    assert listed["object"] == "list" and voice in listed["data"]
    speech = {"model": "tts-1", "voice": {"id": voice["id"]}, "input": TEXT, "response_format": "pcm", **EXTRA}
    assert len(http1.request("POST", "/v1/audio/speech", json=speech).content) == 2 * TOKENS * SAMPLES_PER_TOKEN

    deleted = http1.request("DELETE", f"/v1/audio/voices/{voice['id']}")
    assert deleted.json() == {"id": voice["id"], "object": "voice", "deleted": True}
    for r in (
        http0.request("GET", f"/v1/audio/voices/{voice['id']}"),
        http0.request("DELETE", f"/v1/audio/voices/{voice['id']}"),
        http0.request("POST", "/v1/audio/speech", json=speech),
    ):
        assert r.status_code == 404 and openai_error(r)[0] == "not_found", r.text
    assert voice["id"] not in {v["id"] for v in http0.request("GET", "/v1/audio/voices").json()["data"]}


def test_a_voice_deleted_mid_use(server, client):
    """The request in flight gets all its audio; the WebSocket session that names it and later requests get 404."""
    voice = upload(server.url, name="brief", audio=voice_wav(31)).json()["id"]
    with client.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice=voice,
        input=TEXT,
        response_format="pcm",
        extra_body={"seed": SEED, "fixed_speech_tokens": LONG_TOKENS},
    ) as response:
        pieces = response.iter_bytes()
        audio = next(pieces)
        assert httpx.delete(f"{server.url}/v1/audio/voices/{voice}", headers=AUTH).status_code == 200
        audio += b"".join(pieces)
    assert len(audio) == 2 * LONG_TOKENS * SAMPLES_PER_TOKEN
    with pytest.raises(openai.NotFoundError) as e:
        client.audio.speech.create(model="tts-1", voice=voice, input=TEXT)
    code, message = openai_error(e.value.response)
    assert code == "not_found" and message.startswith(f"voice {voice!r} not found") and message in str(e.value)
    events, _, code = asyncio.run(stream_session(server.url, [{"type": "session.config", "voice": voice}]))
    assert (event_error(events[0])[0], code) == ("not_found", 1008)


# ---- API keys


def test_every_endpoint_class_needs_the_key(server, voice):
    url, ws_url = server.url, server.url.replace("http", "ws")
    http_endpoints = [
        ("GET", "/v1/models", {}),
        ("GET", "/v1/audio/voices", {}),
        ("GET", f"/v1/audio/voices/{voice}", {}),
        ("DELETE", "/v1/audio/voices/voice_0000", {}),
        ("POST", "/v1/audio/voices", {"files": {"audio": ("a.wav", b"x", "audio/wav")}}),
        (
            "POST",
            "/v1/audio/speech",
            {"json": {"model": "tts-1", "voice": voice, "input": "Hi.", "fixed_speech_tokens": 2}},
        ),
        ("POST", "/inference_zero_shot", {"data": {"tts_text": "Hi.", "voice_id": voice, "fixed_speech_tokens": "2"}}),
        ("GET", "/query_tts_model", {}),
        ("GET", "/health", {}),
        ("GET", "/metrics", {}),
        ("GET", "/openapi.json", {}),
        ("GET", "/docs", {}),
    ]
    for method, path, kwargs in http_endpoints:
        for headers, challenge in (
            ({}, "Bearer"),
            ({"Authorization": f"Bearer {WRONG_KEY}"}, 'Bearer error="invalid_token"'),
            ({"Authorization": "Basic dXNlcjpwYXNz"}, "Bearer"),
        ):
            r = httpx.request(method, url + path, headers=headers, timeout=60, **kwargs)
            kind = openai_error(r)[0] if path.startswith("/v1/") else r.json()["kind"]  # each route's shape
            assert r.status_code == 401 and kind == "unauthorized", (path, headers, r.text)
            assert r.headers["www-authenticate"] == challenge
        for key in (KEY, FILE_KEY):  # --api_key and --api_key_file
            r = httpx.request(method, url + path, headers={"Authorization": f"Bearer {key}"}, timeout=60, **kwargs)
            assert r.status_code != 401 and r.status_code < 500, (path, r.status_code, r.text)
    for path in ("/liveness", "/readiness", "/healthz", "/", "/static/playground.js"):  # probes, the page
        assert httpx.get(url + path).status_code == 200, path
    for path in ("/static/../v1/models", "/static/%2e%2e/v1/audio/voices"):  # the open prefix opens nothing else
        conn = http.client.HTTPConnection("127.0.0.1", server.proc.port, timeout=10)
        conn.request("GET", path)  # sent as is (httpx would normalise the dots away)
        assert conn.getresponse().status == 404, path
        conn.close()

    async def handshake(path: str, **kwargs) -> int | None:
        try:
            async with websockets.connect(ws_url + path, **kwargs) as ws:
                await ws.close()
                return None
        except websockets.InvalidStatus as e:
            return e.response.status_code

    for path in ("/v1/audio/speech/stream", "/ws/tts", "/inference_zero_shot_bistream"):
        assert asyncio.run(handshake(path)) == 401
        assert asyncio.run(handshake(path, additional_headers={"Authorization": f"Bearer {WRONG_KEY}"})) == 401
        assert asyncio.run(handshake(path, additional_headers=AUTH)) is None
        assert asyncio.run(handshake(path, subprotocols=[f"lighttts.bearer.{FILE_KEY}"])) is None  # browsers
    spec = httpx.get(url + "/openapi.json", headers=AUTH).json()
    assert spec["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert "401" in spec["paths"]["/v1/audio/speech"]["post"]["responses"]
    assert "security" not in spec["paths"]["/readiness"]["get"]


# ---- bad input


def test_bad_speech_requests_get_4xx_json(server, client, voice):
    cases = [
        (dict(voice="voice_missing"), openai.NotFoundError, "voice 'voice_missing' not found"),
        (dict(model="whisper-1"), openai.NotFoundError, "model 'whisper-1' not found"),
        (dict(response_format="ogg"), openai.BadRequestError, "response_format: Input should be"),
        (dict(speed=8.0), openai.BadRequestError, "speed: Input should be less than or equal to 4"),
        (dict(speed=0.1), openai.BadRequestError, "speed: Input should be greater than or equal to 0.25"),
        (dict(input=" "), openai.BadRequestError, "input: input is empty"),
        (dict(input="x" * 4097), openai.BadRequestError, "input: String should have at most 4096 characters"),
        (
            dict(input="x" * (MAX_TEXT_CHARS + 1)),
            openai.BadRequestError,
            f"input has {MAX_TEXT_CHARS + 1} characters; the limit is {MAX_TEXT_CHARS}",
        ),
        (dict(instructions="x" * 4097), openai.BadRequestError, "instructions: String should have at most 4096"),
        (dict(stream_format="video"), openai.BadRequestError, "stream_format: Input should be"),
        (dict(extra_body={"fixed_speech_tokens": 10**6}), openai.BadRequestError, "fixed_speech_tokens must be"),
        (dict(extra_body={"seed": -1}), openai.BadRequestError, "seed: Input should be greater than or equal"),
        (dict(extra_body={"colour": "blue"}), openai.BadRequestError, "unknown field 'colour'"),
    ]
    for change, error, message in cases:
        args = {"model": "tts-1", "voice": voice, "input": "Hi.", **change}
        with pytest.raises(error) as e:
            client.audio.speech.create(**args)
        code, text = openai_error(e.value.response)
        assert text.startswith(message) and text in str(e.value), (change, text, str(e.value))
    malformed = httpx.post(
        f"{server.url}/v1/audio/speech",
        headers={**AUTH, "content-type": "application/json"},
        content=b'{"model": "tts-1",',
    )
    assert malformed.status_code == 400 and "not valid JSON" in openai_error(malformed)[1]
    both = httpx.post(
        f"{server.url}/inference_zero_shot",
        headers=AUTH,
        data={"tts_text": "Hi.", "voice_id": voice, "prompt_text": "p"},
    )
    assert both.status_code == 400 and "not both" in both.json()["error"]
    unknown = httpx.post(
        f"{server.url}/inference_zero_shot", headers=AUTH, data={"tts_text": "Hi.", "voice_id": "voice_nope"}
    )
    assert unknown.status_code == 404 and unknown.json()["kind"] == "not_found"

    async def bistream_start(start: dict) -> tuple[dict, int]:
        async with websockets.connect(
            server.url.replace("http", "ws") + "/inference_zero_shot_bistream", additional_headers=AUTH
        ) as ws:
            await ws.send(json.dumps(start))
            event = json.loads(await ws.recv())
            await ws.wait_closed()
        return event, ws.close_code

    for start, kind in (
        ({"voice_id": "voice_nope"}, "not_found"),
        ({"voice_id": 7}, "bad_request"),
        ({"voice_id": voice, "prompt_text": "p"}, "bad_request"),
    ):
        event, code = asyncio.run(bistream_start(start))
        assert (event["kind"], code) == (kind, 1008), (start, event)


def test_bad_voice_uploads_get_4xx_json_and_save_nothing(server):
    def listed() -> list[str]:
        return [v["id"] for v in httpx.get(f"{server.url}/v1/audio/voices", headers=AUTH).json()["data"]]

    before = listed()
    cases = [
        (dict(audio=b"this is a text file, not audio " * 10), 400, "bad_audio", "prompt audio is not a readable"),
        (
            dict(audio=voice_wav(1, seconds=MAX_PROMPT_SECONDS + 1)),
            400,
            "bad_audio",
            f"prompt audio is {MAX_PROMPT_SECONDS + 1:.1f} s; the limit is {MAX_PROMPT_SECONDS} s",
        ),
        (dict(audio=voice_wav(1, seconds=0.1)), 400, "bad_audio", "prompt audio is 0.10 s; it must be at least"),
        (
            dict(audio=b"\x00" * (MAX_WAV_BYTES + 1)),
            413,
            "too_large",
            f"audio is {MAX_WAV_BYTES + 1:,} bytes (0.4 MiB)",
        ),
        # over the one body bound (a prompt and a voice conversion's source: 2 x MAX_WAV_BYTES + 64 KiB), by its
        # Content-Length
        (dict(audio=b"\x00" * (3 * MAX_WAV_BYTES)), 413, "too_large", "the request body is 1,200,"),
        (dict(text=" "), 400, "bad_text", "text is empty: give the recording's transcript, or leave the field out"),
        (dict(audio=b""), 400, "bad_audio", "audio is empty"),
        (dict(name=" "), 400, "bad_request", "name must be 1..256 characters"),
        (dict(text="x" * (MAX_TEXT_CHARS + 1)), 400, "bad_request", f"text must be at most {MAX_TEXT_CHARS}"),
    ]
    for overrides, status, kind, message in cases:
        r = upload(server.url, **overrides)
        code, text = openai_error(r)
        assert (r.status_code, code) == (status, kind) and text.startswith(message), (overrides.keys(), r.text)
    no_audio = httpx.post(
        f"{server.url}/v1/audio/voices", headers=AUTH, data={"name": "x"}, files={"other": ("a", b"1")}
    )
    assert no_audio.status_code == 400 and openai_error(no_audio)[1] == "missing field audio"
    as_json = httpx.post(f"{server.url}/v1/audio/voices", headers=AUTH, json={"name": "x"})
    assert as_json.status_code == 400 and "multipart/form-data" in openai_error(as_json)[1]
    assert listed() == before

    made = [upload(server.url, name=f"fill {k}", audio=voice_wav(40 + k)) for k in range(MAX_VOICES - len(before))]
    assert all(r.status_code == 201 for r in made)
    full = upload(server.url, name="one too many", audio=voice_wav(50))
    assert (full.status_code, openai_error(full)[0]) == (409, "too_many_voices")
    for r in made:
        httpx.delete(f"{server.url}/v1/audio/voices/{r.json()['id']}", headers=AUTH)
    assert listed() == before  # and the files of every failed or deleted upload are gone:
    assert sorted(p.name for p in (server.data_dir / "voices").iterdir()) == sorted(
        f"{v}.{ext}" for v in before for ext in ("audio", "npz")
    )


def test_no_slot_left_after_every_bad_request(server):
    server.assert_no_slot_in_use()
    assert httpx.get(f"{server.url}/readiness").status_code == 200


def test_voices_survive_a_restart(server, voice, reference_pcm):
    """The same --data_dir after a restart: the voices are there and speak with their stored features (no model
    runs). This server has only --api_key_file's key, and --metrics_public."""
    ids = [v["id"] for v in httpx.get(f"{server.url}/v1/audio/voices", headers=AUTH).json()["data"]]
    server.restart("--api_key_file", str(server.key_file), "--metrics_public", num_http_workers=1)
    file_auth = {"Authorization": f"Bearer {FILE_KEY}"}
    assert httpx.get(f"{server.url}/v1/audio/voices", headers=AUTH).status_code == 401  # --api_key is gone
    assert [v["id"] for v in httpx.get(f"{server.url}/v1/audio/voices", headers=file_auth).json()["data"]] == ids
    assert httpx.get(f"{server.url}/metrics").status_code == 200  # --metrics_public
    pcm = httpx.post(
        f"{server.url}/v1/audio/speech",
        headers=file_auth,
        timeout=60,
        json={"model": "tts-1", "voice": voice, "input": TEXT, "response_format": "pcm", **EXTRA},
    )
    assert_same_audio(np.frombuffer(pcm.content, "<i2"), reference_pcm)  # same features, same seed
    features = server.prompt_features()
    assert (features["computed"], features["saved"]) == (0, 1)
