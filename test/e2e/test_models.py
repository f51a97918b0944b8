"""Several models in one server, on the CPU: A and B differ only in their LLM weights (styles: they share a decode
group), C in its flow/HiFT weights (its own decode group). Each request gets its own model's audio, equal to that
model's offline pipeline; unknown names are 404s naming the models; killing A's LLM fails only A's requests."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from server_harness import ServerProcess, voice_wav
from test_failures import wait_readiness
from test_synthesis import PROMPT_TEXT, assert_same_audio, reference_pcm

LONG_TEXT = " ".join(["This sentence keeps the stream going for a while."] * 6)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from light_tts.tools.make_model import make_model

    root = tmp_path_factory.mktemp("models")
    return {
        "A": make_model(root / "A", "tiny", seed=0),
        "B": make_model(root / "B", "tiny", seed=0, llm_seed=7),
        "C": make_model(root / "C", "tiny", seed=0, flow_seed=9),
    }


@pytest.fixture(scope="module")
def server(model_dirs, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("voices")
    srv = ServerProcess(
        model_dirs["A"],
        tmp_path_factory.mktemp("logs") / "models.log",
        "--model_dir",
        str(model_dirs["B"]),
        "--model_dir",
        str(model_dirs["C"]),
        "--data_dir",
        str(data_dir),
        "--log_level",
        "info",
    )
    srv.data_dir = data_dir
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def post(url: str, model: str, text: str, seed: int, voice: int = 1, stream: bool = False) -> httpx.Response:
    data = {
        "tts_text": text,
        "prompt_text": PROMPT_TEXT,
        "seed": str(seed),
        "stream": str(stream).lower(),
        "tts_model_name": model,
    }
    return httpx.post(
        f"{url}/inference_zero_shot",
        data=data,
        files={"prompt_wav": ("p.wav", voice_wav(voice), "audio/wav")},
        timeout=120,
    )


def test_startup_topology_shares_decode_between_styles(server):
    log = server.log_path.read_text()
    lines = re.findall(r"topology: (\w+) serves (.+?) on (\w+)", log)
    assert ("llm0", "A", "cpu") in lines and ("llm1", "B", "cpu") in lines and ("llm2", "C", "cpu") in lines
    decodes = {name: models for name, models, _ in lines if name.startswith("decode")}
    assert decodes == {"decode0": "A, B", "decode1": "C"}  # one decode process per group (--decode_process_num 1)
    processes = httpx.get(f"{server.url}/readiness").json()["processes"]
    assert processes["decode0"]["models"] == ["A", "B"] and processes["llm1"]["models"] == ["B"]


def test_models_are_listed(server):
    assert httpx.get(f"{server.url}/query_tts_model").json() == {"tts_models": ["A", "B", "C"]}
    assert httpx.post(f"{server.url}/query_tts_model").json() == {"tts_models": ["A", "B", "C"]}
    assert [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]] == ["A", "B", "C"]
    enum = httpx.get(f"{server.url}/openapi.json").text
    assert '"enum":["default","A","B","C"]' in enum.replace(" ", "")


def test_unknown_model_is_404_naming_the_models(server):
    r = post(server.url, "nope", "Hello.", 1)
    assert r.status_code == 404 and r.json()["kind"] == "not_found"
    assert all(f"'{name}'" in r.json()["error"] for name in "ABC")
    r = httpx.post(f"{server.url}/v1/audio/speech", json={"model": "nope", "input": "Hi.", "voice": "voice_x"})
    assert r.status_code == 404 and all(f"'{name}'" in r.json()["error"]["message"] for name in "ABC")


def test_interleaved_requests_get_their_own_models_audio(server, pipelines):
    """Requests to A, B and C at once, interleaved: each equals its model's offline pipeline for the seed."""
    jobs = [("A", 11), ("B", 11), ("C", 11), ("B", 12), ("A", 12), ("default", 13)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        replies = list(pool.map(lambda job: post(server.url, job[0], "Hello there.", job[1]), jobs))
    wav = voice_wav(1)
    for (model, seed), r in zip(jobs, replies):
        assert r.status_code == 200, r.text
        assert_same_audio(
            r.content, reference_pcm(pipelines["A" if model == "default" else model], "Hello there.", wav, seed)
        )
    assert replies[0].content != replies[1].content != replies[2].content  # three models, three voices
    stages = server.metrics()
    assert stages[("lighttts_stage_requests_total", (("rank", "1"), ("stage", "decode")))] >= 1  # C's group
    assert stages[("lighttts_stage_requests_total", (("rank", "2"), ("stage", "llm")))] >= 1


def test_a_stream_of_a_style_equals_its_pipeline(server, pipelines):
    r = post(server.url, "B", "Hi there, how are you?", 5, voice=2, stream=True)
    assert r.status_code == 200
    assert_same_audio(r.content, reference_pcm(pipelines["B"], "Hi there, how are you?", voice_wav(2), 5, stream=True))


def test_metrics_carry_the_model(server):
    m = server.metrics()
    for model in "ABC":
        ok = (("endpoint", "inference_zero_shot"), ("mode", "zero_shot"), ("model", model), ("outcome", "ok"))
        assert m[("lighttts_requests_total", ok)] >= 1
        assert m[("lighttts_llm_tokens_total", (("model", model),))] > 0
        assert m[
            (
                "lighttts_request_latency_seconds_count",
                (("endpoint", "inference_zero_shot"), ("mode", "zero_shot"), ("model", model)),
            )
        ]
    # the three models have the same frontend files: one voice cache entry serves them all
    assert m[("lighttts_voice_cache_lookups_total", (("result", "hit"),))] >= 5


def test_saved_voices_are_keyed_by_frontend(server, pipelines):
    """A saved voice's features serve every model of its frontend; features of an unknown frontend (as a voice
    saved before frontends were recorded) are computed again from its stored audio, for the model asked."""
    r = httpx.post(
        f"{server.url}/v1/audio/voices",
        data={"name": "v", "text": PROMPT_TEXT},
        files={"audio": ("v.wav", voice_wav(4), "audio/wav")},
        timeout=60,
    )
    assert r.status_code == 201, r.text
    voice_id = r.json()["id"]
    want = reference_pcm(pipelines["C"], "Hello there.", voice_wav(4), 8)

    def speak() -> bytes:
        data = {"tts_text": "Hello there.", "voice_id": voice_id, "seed": "8", "tts_model_name": "C"}
        reply = httpx.post(f"{server.url}/inference_zero_shot", data=data, timeout=120)
        assert reply.status_code == 200, reply.text
        return reply.content

    saved_before = server.metrics().get(("lighttts_prompt_features_total", (("source", "saved"),)), 0)
    assert_same_audio(speak(), want)  # A's frontend computed them; C has the same frontend files
    assert server.metrics()[("lighttts_prompt_features_total", (("source", "saved"),))] == saved_before + 1
    with sqlite3.connect(server.data_dir / "voices.sqlite3") as db:
        db.execute("UPDATE voices SET frontend_key = '' WHERE id = ?", (voice_id,))
    assert_same_audio(speak(), want)  # from the stored audio, through the voice cache
    assert server.metrics()[("lighttts_prompt_features_total", (("source", "saved"),))] == saved_before + 1


class Stream(threading.Thread):
    """One long streamed request in the background: its status, bytes, and whether the body ended short."""

    def __init__(self, url: str, model: str, seed: int):
        super().__init__(daemon=True)
        self.url, self.model, self.seed = url, model, seed
        self.first_chunk = threading.Event()
        self.status, self.error, self.body = None, None, b""

    def run(self):
        data = {
            "tts_text": LONG_TEXT,
            "prompt_text": PROMPT_TEXT,
            "seed": str(self.seed),
            "stream": "true",
            "tts_model_name": self.model,
        }
        try:
            with httpx.stream(
                "POST",
                f"{self.url}/inference_zero_shot",
                data=data,
                timeout=120,
                files={"prompt_wav": ("p.wav", voice_wav(3), "audio/wav")},
            ) as r:
                self.status = r.status_code
                for chunk in r.iter_raw():
                    self.body += chunk
                    self.first_chunk.set()
        except httpx.HTTPError as e:
            self.error = e
        finally:
            self.first_chunk.set()


def test_killing_one_models_llm_fails_only_its_requests(server, pipelines):
    """llm0 (model A) dies while an A and a B stream are in flight: A's stream is cut, B's completes with the
    audio of its pipeline; readiness flips while llm0 restarts, and A serves again."""
    old_pid = httpx.get(f"{server.url}/readiness").json()["processes"]["llm0"]["pid"]
    a, b = Stream(server.url, "A", 21), Stream(server.url, "B", 22)
    a.start()
    b.start()
    assert a.first_chunk.wait(60) and b.first_chunk.wait(60)
    os.kill(old_pid, signal.SIGKILL)
    b_bytes_at_kill = len(b.body)
    body = wait_readiness(server, 503, 10)  # llm0 dead, then restarting
    assert body["status"] == "not ready"
    a.join(60)
    b.join(120)
    assert a.error is not None  # cut off: an incomplete chunked body
    assert b.error is None and b.status == 200 and len(b.body) > b_bytes_at_kill  # B was still streaming
    assert_same_audio(b.body, reference_pcm(pipelines["B"], LONG_TEXT, voice_wav(3), 22, stream=True))
    processes = wait_readiness(server, 200, 60)["processes"]
    assert processes["llm0"]["pid"] != old_pid and processes["llm1"]["state"] == "ready"
    r = post(server.url, "A", "Hello there.", 11)
    assert r.status_code == 200
    assert_same_audio(r.content, reference_pcm(pipelines["A"], "Hello there.", voice_wav(1), 11))
    m = server.metrics()
    assert (
        m[
            (
                "lighttts_requests_total",
                (
                    ("endpoint", "inference_zero_shot"),
                    ("mode", "zero_shot"),
                    ("model", "A"),
                    ("outcome", "worker_died"),
                ),
            )
        ]
        == 1
    )
    assert (
        "lighttts_requests_total",
        (("endpoint", "inference_zero_shot"), ("mode", "zero_shot"), ("model", "B"), ("outcome", "worker_died")),
    ) not in m
