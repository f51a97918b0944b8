"""The OpenAI-compatible API, saved voices, both text-in WebSockets and API keys on the real server (tiny model,
two HTTP workers), driven by real clients: the official `openai` package, httpx and `websockets`. Audio is checked
with independent decoders (PyAV, and Debian's ffprobe/ffmpeg when installed). One server serves the module; the
last test restarts it on the same --data_dir."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import signal
import subprocess
import time

import av
import httpx
import numpy as np
import openai
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from server_harness import ServerProcess, voice_wav

KEY, FILE_KEY, WRONG_KEY = "e2e-key-0123456789abcdef", "e2e-file-key-fedcba9876543210", "e2e-wrong-key-000000"
AUTH = {"Authorization": f"Bearer {KEY}"}
RATE, SAMPLES_PER_TOKEN = 24000, 960
TOKENS, SEED = 50, 5  # every test utterance: one sentence of exactly 50 speech tokens (2 s), same seed
EXTRA = {"seed": SEED, "fixed_speech_tokens": TOKENS}
LONG_TOKENS = 3 * TOKENS  # streamed in several chunks, within MAX_AUDIO_SECONDS
TEXT = "Hello there."
MAX_TEXT_CHARS, MAX_PROMPT_SECONDS, MAX_WAV_BYTES, MAX_VOICES = 600, 5, 400_000, 4
MAX_AUDIO_SECONDS = 7  # a request of more audio fails once it has started streaming
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
CONTENT_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
                 "wav": "audio/wav", "pcm": "audio/pcm"}


class Server:
    """The module's server; `restart` stops it and starts another on the same --data_dir."""

    def __init__(self, model_dir, tmp_path_factory):
        self.model_dir, self.factory = model_dir, tmp_path_factory
        self.data_dir = tmp_path_factory.mktemp("voices")
        self.key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
        self.key_file.write_text(f"# test keys\n\n{FILE_KEY}\n")
        self.proc = self.start("--api_key", KEY, "--api_key_file", str(self.key_file), "--log_level", "debug")

    def start(self, *flags: str) -> ServerProcess:
        proc = ServerProcess(self.model_dir, self.factory.mktemp("logs") / "server.log", "--httpserver_workers", "2",
                             "--data_dir", str(self.data_dir), "--max_voices", str(MAX_VOICES),
                             "--max_text_chars", str(MAX_TEXT_CHARS), "--max_prompt_seconds", str(MAX_PROMPT_SECONDS),
                             "--max_prompt_wav_bytes", str(MAX_WAV_BYTES), "--running_max_req_size", "8",
                             "--request_timeout_s", "120", "--max_audio_seconds", str(MAX_AUDIO_SECONDS), *flags)
        try:
            proc.wait_ready()
        except BaseException:
            proc.stop()
            raise
        return proc

    def restart(self, *flags: str) -> None:
        self.stop()
        self.proc = self.start(*flags)

    def stop(self) -> None:
        code = self.proc.stop(signal.SIGTERM)
        assert code == 0, self.proc.log_path.read_text()[-3000:]
        self.proc.assert_clean_exit_state()
        log = self.proc.log_path.read_text()
        assert KEY not in log and FILE_KEY not in log and WRONG_KEY not in log  # never logged, at any level

    @property
    def url(self) -> str:
        return self.proc.url

    def metrics(self, key: str = KEY) -> dict:
        text = httpx.get(f"{self.url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def prompt_features(self) -> dict[str, float]:
        m = self.metrics()
        return {source: m.get(("lighttts_prompt_features_total", (("source", source),)), 0.0)
                for source in ("computed", "cache", "saved")}

    def assert_no_slot_in_use(self) -> None:
        """No request holds a slot; aborted ones free theirs once every stage confirmed (within a step)."""
        for _ in range(200):
            if self.metrics()[("lighttts_request_slots", (("state", "in_use"),))] == 0:
                return
            time.sleep(0.05)
        raise AssertionError("a request slot is still in use")


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    srv = Server(tiny_model_dir, tmp_path_factory)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120) as c:
        yield c


def upload(url: str, name: str = "Alice", audio: bytes | None = None, text: str = "A short prompt.",
           key: str = KEY, via: httpx.Client | None = None) -> httpx.Response:
    files = {"audio": ("voice.wav", voice_wav(3) if audio is None else audio, "audio/wav")}
    post = via.post if via is not None else httpx.post
    return post(f"{url}/v1/audio/voices", headers={"Authorization": f"Bearer {key}"}, files=files,
                data={"name": name, "text": text}, timeout=60)


@pytest.fixture(scope="module")
def voice(server):
    r = upload(server.url, name="module voice")
    assert r.status_code == 201, r.text
    return r.json()["id"]


# ---- which HTTP worker serves a connection (from /proc: the worker process holding the accepted socket)

def worker_pids(server) -> dict[str, int]:
    processes = httpx.get(f"{server.url}/readiness").json()["processes"]
    return {name: p["pid"] for name, p in processes.items() if name.startswith("http")}


def serving_pid(response: httpx.Response, pids: dict[str, int]) -> str:
    client_port = response.extensions["network_stream"].get_extra_info("client_addr")[1]
    server_port = int(response.url.port)
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote = (int(a.split(":")[1], 16) for a in fields[1:3])
            if (local, remote) == (server_port, client_port):
                inode = fields[9]
    assert inode is not None, "the server side of the connection is not in /proc/net/tcp"
    for name, pid in pids.items():
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return name
            except OSError:
                continue
    raise AssertionError(f"no HTTP worker holds socket {inode}")


class PinnedClient:
    """Requests through one given HTTP worker: a fresh connection until the kernel hands one to that worker."""

    def __init__(self, server, name: str):
        self.server, self.name, self.pids = server, name, worker_pids(server)

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        for _ in range(100):
            with httpx.Client(base_url=self.server.url, headers=AUTH, timeout=60) as c:
                if serving_pid(c.get("/liveness"), self.pids) != self.name:
                    continue
                response = c.request(method, path, **kwargs)  # same keep-alive connection
                assert serving_pid(response, self.pids) == self.name
                return response
        raise AssertionError(f"no connection reached {self.name}")


# ---- decoding

def decode_with_pyav(data: bytes) -> tuple[int, np.ndarray]:
    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
        rate = container.streams.audio[0].codec_context.sample_rate
    return rate, np.concatenate(frames)


def decode_with_ffmpeg(data: bytes) -> tuple[str, int, int]:
    """(codec, sample rate, samples) from Debian's ffprobe and ffmpeg, reading the bytes from a pipe."""
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,sample_rate",
                                       "-of", "json", "-i", "pipe:0"], input=data, capture_output=True,
                                      check=True).stdout)["streams"][0]
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", "pipe:0", "-f", "s16le", "-ac", "1", "pipe:1"],
                         input=data, capture_output=True, check=True).stdout
    return probe["codec_name"], int(probe["sample_rate"]), len(pcm) // 2


def assert_same_audio(samples: np.ndarray, reference: np.ndarray) -> None:
    """The same audio: same seed, same speech tokens; the decode engine's float rounding differs by at most one
    int16 step between batch and shared-prefix shapes (docs/architecture.md)."""
    assert len(samples) == len(reference)
    assert np.abs(samples.astype(np.int32) - reference).max() <= 1


@pytest.fixture(scope="module")
def reference_pcm(server, voice):
    with openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120) as c:
        pcm = c.audio.speech.create(model="tts-1", voice=voice, input=TEXT, response_format="pcm",
                                    extra_body=EXTRA).content
    assert len(pcm) == 2 * TOKENS * SAMPLES_PER_TOKEN
    return np.frombuffer(pcm, "<i2")


@pytest.mark.parametrize("fmt", FORMATS)
def test_openai_client_speaks_every_format(client, voice, reference_pcm, fmt):
    """Each format decodes (PyAV; ffprobe + ffmpeg too) to the rate and length of the pcm of the same request and
    seed; the lossless ones to the very same samples."""
    response = client.audio.speech.create(model="tts-1", voice=voice, input=TEXT, response_format=fmt,
                                          extra_body=EXTRA)
    assert response.response.headers["content-type"] == CONTENT_TYPES[fmt]
    data, seconds = response.content, len(reference_pcm) / RATE
    if fmt == "pcm":
        assert_same_audio(np.frombuffer(data, "<i2"), reference_pcm)
        return
    decoders = [("pyav", *decode_with_pyav(data))]
    if shutil.which("ffprobe") and shutil.which("ffmpeg"):
        codec, rate, num = decode_with_ffmpeg(data)
        assert codec == {"mp3": "mp3", "opus": "opus", "aac": "aac", "flac": "flac", "wav": "pcm_s16le"}[fmt]
        decoders.append(("ffmpeg", rate, np.zeros(num)))
    for name, rate, samples in decoders:
        assert rate == (48000 if fmt == "opus" else RATE), name  # Opus decoders always output 48 kHz
        if fmt in ("wav", "flac"):
            assert len(samples) == len(reference_pcm), name
            if name == "pyav":
                assert_same_audio(samples, reference_pcm)
        else:  # a lossy codec pads to whole frames (and its encoder delay), never drops audio
            assert seconds - 0.002 <= len(samples) / rate <= seconds + 0.15, (name, len(samples) / rate)


def test_streamed_pcm_arrives_in_chunks_before_the_end(server, client, voice):
    """with_streaming_response: the first bytes arrive while the request is still running (the decode process
    is stopped right then, so the server cannot have finished meanwhile), and the pieces add up to all of it."""
    decode_pid = httpx.get(f"{server.url}/readiness").json()["processes"]["decode0"]["pid"]
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice=voice, input=TEXT, response_format="pcm",
            extra_body={"seed": SEED, "fixed_speech_tokens": LONG_TOKENS}) as response:
        assert response.headers.get("transfer-encoding") == "chunked"
        pieces = response.iter_bytes()
        received = [next(pieces)]
        os.kill(decode_pid, signal.SIGSTOP)
        try:
            in_flight = server.metrics()[("lighttts_active_requests", ())]
        finally:
            os.kill(decode_pid, signal.SIGCONT)
        received += [piece for piece in pieces if piece]
    assert in_flight == 1 and len(received) >= 3
    assert len(b"".join(received)) == 2 * LONG_TOKENS * SAMPLES_PER_TOKEN


def outcomes(server, endpoint: str) -> dict[str, float]:
    return {dict(labels)["outcome"]: value for (name, labels), value in server.metrics().items()
            if name == "lighttts_requests_total" and dict(labels).get("endpoint") == endpoint}


def test_a_client_that_leaves_ends_its_request(server, client, voice):
    """Over HTTP and WebSocket: the request ends as client_gone (aborted in every stage, its slot freed), not
    run to its end."""
    http_before, ws_before = outcomes(server, "v1_audio_speech"), outcomes(server, "ws_tts")
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice=voice, input=TEXT, response_format="mp3",
            extra_body={"seed": SEED, "fixed_speech_tokens": LONG_TOKENS}) as response:
        next(response.iter_bytes())

    async def leave_mid_utterance():
        async with websockets.connect(server.url.replace("http", "ws") + "/ws/tts", additional_headers=AUTH) as ws:
            await ws.send(json.dumps({"text": TEXT, "voice": voice}))
            await ws.recv()  # the first audio frame; then hang up

    asyncio.run(leave_mid_utterance())
    server.assert_no_slot_in_use()
    for endpoint, before in (("v1_audio_speech", http_before), ("ws_tts", ws_before)):
        after = outcomes(server, endpoint)
        assert after.get("client_gone", 0) == before.get("client_gone", 0) + 1, endpoint
        assert after.get("ok", 0) == before.get("ok", 0), endpoint


def test_a_failure_after_the_start(server, client, voice):
    """More audio than --max_audio_seconds: SSE ends with an error event (after audio deltas, no done); plain
    audio is cut short, which the client sees as an incomplete body."""
    too_long = {"seed": SEED, "fixed_speech_tokens": 25 * (MAX_AUDIO_SECONDS + 1)}
    response = client.audio.speech.create(model="tts-1", voice=voice, input=TEXT, response_format="opus",
                                          stream_format="sse", extra_body=too_long)
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[0]["type"] == "speech.audio.delta" and events[-1]["type"] == "error"
    assert events[-1]["kind"] == "too_large" and "--max_audio_seconds" in events[-1]["error"]
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(f"{server.url}/v1/audio/speech", headers=AUTH, timeout=60, json={
            "model": "tts-1", "voice": voice, "input": TEXT, "response_format": "pcm", **too_long}).read()


def test_sse_events_parse(client, voice, reference_pcm):
    response = client.audio.speech.create(model="tts-1", voice=voice, input=TEXT, response_format="pcm",
                                          stream_format="sse", extra_body=EXTRA)
    assert response.response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[len("data: "):]) for line in response.text.splitlines() if line.startswith("data: ")]
    deltas, done = events[:-1], events[-1]
    assert deltas and all(e["type"] == "speech.audio.delta" for e in deltas)
    assert_same_audio(np.frombuffer(b"".join(base64.b64decode(e["audio"]) for e in deltas), "<i2"), reference_pcm)
    usage = done["usage"]
    assert done["type"] == "speech.audio.done" and usage["output_tokens"] == TOKENS
    assert usage["input_tokens"] > 0 and usage["total_tokens"] == usage["input_tokens"] + TOKENS


def test_a_saved_voice_runs_no_speech_tokenizer_or_speaker_model(server, voice):
    """lighttts_prompt_features_total{source}: "computed" counts every run of the two models; a request with a
    saved voice adds to "saved" only, over every entry point that takes one."""
    before = server.prompt_features()
    speech = httpx.post(f"{server.url}/v1/audio/speech", headers=AUTH, timeout=60,
                        json={"model": "default", "voice": voice, "input": TEXT, "response_format": "wav", **EXTRA})
    form = httpx.post(f"{server.url}/inference_zero_shot", headers=AUTH, timeout=60,
                      data={"tts_text": TEXT, "voice_id": voice, "seed": str(SEED), "fixed_speech_tokens": "10"})
    assert speech.status_code == form.status_code == 200, (speech.text, form.text)
    assert len(form.content) == 2 * 10 * SAMPLES_PER_TOKEN
    bistream = asyncio.run(bistream_with_voice(server.url, voice))
    assert bistream == (2 * 20 * SAMPLES_PER_TOKEN, 1000)
    after = server.prompt_features()
    assert after == {**before, "saved": before["saved"] + 3}

    created = upload(server.url, name="counted", audio=voice_wav(11))  # an upload computes them once
    assert created.status_code == 201, created.text
    assert server.prompt_features() == {**after, "computed": after["computed"] + 1}
    assert httpx.delete(f"{server.url}/v1/audio/voices/{created.json()['id']}", headers=AUTH).status_code == 200


async def bistream_with_voice(url: str, voice: str) -> tuple[int, int]:
    async with websockets.connect(url.replace("http", "ws") + "/inference_zero_shot_bistream",
                                  additional_headers=AUTH) as ws:
        await ws.send(json.dumps({"voice_id": voice, "fixed_speech_tokens": 20, "seed": SEED}))
        for piece in ("Hello ", "there."):
            await ws.send(json.dumps({"tts_text": piece}))
        await ws.send(json.dumps({"finish": True}))
        num_bytes = sum([len(m) async for m in ws])
    return num_bytes, ws.close_code


def test_voices_crud_across_both_http_workers(server):
    """Created through one HTTP worker, seen, used and deleted through the other (one SQLite under --data_dir)."""
    http0, http1 = PinnedClient(server, "http0"), PinnedClient(server, "http1")
    files = {"audio": ("v.wav", voice_wav(21), "audio/wav")}
    created = http0.request("POST", "/v1/audio/voices", files=files, data={"name": "Bob", "text": "I am Bob."})
    assert created.status_code == 201, created.text
    voice = created.json()
    assert set(voice) == {"id", "object", "name", "text", "duration_s", "created_at"}
    assert (voice["object"], voice["name"], voice["text"], voice["duration_s"]) == ("voice", "Bob", "I am Bob.", 1.5)
    assert voice["id"].startswith("voice_")
    assert http1.request("GET", f"/v1/audio/voices/{voice['id']}").json() == voice
    listed = http1.request("GET", "/v1/audio/voices").json()
    assert listed["object"] == "list" and voice in listed["data"]
    speech = {"model": "tts-1", "voice": {"id": voice["id"]}, "input": TEXT, "response_format": "pcm", **EXTRA}
    assert len(http1.request("POST", "/v1/audio/speech", json=speech).content) == 2 * TOKENS * SAMPLES_PER_TOKEN

    deleted = http1.request("DELETE", f"/v1/audio/voices/{voice['id']}")
    assert deleted.json() == {"id": voice["id"], "object": "voice", "deleted": True}
    for r in (http0.request("GET", f"/v1/audio/voices/{voice['id']}"),
              http0.request("DELETE", f"/v1/audio/voices/{voice['id']}"),
              http0.request("POST", "/v1/audio/speech", json=speech)):
        assert r.status_code == 404 and r.json()["kind"] == "not_found", r.text
    assert voice["id"] not in {v["id"] for v in http0.request("GET", "/v1/audio/voices").json()["data"]}


def test_a_voice_deleted_mid_use(server, client):
    """The request in flight gets all its audio; the WebSocket session that names it and later requests get 404."""
    voice = upload(server.url, name="brief", audio=voice_wav(31)).json()["id"]
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice=voice, input=TEXT, response_format="pcm",
            extra_body={"seed": SEED, "fixed_speech_tokens": LONG_TOKENS}) as response:
        pieces = response.iter_bytes()
        audio = next(pieces)
        assert httpx.delete(f"{server.url}/v1/audio/voices/{voice}", headers=AUTH).status_code == 200
        audio += b"".join(pieces)
    assert len(audio) == 2 * LONG_TOKENS * SAMPLES_PER_TOKEN
    with pytest.raises(openai.NotFoundError) as e:
        client.audio.speech.create(model="tts-1", voice=voice, input=TEXT)
    assert e.value.response.json() == {"error": f"voice {voice!r} not found", "kind": "not_found"}
    events, _, code = asyncio.run(stream_session(server.url, [{"type": "session.config", "voice": voice}]))
    assert (events[0]["kind"], code) == ("not_found", 1008)


# ---- WebSockets

async def stream_session(url: str, frames: list, headers: dict = AUTH) -> tuple[list, list, int]:
    """Send `frames` to /v1/audio/speech/stream and collect until the server closes: (events, binary, close code)."""
    events, audio = [], []
    async with websockets.connect(url.replace("http", "ws") + "/v1/audio/speech/stream",
                                  additional_headers=headers) as ws:
        try:
            for frame in frames:
                await ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))
            async for message in ws:
                (audio if isinstance(message, bytes) else events).append(
                    message if isinstance(message, bytes) else json.loads(message))
        except websockets.ConnectionClosedError:  # a close code other than 1000, after the messages before it
            pass
    return events, audio, ws.close_code


def test_vllm_omni_websocket_two_utterances_on_one_session(server, voice, reference_pcm):
    config = {"type": "session.config", "voice": voice, "response_format": "pcm", "stream_audio": True, **EXTRA}
    frames = [config, {"type": "input.text", "text": "Hello "}, {"type": "input.text", "text": "there."},
              {"type": "input.done"},
              {**config, "response_format": "wav", "stream_audio": False},
              {"type": "input.text", "text": TEXT}, {"type": "input.done"}, {"type": "session.close"}]
    events, audio, code = asyncio.run(stream_session(server.url, frames))
    assert [e["type"] for e in events] == ["audio.start", "audio.done", "session.done"] * 2 and code == 1000
    assert events[0] == {"type": "audio.start", "utterance_index": 0, "sentence_index": 0,
                         "sentence_text": TEXT, "format": "pcm", "sample_rate": RATE, "channels": 1}
    assert events[3]["utterance_index"] == 1 and events[3]["format"] == "wav"
    pcm, wav = audio[:-1], audio[-1]
    assert_same_audio(np.frombuffer(b"".join(pcm), "<i2"), reference_pcm)  # same text, voice and seed
    assert events[1] == {"type": "audio.done", "utterance_index": 0, "sentence_index": 0,
                         "total_bytes": sum(map(len, pcm)), "error": False}
    rate, samples = decode_with_pyav(wav)
    assert rate == RATE and len(samples) == len(reference_pcm) and events[4]["total_bytes"] == len(wav)


def test_vllm_omni_websocket_malformed_events(server, voice):
    events, _, code = asyncio.run(stream_session(server.url, ['{"type": "input.text"', {"type": "input.done"}]))
    assert events[0]["type"] == "error" and "not valid JSON" in events[0]["message"] and code == 1008
    events, _, code = asyncio.run(stream_session(server.url, [{"type": "session.config", "voice": voice,
                                                               "response_format": "ogg"}]))
    assert "response_format" in events[0]["message"] and code == 1008
    events, _, code = asyncio.run(stream_session(server.url, [{"type": "session.config", "voice": voice,
                                                               "speed": 9}]))
    assert "speed" in events[0]["message"] and code == 1008
    frames = [{"type": "session.config", "voice": voice}, {"type": "bogus"}, {"type": "input.text", "text": 5},
              {"type": "input.text", "text": "x" * (MAX_TEXT_CHARS + 1)}, b"\x00\x01"]
    events, audio, code = asyncio.run(stream_session(server.url, frames))
    assert [e["message"].split(";")[0].split(" (")[0] for e in events] == [
        "unknown message type 'bogus'", 'input.text takes exactly one field, "text", a string',
        f"this piece would make the utterance longer than {MAX_TEXT_CHARS} characters",
        "binary frames are not part of this protocol"] and code == 1003 and audio == []


def test_orpheus_websocket(server, voice, reference_pcm):
    async def session():
        received = []
        async with websockets.connect(server.url.replace("http", "ws") + "/ws/tts", additional_headers=AUTH) as ws:
            await ws.send(json.dumps({"text": TEXT, "voice": voice}))
            await ws.send(json.dumps({"text": ""}))
            await ws.send(json.dumps({"text": "Two."}))  # the voice sticks
            await ws.send("__END__")
            async for message in ws:
                received.append(message)
        return received, ws.close_code

    received, code = asyncio.run(session())
    (error,) = [json.loads(m) for m in received if isinstance(m, str)]
    assert error == {"type": "error", "message": '"text" must be a non-empty string', "kind": "bad_request"}
    frames = [m for m in received if isinstance(m, bytes)]
    ends = [k for k, m in enumerate(frames) if m == b"__END__"]
    assert len(ends) == 2 and ends[1] == len(frames) - 1 and code == 1000
    first = np.frombuffer(b"".join(frames[:ends[0]]), "<i2")
    assert len(first) > 0 and len(first) % SAMPLES_PER_TOKEN == 0  # whole tokens of int16 PCM
    assert ends[1] - ends[0] > 1  # the second utterance has audio too


# ---- API keys

def test_every_endpoint_class_needs_the_key(server, voice):
    url, ws_url = server.url, server.url.replace("http", "ws")
    http_endpoints = [("GET", "/v1/models", {}), ("GET", "/v1/audio/voices", {}),
                      ("GET", f"/v1/audio/voices/{voice}", {}), ("DELETE", "/v1/audio/voices/voice_0000", {}),
                      ("POST", "/v1/audio/voices", {"files": {"audio": ("a.wav", b"x", "audio/wav")}}),
                      ("POST", "/v1/audio/speech", {"json": {"model": "tts-1", "voice": voice, "input": "Hi.",
                                                             "fixed_speech_tokens": 2}}),
                      ("POST", "/inference_zero_shot", {"data": {"tts_text": "Hi.", "voice_id": voice,
                                                                 "fixed_speech_tokens": "2"}}),
                      ("GET", "/query_tts_model", {}), ("GET", "/health", {}), ("GET", "/metrics", {}),
                      ("GET", "/openapi.json", {}), ("GET", "/docs", {})]
    for method, path, kwargs in http_endpoints:
        for headers, challenge in (({}, "Bearer"), ({"Authorization": f"Bearer {WRONG_KEY}"},
                                                    'Bearer error="invalid_token"'),
                                   ({"Authorization": "Basic dXNlcjpwYXNz"}, "Bearer")):
            r = httpx.request(method, url + path, headers=headers, timeout=60, **kwargs)
            assert r.status_code == 401 and r.json()["kind"] == "unauthorized", (path, headers, r.text)
            assert r.headers["www-authenticate"] == challenge
        for key in (KEY, FILE_KEY):  # --api_key and --api_key_file
            r = httpx.request(method, url + path, headers={"Authorization": f"Bearer {key}"}, timeout=60, **kwargs)
            assert r.status_code != 401 and r.status_code < 500, (path, r.status_code, r.text)
    for path in ("/liveness", "/readiness", "/healthz", "/", "/static/playground.js"):  # probes, the page
        assert httpx.get(url + path).status_code == 200, path

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
        (dict(input="x" * (MAX_TEXT_CHARS + 1)), openai.BadRequestError,
         f"input has {MAX_TEXT_CHARS + 1} characters; the limit is {MAX_TEXT_CHARS}"),
        (dict(instructions="Speak like a pirate."), openai.BadRequestError, "instructions: instructions are not"),
        (dict(stream_format="video"), openai.BadRequestError, "stream_format: Input should be"),
        (dict(extra_body={"fixed_speech_tokens": 10**6}), openai.BadRequestError, "fixed_speech_tokens must be"),
        (dict(extra_body={"seed": -1}), openai.BadRequestError, "seed: Input should be greater than or equal"),
        (dict(extra_body={"colour": "blue"}), openai.BadRequestError, "unknown field 'colour'"),
    ]
    for change, error, message in cases:
        args = {"model": "tts-1", "voice": voice, "input": "Hi.", **change}
        with pytest.raises(error) as e:
            client.audio.speech.create(**args)
        body = e.value.response.json()
        assert body["error"].startswith(message) and set(body) == {"error", "kind"}, (change, body)
    malformed = httpx.post(f"{server.url}/v1/audio/speech", headers={**AUTH, "content-type": "application/json"},
                           content=b'{"model": "tts-1",')
    assert malformed.status_code == 400 and "not valid JSON" in malformed.json()["error"]
    both = httpx.post(f"{server.url}/inference_zero_shot", headers=AUTH, data={"tts_text": "Hi.", "voice_id": voice,
                                                                               "prompt_text": "p"})
    assert both.status_code == 400 and "not both" in both.json()["error"]
    unknown = httpx.post(f"{server.url}/inference_zero_shot", headers=AUTH,
                         data={"tts_text": "Hi.", "voice_id": "voice_nope"})
    assert unknown.status_code == 404 and unknown.json()["kind"] == "not_found"


def test_bad_voice_uploads_get_4xx_json_and_save_nothing(server):
    def listed() -> list[str]:
        return [v["id"] for v in httpx.get(f"{server.url}/v1/audio/voices", headers=AUTH).json()["data"]]

    before = listed()
    cases = [
        (dict(audio=b"this is a text file, not audio " * 10), 400, "bad_audio", "prompt audio is not a readable"),
        (dict(audio=voice_wav(1, seconds=MAX_PROMPT_SECONDS + 1)), 400, "bad_audio",
         f"prompt audio is {MAX_PROMPT_SECONDS + 1:.1f} s; the limit is {MAX_PROMPT_SECONDS} s"),
        (dict(audio=voice_wav(1, seconds=0.1)), 400, "bad_audio", "prompt audio is 0.10 s; it must be at least"),
        (dict(audio=b"\x00" * (MAX_WAV_BYTES + 1)), 413, "too_large", f"audio is {MAX_WAV_BYTES + 1} bytes"),
        (dict(audio=b"\x00" * (2 * MAX_WAV_BYTES)), 413, "too_large", "request body of"),  # by Content-Length
        (dict(audio=b""), 400, "bad_audio", "audio is empty"),
        (dict(name=" "), 400, "bad_request", "name must be 1..256 characters"),
        (dict(text="x" * (MAX_TEXT_CHARS + 1)), 400, "bad_request", f"text must be at most {MAX_TEXT_CHARS}"),
    ]
    for overrides, status, kind, message in cases:
        r = upload(server.url, **overrides)
        assert (r.status_code, r.json()["kind"]) == (status, kind) and r.json()["error"].startswith(message), \
            (overrides.keys(), r.text)
    no_audio = httpx.post(f"{server.url}/v1/audio/voices", headers=AUTH, data={"name": "x"},
                          files={"other": ("a", b"1")})
    assert no_audio.status_code == 400 and no_audio.json()["error"] == "missing field audio"
    as_json = httpx.post(f"{server.url}/v1/audio/voices", headers=AUTH, json={"name": "x"})
    assert as_json.status_code == 400 and "multipart/form-data" in as_json.json()["error"]
    assert listed() == before

    made = [upload(server.url, name=f"fill {k}", audio=voice_wav(40 + k)) for k in range(MAX_VOICES - len(before))]
    assert all(r.status_code == 201 for r in made)
    full = upload(server.url, name="one too many", audio=voice_wav(50))
    assert (full.status_code, full.json()["kind"]) == (409, "too_many_voices")
    for r in made:
        httpx.delete(f"{server.url}/v1/audio/voices/{r.json()['id']}", headers=AUTH)
    assert listed() == before  # and the files of every failed or deleted upload are gone:
    assert sorted(p.name for p in (server.data_dir / "voices").iterdir()) == sorted(
        f"{v}.{ext}" for v in before for ext in ("audio", "npz"))


def test_no_slot_left_after_every_bad_request(server):
    server.assert_no_slot_in_use()
    assert httpx.get(f"{server.url}/readiness").status_code == 200


def test_voices_survive_a_restart(server, voice, reference_pcm):
    """The same --data_dir after a restart: the voices are there and speak with their stored features (no model
    runs). This server has only --api_key_file's key, and --metrics_public."""
    ids = [v["id"] for v in httpx.get(f"{server.url}/v1/audio/voices", headers=AUTH).json()["data"]]
    server.restart("--api_key_file", str(server.key_file), "--metrics_public")
    file_auth = {"Authorization": f"Bearer {FILE_KEY}"}
    assert httpx.get(f"{server.url}/v1/audio/voices", headers=AUTH).status_code == 401  # --api_key is gone
    assert [v["id"] for v in httpx.get(f"{server.url}/v1/audio/voices", headers=file_auth).json()["data"]] == ids
    assert httpx.get(f"{server.url}/metrics").status_code == 200  # --metrics_public
    pcm = httpx.post(f"{server.url}/v1/audio/speech", headers=file_auth, timeout=60,
                     json={"model": "tts-1", "voice": voice, "input": TEXT, "response_format": "pcm", **EXTRA})
    assert_same_audio(np.frombuffer(pcm.content, "<i2"), reference_pcm)  # same features, same seed
    features = server.prompt_features()
    assert (features["computed"], features["saved"]) == (0, 1)
