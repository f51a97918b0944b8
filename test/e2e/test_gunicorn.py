"""wsgi_wrapper.py: the same server under gunicorn with uvicorn workers."""

from __future__ import annotations

import httpx
from server_harness import ServerProcess, voice_wav


def test_gunicorn_workers_serve_and_stop_cleanly(tiny_model_dir, tmp_path_factory):
    srv = ServerProcess(tiny_model_dir, tmp_path_factory.mktemp("logs") / "gunicorn.log", gunicorn_workers=2)
    try:
        srv.wait_ready()
        processes = httpx.get(f"{srv.url}/readiness").json()["processes"]
        assert processes["http0"]["state"] == processes["http1"]["state"] == "ready"
        for _ in range(3):  # the same voice: the voice cache serves the repeats, whichever worker took them
            files = {"prompt_wav": ("p.wav", voice_wav(1), "audio/wav")}
            data = {"tts_text": "Hi.", "prompt_text": "A prompt.", "seed": "3"}
            r = httpx.post(f"{srv.url}/inference_zero_shot", data=data, files=files, timeout=60)
            assert r.status_code == 200 and len(r.content) > 0
        m = srv.metrics()
        assert m[("lighttts_voice_cache_lookups_total", (("result", "hit"),))] == 2
        ok = (("endpoint", "inference_zero_shot"), ("mode", "zero_shot"), ("model", "tiny"), ("outcome", "ok"))
        assert m[("lighttts_requests_total", ok)] == 3
    finally:
        code = srv.stop()
    assert code == 0, srv.log_path.read_text()[-3000:]
    srv.assert_clean_exit_state()
