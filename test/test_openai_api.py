"""The OpenAI router, voices CRUD and both text-in WebSockets through a real uvicorn and real clients (the
official `openai` package, httpx, websockets), over ToneBackend: a test double of OUR backend interface that
speaks a tone, so that these tests check the protocol layer; the real pipeline is tested at integration."""

import asyncio
import base64
import io
import json
import threading
import time

import av
import httpx
import numpy as np
import openai
import pytest
import websockets
from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError

from asgi_thread import serving
from light_tts.errors import OverloadedError, WorkerDiedError
from light_tts.frontend.audio import decode_audio
from light_tts.server.audio_encoding import CONTENT_TYPES, RESPONSE_FORMATS
from light_tts.server.auth import ApiKeyMiddleware, AuthSettings
from light_tts.server.openai_api import create_openai_router
from light_tts.server.openai_schema import SpeechUsage, validation_error_handler
from light_tts.server.speech_ws_api import add_speech_websockets
from light_tts.server.voice_store import PromptFeatures, VoiceLimits, VoiceStore
from test_voice_store import wav_bytes

RATE, CHUNK_S, NUM_CHUNKS = 24000, 0.4, 3
KEY = "test-key-0123456789"
MODEL = "cosyvoice2-tiny"


class ToneBackend:
    """Three 0.4 s chunks of a 440 Hz tone per request; `gate`, when set, holds the second chunk back."""

    def __init__(self):
        self.num_feature_runs = 0
        self.num_closed_early = 0
        self.gate: threading.Event | None = None

    async def compute_features(self, audio: bytes) -> PromptFeatures:
        self.num_feature_runs += 1
        samples, rate = decode_audio(audio)
        num = max(1, int(len(samples) / rate * 25))
        return PromptFeatures(np.arange(num, dtype=np.int32), np.ones(192, np.float32),
                              np.zeros((2 * num, 80), np.float32))

    async def synthesize(self, job):
        if job.text == "OVERLOAD":
            raise OverloadedError("every request slot is busy")
        t = np.arange(int(CHUNK_S * RATE)) / RATE
        chunk = (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()
        num_chunks = NUM_CHUNKS if job.is_streamed else 1
        if not job.is_streamed:  # as the server does for speed != 1: the whole audio, time-scaled, at once
            chunk = np.resize(np.frombuffer(chunk * NUM_CHUNKS, "<i2"),
                              int(NUM_CHUNKS * CHUNK_S * RATE / job.speed)).tobytes()
        is_complete = False
        try:
            for k in range(num_chunks):
                if k == 1:
                    if self.gate is not None:
                        await asyncio.to_thread(self.gate.wait, 30)
                    if job.text == "DIE LATE":
                        raise WorkerDiedError("a worker process died")
                yield chunk
            job.usage = SpeechUsage.of(len(job.text.split()), 25 * int(NUM_CHUNKS * CHUNK_S))
            is_complete = True
        finally:
            self.num_closed_early += not is_complete


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    backend = ToneBackend()
    store = VoiceStore(tmp_path_factory.mktemp("data"), VoiceLimits(max_voices=4, max_upload_bytes=300_000,
                                                                    max_seconds=5.0, max_text_chars=200))
    app = FastAPI()
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    router = create_openai_router(backend, store, [MODEL])
    add_speech_websockets(router, backend, store, max_utterance_chars=500)
    app.include_router(router)
    with serving(ApiKeyMiddleware(app, AuthSettings((KEY,)))) as url:
        yield url, backend, store


@pytest.fixture(scope="module")
def url(server):
    return server[0]


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)


def upload(url, name="Alice", text="Hello there.", audio=None, **extra):
    files = {"audio": ("voice.wav", wav_bytes(1.0) if audio is None else audio, "audio/wav")}
    return httpx.post(url + "/v1/audio/voices", headers={"Authorization": f"Bearer {KEY}"}, files=files,
                      data={"name": name, "text": text, **extra})


@pytest.fixture(scope="module")
def voice(url):
    r = upload(url)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def decode(data: bytes, fmt: str) -> tuple[int, float]:
    if fmt == "pcm":
        return RATE, len(data) / 2 / RATE
    with av.open(io.BytesIO(data)) as c:
        frames = list(c.decode(audio=0))
    return frames[0].sample_rate, sum(f.samples for f in frames) / frames[0].sample_rate


@pytest.mark.parametrize("fmt", RESPONSE_FORMATS)
def test_openai_client_speech_in_every_format(client, voice, fmt):
    response = client.audio.speech.create(model="tts-1", voice=voice, input="Hi there.", response_format=fmt)
    assert response.response.headers["content-type"] == CONTENT_TYPES[fmt]
    rate, duration = decode(response.content, fmt)
    assert rate == (48000 if fmt == "opus" else RATE)
    assert NUM_CHUNKS * CHUNK_S - 1e-9 <= duration <= NUM_CHUNKS * CHUNK_S + 0.12  # + codec padding


def test_streaming_pcm_arrives_before_the_end(server, client, voice):
    """The first chunk reaches the client while the backend still holds the second one back."""
    _, backend, _ = server
    backend.gate = threading.Event()
    try:
        with client.audio.speech.with_streaming_response.create(model=MODEL, voice={"id": voice}, input="Stream.",
                                                                response_format="pcm") as response:
            pieces = response.iter_bytes()
            received = next(pieces)
            assert len(received) > 0 and not backend.gate.is_set()
            backend.gate.set()
            received += b"".join(pieces)
    finally:
        backend.gate = None
    assert len(received) == 2 * int(CHUNK_S * RATE) * NUM_CHUNKS


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_client_that_leaves_aborts_the_synthesis(server, url, client, voice):
    _, backend, _ = server
    backend.gate, before = threading.Event(), backend.num_closed_early
    try:
        with client.audio.speech.with_streaming_response.create(model=MODEL, voice=voice, input="Bye.",
                                                                response_format="mp3") as response:
            next(response.iter_bytes())
        wait_for(lambda: backend.num_closed_early == before + 1, "the HTTP request's synthesis to be closed")

        async def leave_mid_utterance():
            async with websockets.connect(url.replace("http", "ws") + "/ws/tts",
                                          additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
                await ws.send(json.dumps({"text": "Long story.", "voice": voice}))
                await ws.recv()  # the first audio frame; then hang up

        asyncio.run(leave_mid_utterance())
        wait_for(lambda: backend.num_closed_early == before + 2, "the WebSocket's synthesis to be closed")
    finally:
        backend.gate.set()
        backend.gate = None


def test_sse_events_parse(client, voice):
    response = client.audio.speech.create(model=MODEL, voice=voice, input="Three words here.",
                                          response_format="mp3", stream_format="sse")
    assert response.response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[len("data: "):]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1) and len(events) > 2
    assert events[-1] == {"type": "speech.audio.done", "usage": {"input_tokens": 3, "output_tokens": 25,
                                                                 "total_tokens": 28}}
    mp3 = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert decode(mp3, "mp3")[0] == RATE


def test_speed_returns_a_whole_file(client, voice):
    response = client.audio.speech.create(model=MODEL, voice=voice, input="Fast.", response_format="wav", speed=2.0)
    assert response.response.headers["content-length"] == str(len(response.content))  # not chunked
    assert decode(response.content, "wav")[1] == pytest.approx(NUM_CHUNKS * CHUNK_S / 2)


def test_bad_speech_requests(client, voice):
    cases = [
        (dict(voice="voice_missing"), openai.NotFoundError, "voice 'voice_missing' not found"),
        (dict(model="whisper-1"), openai.NotFoundError, "model 'whisper-1' not found"),
        (dict(response_format="ogg"), openai.BadRequestError, "response_format: Input should be"),
        (dict(speed=8.0), openai.BadRequestError, "speed: Input should be less than or equal to 4"),
        (dict(input=" "), openai.BadRequestError, "input: input is empty"),
        (dict(input="x" * 4097), openai.BadRequestError, "input: String should have at most 4096 characters"),
        (dict(instructions="Speak like a pirate."), openai.BadRequestError, "instructions: instructions are not"),
        (dict(input="OVERLOAD"), openai.RateLimitError, "every request slot is busy"),
    ]
    for change, error, message in cases:
        args = {"model": MODEL, "voice": voice, "input": "Hi.", **change}
        with pytest.raises(error) as e:
            client.audio.speech.create(**args)
        assert e.value.response.json()["error"].startswith(message), e.value.response.text


def test_failure_after_the_start(url, client, voice):
    response = client.audio.speech.create(model=MODEL, voice=voice, input="DIE LATE", stream_format="sse")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == {"type": "error", "error": "a worker process died", "kind": "worker_died"}
    with pytest.raises(httpx.RemoteProtocolError):  # plain audio: the body is cut short
        httpx.post(url + "/v1/audio/speech", headers={"Authorization": f"Bearer {KEY}"}, json={"model": MODEL, "voice": voice, "input": "DIE LATE", "response_format": "pcm"}).read()


def test_voices_crud(server, url):
    _, backend, store = server
    runs = backend.num_feature_runs
    auth = {"Authorization": f"Bearer {KEY}"}
    created = upload(url, name="Bob", text="I am Bob.")
    assert created.status_code == 201
    voice = created.json()
    assert set(voice) == {"id", "object", "name", "text", "duration_s", "created_at"}
    assert (voice["object"], voice["name"], voice["text"], voice["duration_s"]) == ("voice", "Bob", "I am Bob.", 1.0)
    assert backend.num_feature_runs == runs + 1  # features computed once, at upload
    assert httpx.get(f"{url}/v1/audio/voices/{voice['id']}", headers=auth).json() == voice
    listed = httpx.get(url + "/v1/audio/voices", headers=auth).json()
    assert listed["object"] == "list" and voice in listed["data"]

    speech = {"model": MODEL, "voice": voice["id"], "input": "Hi.", "response_format": "pcm"}
    assert httpx.post(url + "/v1/audio/speech", headers=auth, json=speech).status_code == 200
    assert backend.num_feature_runs == runs + 1  # a saved voice runs no feature computation

    deleted = httpx.delete(f"{url}/v1/audio/voices/{voice['id']}", headers=auth)
    assert deleted.json() == {"id": voice["id"], "object": "voice", "deleted": True}
    for r in (httpx.get(f"{url}/v1/audio/voices/{voice['id']}", headers=auth),
              httpx.delete(f"{url}/v1/audio/voices/{voice['id']}", headers=auth),
              httpx.post(url + "/v1/audio/speech", headers=auth, json=speech)):
        assert r.status_code == 404 and r.json()["kind"] == "not_found"


def test_a_voice_deleted_mid_request_still_finishes_it(server, url, client):
    _, backend, _ = server
    voice_id = upload(url, name="Brief").json()["id"]
    backend.gate = threading.Event()
    try:
        with client.audio.speech.with_streaming_response.create(model=MODEL, voice=voice_id, input="Still here.",
                                                                response_format="pcm") as response:
            pieces = response.iter_bytes()
            audio = next(pieces)
            client.delete(f"/audio/voices/{voice_id}", cast_to=object)
            backend.gate.set()
            audio += b"".join(pieces)
    finally:
        backend.gate = None
    assert len(audio) == 2 * int(CHUNK_S * RATE) * NUM_CHUNKS
    with pytest.raises(openai.NotFoundError):
        client.audio.speech.create(model=MODEL, voice=voice_id, input="Gone?")


def test_bad_voice_uploads(url):
    assert upload(url, audio=b"not audio at all").json()["kind"] == "bad_audio"
    assert upload(url, audio=wav_bytes(6.0)).json()["error"].startswith("prompt audio is 6.0 s; the limit is 5 s")
    too_big = upload(url, audio=b"\x00" * 400_000)
    assert too_big.status_code == 413 and too_big.json()["kind"] == "too_large"
    assert upload(url, name="").json()["error"].startswith("name must be 1..256 characters")
    no_audio = httpx.post(url + "/v1/audio/voices", headers={"Authorization": f"Bearer {KEY}"},
                          data={"name": "x"}, files={"other": ("a", b"1")})
    assert no_audio.status_code == 400 and no_audio.json()["error"] == "missing field audio"
    as_json = httpx.post(url + "/v1/audio/voices", headers={"Authorization": f"Bearer {KEY}"}, json={"name": "x"})
    assert as_json.status_code == 400 and "multipart/form-data" in as_json.json()["error"]


def test_models_and_auth(url):
    models = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [MODEL]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()


async def stream_session(url, voice, frames):
    """Send `frames`, collect everything until the server closes; returns (events, binary frames, close code)."""
    events, audio = [], []
    async with websockets.connect(url.replace("http", "ws") + "/v1/audio/speech/stream",
                                  additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        try:
            for frame in frames:
                await ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))
            async for message in ws:
                if isinstance(message, bytes):
                    audio.append(message)
                else:
                    events.append(json.loads(message))
        except websockets.ConnectionClosedError:  # a close code other than 1000, after the messages before it
            pass
    return events, audio, ws.close_code


def test_vllm_omni_websocket_two_utterances(url, voice):
    frames = [{"type": "session.config", "voice": voice, "response_format": "pcm", "stream_audio": True},
              {"type": "input.text", "text": "First "}, {"type": "input.text", "text": "one."},
              {"type": "input.done"},
              {"type": "session.config", "voice": voice, "response_format": "wav"},
              {"type": "input.text", "text": "Second."}, {"type": "input.done"}, {"type": "session.close"}]
    events, audio, code = asyncio.run(stream_session(url, voice, frames))
    assert [e["type"] for e in events] == ["audio.start", "audio.done", "session.done"] * 2 and code == 1000
    assert events[0]["sentence_text"] == "First one." and events[0]["sample_rate"] == RATE
    assert events[3] == {"type": "audio.start", "utterance_index": 1, "sentence_index": 0, "sentence_text": "Second.",
                         "format": "wav"}
    pcm, wav = audio[:-1], audio[-1]
    assert len(pcm) == NUM_CHUNKS and events[1]["total_bytes"] == sum(map(len, pcm))  # streamed chunk by chunk
    assert decode(wav, "wav") == (RATE, pytest.approx(NUM_CHUNKS * CHUNK_S)) and events[4]["total_bytes"] == len(wav)


def test_vllm_omni_websocket_errors(url, voice):
    events, audio, code = asyncio.run(stream_session(url, voice, ['{"type": "input.text"', {"type": "x"}]))
    assert events[0]["type"] == "error" and "not valid JSON" in events[0]["message"] and code == 1008
    frames = [{"type": "session.config", "voice": voice}, {"type": "bogus"}, b"\x00\x01"]
    events, audio, code = asyncio.run(stream_session(url, voice, frames))
    assert [e["message"].split(";")[0] for e in events] == [
        "unknown message type 'bogus'", "binary frames are not part of this protocol"] and code == 1003
    events, _, code = asyncio.run(stream_session(url, voice, [{"type": "session.config", "voice": "voice_nope"}]))
    assert (events[0]["kind"], code) == ("not_found", 1008)


def test_orpheus_websocket(url, voice):
    async def session():
        received = []
        async with websockets.connect(url.replace("http", "ws") + "/ws/tts",
                                      additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
            await ws.send(json.dumps({"text": "One.", "voice": voice}))
            await ws.send(json.dumps({"text": "Two."}))
            await ws.send(json.dumps({"text": ""}))
            await ws.send("__END__")
            async for message in ws:
                received.append(message)
        return received, ws.close_code

    received, code = asyncio.run(session())
    (error,) = [json.loads(m) for m in received if isinstance(m, str)]  # answered while "One." is spoken
    assert error["message"] == '"text" must be a non-empty string'
    rest = [m for m in received if isinstance(m, bytes)]
    ends = [k for k, m in enumerate(rest) if m == b"__END__"]
    assert ends == [NUM_CHUNKS, 2 * NUM_CHUNKS + 1] and code == 1000
    assert all(len(m) == 2 * int(CHUNK_S * RATE) for m in rest if m != b"__END__")


def test_openapi_describes_the_endpoints(url):
    spec = httpx.get(url + "/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert {"/v1/audio/speech", "/v1/audio/voices", "/v1/audio/voices/{voice_id}", "/v1/models"} <= set(spec["paths"])
    speech = spec["paths"]["/v1/audio/speech"]["post"]
    assert set(CONTENT_TYPES.values()) <= set(speech["responses"]["200"]["content"])
    assert speech["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert {"input", "voice", "response_format", "speed", "stream_format", "instructions"} <= set(
        spec["components"]["schemas"]["SpeechRequest"]["properties"])
    upload_form = spec["paths"]["/v1/audio/voices"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert set(upload_form["schema"]["properties"]) == {"audio", "text", "name"}
