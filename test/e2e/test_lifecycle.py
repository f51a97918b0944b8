"""SIGTERM drains: readiness and new requests get 503 at once, a request in flight finishes, one that would run
past --drain_timeout_s is ended with an error, and the server exits 0 without a traceback."""

from __future__ import annotations

import signal
import threading
import time

import httpx
from server_harness import ServerProcess, voice_wav

DRAIN_S = 8


def post(url: str, fixed: int, stream: bool, out: dict) -> None:
    data = {
        "tts_text": "Hello there.",
        "prompt_text": "A prompt.",
        "stream": str(stream).lower(),
        "fixed_speech_tokens": str(fixed),
    }
    files = {"prompt_wav": ("p.wav", voice_wav(3), "audio/wav")}
    try:
        with httpx.stream("POST", f"{url}/inference_zero_shot", data=data, files=files, timeout=120) as r:
            out["status"], out["body"] = r.status_code, bytearray()
            for chunk in r.iter_raw():
                out["body"] += chunk
                out.setdefault("first_chunk_at", time.monotonic())
    except httpx.HTTPError as e:
        out["error"] = e


def test_sigterm_drains_then_cuts_then_exits_cleanly(tiny_model_dir, tmp_path_factory):
    srv = ServerProcess(
        tiny_model_dir,
        tmp_path_factory.mktemp("logs") / "drain.log",
        "--drain_timeout_s",
        str(DRAIN_S),
        "--max_speech_tokens",
        "4000",
    )
    try:
        srv.wait_ready()
        short, long = {}, {}
        threads = [
            threading.Thread(target=post, args=(srv.url, 50, True, short)),
            threading.Thread(target=post, args=(srv.url, 4000, False, long)),
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        # SIGTERM once both requests are in flight (both slots claimed). Waiting for the short one's first chunk
        # instead raced: its whole 2 s of audio can come in one step, so its slot may be free by then.
        while srv.slots_in_use() < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert srv.slots_in_use() == 2
        srv.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while httpx.get(f"{srv.url}/readiness").status_code != 503 and time.monotonic() < deadline:
            time.sleep(0.02)
        readiness = httpx.get(f"{srv.url}/readiness")
        assert readiness.status_code == 503 and "shutting down" in readiness.json()["reason"]
        files = {"prompt_wav": ("p.wav", voice_wav(3), "audio/wav")}
        late = httpx.post(f"{srv.url}/inference_zero_shot", data={"tts_text": "Hi.", "prompt_text": "p"}, files=files)
        assert late.status_code == 503 and late.json()["kind"] == "unavailable"
        for t in threads:
            t.join(60)
        # the short one finished; the long one was cut after the drain timeout
        assert short.get("status") == 200 and len(short["body"]) == 50 * 960 * 2 and "error" not in short
        assert long.get("status") == 503 and b"shutting down" in long["body"]
        assert srv.proc.wait(timeout=30) == 0
    finally:
        if srv.proc.poll() is None:  # a failed check above must not leave the server running
            srv.stop()
    srv.log.close()
    srv.assert_clean_exit_state()
    log = srv.log_path.read_text()
    assert "Traceback" not in log and "drain timed out: ending 1 request(s)" in log
