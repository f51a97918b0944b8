"""What a new user sees of the running server: /openapi.json describes the real form fields and audio responses
with unique operation ids, and every process is named in `ps`."""

from __future__ import annotations

from pathlib import Path

import httpx
from server_harness import voice_wav


def test_openapi_describes_the_form_and_the_audio(server):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    operations = [(path, method, op) for path, item in spec["paths"].items() for method, op in item.items()]
    ids = [op["operationId"] for _, _, op in operations]
    assert len(ids) == len(set(ids)), ids
    assert {("/query_tts_model", "get"), ("/query_tts_model", "post")} <= {(p, m) for p, m, _ in operations}
    zero_shot = spec["paths"]["/inference_zero_shot"]["post"]
    form = zero_shot["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(form["properties"]) >= {
        "tts_text",
        "prompt_text",
        "prompt_wav",
        "stream",
        "speed",
        "seed",
        "tts_model_name",
        "fixed_speech_tokens",
    }
    assert set(form["required"]) == {"tts_text"} and "voice_id" in form["properties"]  # or a saved voice
    assert form["properties"]["prompt_wav"]["format"] == "binary"
    ok = zero_shot["responses"]["200"]
    assert list(ok["content"]) == ["application/octet-stream"] and "PCM" in ok["description"]
    for status in ("400", "413", "429", "503"):
        body = zero_shot["responses"][status]["content"]["application/json"]["schema"]
        assert set(body["properties"]) == {"error", "kind"}
    for path, method, op in operations:
        assert op.get("summary"), (path, method)
    assert "text/plain" in spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


def test_every_process_has_a_title(server):
    processes = httpx.get(f"{server.url}/readiness").json()["processes"]
    titles = {
        name: Path(f"/proc/{p['pid']}/cmdline").read_bytes().split(b"\0")[0].decode() for name, p in processes.items()
    }
    for name, title in titles.items():
        assert title.startswith(f"lighttts: {name} ("), (name, title)
    assert titles["llm0"] == "lighttts: llm0 (model tiny, cpu)"
    assert titles["decode1"] == "lighttts: decode1 (model tiny, cpu)"
    assert titles["encode0"] == "lighttts: encode0 (model tiny)"
    launcher = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    assert launcher == f"lighttts: launcher (127.0.0.1:{server.port})"


def test_log_lines_carry_the_process_name(server):
    data = {"tts_text": "See [3] here.", "prompt_text": "A prompt.", "fixed_speech_tokens": "2"}
    files = {"prompt_wav": ("p.wav", voice_wav(9), "audio/wav")}
    assert httpx.post(f"{server.url}/inference_zero_shot", data=data, files=files, timeout=60).status_code == 200
    assert " encode0 WARNING wetext failed on 'See [3] here.'" in server.log_path.read_text()
