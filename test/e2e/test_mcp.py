"""The MCP server (`python -m light_tts.mcp`, stdio) driven by the official SDK's own client against the real
server: speech as a file and as base64, server status, and readable tool errors."""

from __future__ import annotations

import asyncio
import base64
import io
import sys
import wave
from pathlib import Path

import httpx
import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from server_harness import ROOT, assert_same_audio, voice_wav


def call_tools(url: str, output_dir: Path, calls: list[tuple[str, dict]]) -> tuple[set[str], list]:
    """Start the MCP server over stdio, list its tools, make `calls` in order; (tool names, results)."""

    async def session_run():
        params = StdioServerParameters(
            command=sys.executable,
            cwd=str(ROOT),
            args=["-m", "light_tts.mcp", "--url", url, "--output_dir", str(output_dir)],
        )
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            names = {tool.name for tool in (await session.list_tools()).tools}
            return names, [await session.call_tool(name, arguments) for name, arguments in calls]

    return asyncio.run(asyncio.wait_for(session_run(), timeout=240))


def error_text(result) -> str:
    assert result.is_error, result
    return " ".join(part.text for part in result.content)


@pytest.fixture(scope="module")
def prompt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mcp") / "prompt.wav"
    path.write_bytes(voice_wav(seed=5))
    return path


def test_generate_speech_and_server_status(server, prompt, tmp_path):
    speech = {"text": "Hello from an agent.", "voice": str(prompt), "prompt_text": "A short prompt.", "seed": 1}
    short = {"text": "Hi.", "voice": str(prompt), "seed": 1, "format": "pcm", "output": "base64"}
    source = tmp_path / "source.wav"
    source.write_bytes(voice_wav(seed=6, seconds=1.0))
    names, (as_file, as_base64, as_pcm, status, instructed, converted) = call_tools(
        server.url,
        tmp_path,
        [
            ("generate_speech", speech),
            ("generate_speech", {**speech, "output": "base64"}),
            ("generate_speech", {**speech, "format": "pcm", "output": "base64"}),
            ("server_status", {}),
            ("generate_speech", {**short, "instructions": "Speak slowly."}),  # no transcript needed
            ("convert_voice", {"source_path": str(source), "voice": str(prompt), "format": "pcm", "output": "base64"}),
        ],
    )
    assert {"generate_speech", "convert_voice", "list_voices", "add_voice", "server_status"} <= names
    # the tool's instructions reach the server: its audio is the form's instruct_text request's
    form = {"tts_text": "Hi.", "instruct_text": "Speak slowly.", "seed": "1"}
    want = httpx.post(
        f"{server.url}/inference_zero_shot",
        data=form,
        timeout=120,
        files={"prompt_wav": ("p.wav", prompt.read_bytes(), "audio/wav")},
    ).content
    assert_same_audio(base64.b64decode(instructed.structured_content["audio_base64"]), want)
    assert converted.structured_content["duration_s"] == 1.0  # as long as the source
    written = as_file.structured_content
    assert not as_file.is_error and Path(written["path"]).parent == tmp_path
    wav = Path(written["path"]).read_bytes()
    with wave.open(io.BytesIO(wav)) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (24000, 2, 1) and w.getnframes() > 0
        pcm = w.readframes(w.getnframes())
    assert base64.b64decode(as_base64.structured_content["audio_base64"]) == wav  # same seed, same audio
    assert base64.b64decode(as_pcm.structured_content["audio_base64"]) == pcm
    assert written["duration_s"] == pytest.approx(len(pcm) / 48000, abs=1e-3)
    state = status.structured_content
    assert state["ready"] is True and state["models"] and state["processes"]


def test_tool_errors_are_readable(server, prompt, tmp_path):
    _, (empty, unknown_voice, missing_file) = call_tools(
        server.url,
        tmp_path,
        [
            ("generate_speech", {"text": "  ", "voice": str(prompt), "prompt_text": "A short prompt."}),
            ("convert_voice", {"source_path": str(prompt), "voice": "voice_missing"}),
            ("add_voice", {"name": "x", "audio_path": str(tmp_path / "missing.wav"), "text": "Hi."}),
        ],
    )
    assert "HTTP 400 bad_text" in error_text(empty)
    assert "HTTP 404 not_found" in error_text(unknown_voice)
    assert "cannot read" in error_text(missing_file)


def test_unreachable_server_is_a_tool_error(tmp_path):
    _, (status,) = call_tools("http://127.0.0.1:9", tmp_path, [("server_status", {})])
    assert "cannot reach LightTTS at http://127.0.0.1:9" in error_text(status)


def test_voice_tools(server, prompt, tmp_path):
    """list_voices / add_voice need the saved-voices API (issue 11): without it they must say so clearly."""
    _, (listed,) = call_tools(server.url, tmp_path, [("list_voices", {})])
    assert not listed.is_error, error_text(listed)  # the server has the saved-voices API (issue 11)
    _, (added,) = call_tools(
        server.url,
        tmp_path,
        [("add_voice", {"name": "agent voice", "audio_path": str(prompt), "text": "A short prompt."})],
    )
    voice_id = added.structured_content["id"]
    _, (listed, spoken) = call_tools(
        server.url,
        tmp_path,
        [("list_voices", {}), ("generate_speech", {"text": "Saved voice speaking.", "voice": voice_id})],
    )
    assert voice_id in {v["id"] for v in listed.structured_content["voices"]}
    assert not spoken.is_error and Path(spoken.structured_content["path"]).stat().st_size > 44
    httpx.delete(f"{server.url}/v1/audio/voices/{voice_id}")  # the shared server's voices are other tests' too
