"""--idle_release_s on the real server (tiny model, CPU): an idle LLM and decode process give their memory back,
/readiness and /metrics say so, and the next request reloads them and gets the same audio as before."""

import time

import httpx
import pytest
from server_harness import ServerProcess, voice_wav


@pytest.fixture(scope="module")
def idle_server(tiny_model_dir, tmp_path_factory):
    srv = ServerProcess(tiny_model_dir, tmp_path_factory.mktemp("logs") / "idle.log", "--idle_release_s", "1")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def synthesize(url: str) -> bytes:
    form = {"tts_text": "Hello there.", "prompt_text": "A prompt.", "seed": "3", "fixed_speech_tokens": "40"}
    r = httpx.post(f"{url}/inference_zero_shot", data=form, files={"prompt_wav": ("p.wav", voice_wav(1))}, timeout=120)
    assert r.status_code == 200, r.text
    return r.content


def gpu_states(url: str) -> dict[str, str]:
    processes = httpx.get(f"{url}/readiness", timeout=10).json()["processes"]
    return {name: p["gpu"] for name, p in processes.items() if name.startswith(("llm", "decode"))}


def wait_for(url: str, state: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while set(gpu_states(url).values()) != {state}:
        assert time.monotonic() < deadline, gpu_states(url)
        time.sleep(0.2)


def test_idle_processes_release_and_the_next_request_reloads_them(idle_server):
    first = synthesize(idle_server.url)
    wait_for(idle_server.url, "released")
    assert idle_server.metrics()[("lighttts_gpu_released", (("rank", "0"), ("stage", "decode")))] == 1.0
    again = synthesize(idle_server.url)  # waits for both reloads
    assert again == first and len(first) > 0
    reloads = idle_server.metrics()
    assert reloads[("lighttts_gpu_reload_seconds_count", (("stage", "decode"),))] >= 1
    assert reloads[("lighttts_gpu_reload_seconds_count", (("stage", "llm"),))] >= 1
