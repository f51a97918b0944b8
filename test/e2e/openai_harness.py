"""Shared by the OpenAI-API end-to-end tests (test_openai_speech.py, test_openai_voices.py): the real server with
API keys on the tiny model, voice uploads, which HTTP worker served a connection, and independent decoders."""

from __future__ import annotations

import io
import json
import os
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
from server_harness import ServerProcess, outcomes, voice_wav  # noqa: F401  (outcomes: re-exported for the tests)

KEY, FILE_KEY, WRONG_KEY = "e2e-key-0123456789abcdef", "e2e-file-key-fedcba9876543210", "e2e-wrong-key-000000"
AUTH = {"Authorization": f"Bearer {KEY}"}
RATE, SAMPLES_PER_TOKEN = 24000, 960
TOKENS, SEED = 50, 5  # every test utterance: one sentence of exactly 50 speech tokens (2 s), same seed
EXTRA = {"seed": SEED, "fixed_speech_tokens": TOKENS}
LONG_TOKENS = 2 * TOKENS  # streamed in several chunks, within MAX_AUDIO_SECONDS
TEXT = "Hello there."
MAX_TEXT_CHARS, MAX_PROMPT_SECONDS, MAX_WAV_BYTES, MAX_VOICES = 600, 5, 400_000, 4
MAX_AUDIO_SECONDS = 5  # a request of more audio fails once it has started streaming
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


class Server:
    """A test module's server (keys from --api_key and --api_key_file, debug log level); `restart` stops it and
    starts another on the same --data_dir. Stopping it checks that no key reached its log."""

    def __init__(self, model_dir, tmp_path_factory, num_http_workers: int, *flags: str):
        self.model_dir, self.factory, self.num_http_workers = model_dir, tmp_path_factory, num_http_workers
        self.data_dir = tmp_path_factory.mktemp("voices")
        self.key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
        self.key_file.write_text(f"# test keys\n\n{FILE_KEY}\n")
        self.proc = self.start("--api_key", KEY, "--api_key_file", str(self.key_file), "--log_level", "debug", *flags)

    def start(self, *flags: str) -> ServerProcess:
        proc = ServerProcess(
            self.model_dir,
            self.factory.mktemp("logs") / "server.log",
            "--httpserver_workers",
            str(self.num_http_workers),
            "--data_dir",
            str(self.data_dir),
            "--max_voices",
            str(MAX_VOICES),
            "--max_text_chars",
            str(MAX_TEXT_CHARS),
            "--max_prompt_seconds",
            str(MAX_PROMPT_SECONDS),
            "--max_prompt_wav_bytes",
            str(MAX_WAV_BYTES),
            "--running_max_req_size",
            "8",
            "--request_timeout_s",
            "120",
            "--max_audio_seconds",
            str(MAX_AUDIO_SECONDS),
            *flags,
        )
        try:
            proc.wait_ready()
        except BaseException:
            proc.stop()
            raise
        return proc

    def restart(self, *flags: str, num_http_workers: int | None = None) -> None:
        self.stop()
        self.num_http_workers = num_http_workers or self.num_http_workers
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
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def prompt_features(self) -> dict[str, float]:
        m = self.metrics()
        return {
            source: m.get(("lighttts_prompt_features_total", (("source", source),)), 0.0)
            for source in ("computed", "cache", "saved")
        }

    def assert_no_slot_in_use(self) -> None:
        """No request holds a slot; aborted ones free theirs once every stage confirmed (within a step)."""
        for _ in range(200):
            if self.metrics()[("lighttts_request_slots", (("state", "in_use"),))] == 0:
                return
            time.sleep(0.05)
        raise AssertionError("a request slot is still in use")


@pytest.fixture
def client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120) as c:
        yield c


def upload(url: str, name: str = "Alice", audio: bytes | None = None, text: str = "A short prompt.") -> httpx.Response:
    files = {"audio": ("voice.wav", voice_wav(3) if audio is None else audio, "audio/wav")}
    return httpx.post(
        f"{url}/v1/audio/voices", headers=AUTH, files=files, data={"name": name, "text": text}, timeout=60
    )


@pytest.fixture(scope="module")
def voice(server):
    r = upload(server.url, name="module voice")
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.fixture(scope="module")
def reference_pcm(server, voice):
    with openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120) as c:
        pcm = c.audio.speech.create(
            model="tts-1", voice=voice, input=TEXT, response_format="pcm", extra_body=EXTRA
        ).content
    assert len(pcm) == 2 * TOKENS * SAMPLES_PER_TOKEN
    return np.frombuffer(pcm, "<i2")


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


# ---- error bodies


def openai_error(response: httpx.Response) -> tuple[str, str]:
    """(code, message) of an error answer in OpenAI's shape, which every /v1/* route gives (checked here)."""
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]["code"], body["error"]["message"]


def event_error(event: dict) -> tuple[str, str]:
    """(code, message) of a WebSocket or SSE error event (OpenAI's error object under "error")."""
    assert event["type"] == "error" and set(event["error"]) == {"message", "type", "param", "code"}, event
    return event["error"]["code"], event["error"]["message"]


# ---- decoding


def decode_with_pyav(data: bytes) -> tuple[int, np.ndarray]:
    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
        rate = container.streams.audio[0].codec_context.sample_rate
    return rate, np.concatenate(frames)


def decode_with_ffmpeg(data: bytes) -> tuple[str, int, int]:
    """(codec, sample rate, samples) from Debian's ffprobe and ffmpeg, reading the bytes from a pipe."""
    probe = json.loads(
        subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,sample_rate", "-of", "json", "-i", "pipe:0"],
            input=data,
            capture_output=True,
            check=True,
        ).stdout
    )["streams"][0]
    pcm = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", "pipe:0", "-f", "s16le", "-ac", "1", "pipe:1"],
        input=data,
        capture_output=True,
        check=True,
    ).stdout
    return probe["codec_name"], int(probe["sample_rate"]), len(pcm) // 2


def assert_same_audio(samples: np.ndarray, reference: np.ndarray) -> None:
    """The same audio: same seed, same speech tokens; the decode engine's float rounding differs by at most one
    int16 step between batch and shared-prefix shapes (docs/architecture.md)."""
    assert len(samples) == len(reference)
    assert np.abs(samples.astype(np.int32) - reference).max() <= 1


async def stream_session(url: str, frames: list, headers: dict = AUTH) -> tuple[list, list, int]:
    """Send `frames` to /v1/audio/speech/stream and collect until the server closes: (events, binary, close code)."""
    events, audio = [], []
    async with websockets.connect(
        url.replace("http", "ws") + "/v1/audio/speech/stream", additional_headers=headers
    ) as ws:
        try:
            for frame in frames:
                await ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))
            async for message in ws:
                (audio if isinstance(message, bytes) else events).append(
                    message if isinstance(message, bytes) else json.loads(message)
                )
        except websockets.ConnectionClosedError:  # a close code other than 1000, after the messages before it
            pass
    return events, audio, ws.close_code
