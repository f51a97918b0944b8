"""Failure paths: dropped clients, backpressure, time limits and dying workers end requests quickly and cleanly."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from server_harness import ServerProcess, voice_wav

TIME_LIMIT_S = 6  # --request_timeout_s of the small server: long enough for a first chunk on a busy 2-core host
LONG_TEXT = " ".join(f"Sentence number {w} is a little longer than the others." for w in
                     ("one", "two", "three", "four", "five", "six", "seven", "eight"))


def form(text: str = LONG_TEXT, stream: bool = True) -> dict:
    return {"tts_text": text, "prompt_text": "A prompt.", "stream": str(stream).lower(), "seed": "1"}


class StreamingClient(threading.Thread):
    """Streams one long request in the background; records the first-chunk time, the end and any error."""

    def __init__(self, url: str, voice: int = 1):
        super().__init__(daemon=True)
        self.url, self.wav = url, voice_wav(voice)
        self.first_chunk = threading.Event()
        self.status, self.error, self.ended_at, self.num_bytes = None, None, None, 0

    def run(self):
        try:
            files = {"prompt_wav": ("p.wav", self.wav, "audio/wav")}
            with httpx.stream("POST", f"{self.url}/inference_zero_shot", data=form(), files=files, timeout=120) as r:
                self.status = r.status_code
                for chunk in r.iter_raw():
                    self.num_bytes += len(chunk)
                    self.first_chunk.set()
        except httpx.HTTPError as e:
            self.error = e
        finally:
            self.ended_at = time.monotonic()
            self.first_chunk.set()


def test_client_dropped_mid_stream_frees_its_slot_within_a_second(server):
    server.wait_slots_free(2.0)
    files = {"prompt_wav": ("p.wav", voice_wav(1), "audio/wav")}
    with httpx.stream("POST", f"{server.url}/inference_zero_shot", data=form(), files=files, timeout=60) as r:
        assert r.status_code == 200
        next(r.iter_raw())
        assert server.slots_in_use() == 1
    dropped_at = time.monotonic()  # leaving the block closes the connection mid-stream
    server.wait_slots_free(1.0)
    freed_after = time.monotonic() - dropped_at
    m = server.metrics()
    assert freed_after < 1.0
    assert m[("lighttts_queue_depth", (("rank", "0"), ("stage", "llm")))] == 0  # the LLM let go of it too


@pytest.fixture(scope="module")
def small_server(tiny_model_dir, tmp_path_factory):
    """Two slots, a 6 s time limit, sentences of at most ~500 speech tokens (a non-stream sentence is one decode
    step, seconds long on a CPU); the module's last test that uses it kills its decode process."""
    srv = ServerProcess(tiny_model_dir, tmp_path_factory.mktemp("logs") / "small.log", "--running_max_req_size", "2",
                        "--request_timeout_s", str(TIME_LIMIT_S), "--shutdown_grace_s", "3",
                        "--max_req_total_len", "600", "--mode", "triton_gqa_flashdecoding", "--decode_paral_num", "2")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_compatibility_flags_are_accepted_and_said_to_do_nothing(small_server):
    log = small_server.log_path.read_text()
    assert log.count("--mode triton_gqa_flashdecoding has no effect") == 1
    assert log.count("--decode_paral_num 2 has no effect") == 1


def test_all_slots_busy_gets_429_at_once(small_server):
    clients = [StreamingClient(small_server.url, voice) for voice in (1, 2)]
    for c in clients:
        c.start()
    for c in clients:
        assert c.first_chunk.wait(60) and c.status == 200
    start = time.monotonic()
    files = {"prompt_wav": ("p.wav", voice_wav(3), "audio/wav")}
    r = httpx.post(f"{small_server.url}/inference_zero_shot", data=form("Hi."), files=files, timeout=30)
    assert r.status_code == 429 and r.headers["retry-after"] and time.monotonic() - start < 1.0
    for c in clients:
        c.join(60)
    small_server.wait_slots_free(2.0)


def test_request_over_the_time_limit_ends_with_an_error(small_server):
    files = {"prompt_wav": ("p.wav", voice_wav(1), "audio/wav")}
    start = time.monotonic()
    r = httpx.post(f"{small_server.url}/inference_zero_shot", data=form(stream=False), files=files, timeout=60)
    assert r.status_code == 504 and r.json()["kind"] == "timeout"
    assert TIME_LIMIT_S - 0.5 < time.monotonic() - start < TIME_LIMIT_S + 4
    # a non-stream sentence is one decode step (seconds on a CPU): the abort is confirmed after that step
    small_server.wait_slots_free(15.0)


def kill_worker_mid_request(srv: ServerProcess, stage: str) -> None:
    """SIGKILL a worker while a request streams: the request fails fast, readiness flips, the server exits 1."""
    pid = httpx.get(f"{srv.url}/readiness").json()["processes"][f"{stage}0"]["pid"]
    client = StreamingClient(srv.url)
    client.start()
    assert client.first_chunk.wait(60) and client.status == 200
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    unready_after = None
    while time.monotonic() - killed_at < 2.0 and unready_after is None:
        try:
            if httpx.get(f"{srv.url}/readiness", timeout=1).status_code == 503:
                unready_after = time.monotonic() - killed_at
        except httpx.HTTPError:
            break
        time.sleep(0.05)
    client.join(10)
    assert unready_after is not None and unready_after < 1.5
    assert client.error is not None, "the in-flight stream must end with an error, not look complete"
    assert client.ended_at - killed_at < 2.0
    code = srv.proc.wait(timeout=30)
    assert code != 0
    srv.assert_clean_exit_state()


def test_killing_the_decode_process_fails_requests_and_readiness(small_server):
    kill_worker_mid_request(small_server, "decode")


def test_killing_the_llm_process_fails_requests_and_readiness(tiny_model_dir, tmp_path_factory):
    srv = ServerProcess(tiny_model_dir, tmp_path_factory.mktemp("logs") / "llm_kill.log", "--shutdown_grace_s", "3")
    try:
        srv.wait_ready()
        kill_worker_mid_request(srv, "llm")
    finally:
        srv.stop()


def test_tcp_transport_two_encoders_and_sigterm(tiny_model_dir, tmp_path_factory):
    """--zmq_mode tcp:// with 2 encode processes serves, reports unready while loading, and SIGTERM stops it
    with exit code 0, no worker left and no shared memory left."""
    srv = ServerProcess(tiny_model_dir, tmp_path_factory.mktemp("logs") / "tcp.log", "--zmq_mode", "tcp://",
                        "--encode_process_num", "2")
    try:
        srv.wait_ready()
        assert srv.was_unready_while_loading
        for voice in (1, 2):
            files = {"prompt_wav": ("p.wav", voice_wav(voice), "audio/wav")}
            r = httpx.post(f"{srv.url}/inference_zero_shot", data=form("Hi.", stream=False), files=files, timeout=60)
            assert r.status_code == 200 and len(r.content) > 0
        encoded = {rank: srv.metrics()[("lighttts_stage_requests_total", (("rank", rank), ("stage", "encode")))]
                   for rank in ("0", "1")}
        assert encoded == {"0": 1.0, "1": 1.0}
    finally:
        code = srv.stop(signal.SIGTERM)
    assert code == 0
    srv.assert_clean_exit_state()
