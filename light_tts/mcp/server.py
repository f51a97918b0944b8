"""MCP server on the official `mcp` SDK (MCPServer, the 2.x name of FastMCP), stdio transport: tools that call a
running LightTTS server over HTTP.

    python -m light_tts.mcp [--url http://127.0.0.1:8080] [--api_key KEY] [--output_dir DIR]

Tools: generate_speech (text + a saved voice id or a prompt audio file, optionally with instructions on how to
speak; WAV or PCM, returned as a file path or base64), convert_voice (a recording spoken again in another voice),
list_voices and add_voice (the server's /v1/audio/voices), server_status (/readiness, models).
Every failure is a tool error with one readable line, never a crash of the MCP server.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import httpx
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from light_tts.clients.common import (
    API_KEY_ENV,
    BYTES_PER_SECOND,
    ClientError,
    auth_headers,
    error_message,
    read_file,
    wav_bytes,
)

URL_ENV, OUTPUT_DIR_ENV = "LIGHTTTS_URL", "LIGHTTTS_MCP_OUTPUT_DIR"
VOICES_PATH = "/v1/audio/voices"
NO_VOICES_API = (
    "this LightTTS server has no saved-voices API ({method} {path} answered 404); give "
    "generate_speech a prompt audio file path as `voice` and its transcript as `prompt_text` instead"
)


class LightTTSHttp:
    """The HTTP calls the tools make; every failure becomes a ToolError the agent can read."""

    def __init__(self, url: str, api_key: str | None, timeout_s: float):
        self.url, self.headers, self.timeout_s = url.rstrip("/"), auth_headers(api_key), timeout_s

    async def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            async with httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=self.timeout_s) as client:
                return await client.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise ToolError(f"cannot reach LightTTS at {self.url}: {type(e).__name__}: {e}") from None

    async def json(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs) -> Any:
        response = await self.request(method, path, **kwargs)
        if response.status_code == 404 and path.startswith(VOICES_PATH):
            raise ToolError(
                NO_VOICES_API.format(method=method, path=path)
                if is_route_missing(response)
                else error_message(404, response.content)
            )
        if response.status_code not in ok:
            raise ToolError(error_message(response.status_code, response.content))
        return response.json()


def is_route_missing(response: httpx.Response) -> bool:
    """A server without the voices API answers its own 404 for an unknown path ({"detail": "Not Found"}, or code
    unknown_url in OpenAI's shape); the voices API's 404 for an unknown voice is an error of code not_found."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return True
    return error is None or (isinstance(error, dict) and error.get("code") == "unknown_url")


def read_local(path: str) -> bytes:
    try:
        return read_file(path)
    except ClientError as e:
        raise ToolError(str(e)) from None


def build_server(url: str, api_key: str | None, output_dir: Path, timeout_s: float = 600) -> MCPServer:
    http = LightTTSHttp(url, api_key, timeout_s)
    server = MCPServer(
        "lighttts",
        instructions="Text to speech with voice cloning, by a LightTTS server. Call "
        "list_voices for saved voices, or pass a prompt audio file and its transcript; "
        "generate_speech takes instructions on how to speak, convert_voice turns a recording into "
        "another voice.",
    )

    def audio_result(pcm: bytes, format: str, output: str) -> dict[str, Any]:
        """The tool's answer for int16 24 kHz PCM: a WAV or PCM file written under the output directory, or
        base64."""
        audio = wav_bytes(pcm) if format == "wav" else pcm
        result: dict[str, Any] = {
            "format": format,
            "duration_s": round(len(pcm) / BYTES_PER_SECOND, 3),
            "sample_rate": 24000,
            "bytes": len(audio),
        }
        if output == "base64":
            return {**result, "audio_base64": base64.b64encode(audio).decode("ascii")}
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / f"speech_{time.strftime('%Y%m%d_%H%M%S')}_{os.urandom(3).hex()}.{format}"
        path.write_bytes(audio)
        return {**result, "path": str(path)}

    @server.tool()
    async def generate_speech(
        text: str,
        voice: str,
        prompt_text: str | None = None,
        instructions: str | None = None,
        format: Literal["wav", "pcm"] = "wav",
        output: Literal["path", "base64"] = "path",
        seed: int | None = None,
    ) -> dict[str, Any]:
        """Speak `text` in a voice. `voice` is a voice id from list_voices (a saved voice, or a model's named voice
        such as Orpheus' `tara`, which the server gives to that model; such a voice takes no instructions) or the
        path of an audio file on this machine (wav/flac/ogg/mp3, a few seconds), whose transcript is `prompt_text`
        (without one the voice
        is imitated from the audio alone). `instructions` say how to speak (e.g. "Speak slowly and softly.",
        "Sound excited."). Control tags in `text`, such as [laughter] or [breath], are voiced. format: wav
        (playable) or pcm (raw int16 mono 24 kHz). output: path (a file written under the output directory) or
        base64."""
        data: dict[str, str] = {"tts_text": text, "stream": "false"}
        files = {}
        if os.path.isfile(voice):
            files["prompt_wav"] = (Path(voice).name, read_local(voice), "application/octet-stream")
            if prompt_text:
                data["prompt_text"] = prompt_text
        else:
            data["voice_id"] = voice
        if instructions:
            data["instruct_text"] = instructions
        if seed is not None:
            data["seed"] = str(seed)
        response = await http.request("POST", "/inference_zero_shot", data=data, files=files or None)
        if response.status_code != 200:
            raise ToolError(error_message(response.status_code, response.content))
        return audio_result(response.content, format, output)

    @server.tool()
    async def convert_voice(
        source_path: str,
        voice: str,
        format: Literal["wav", "pcm"] = "wav",
        output: Literal["path", "base64"] = "path",
        seed: int | None = None,
    ) -> dict[str, Any]:
        """Speak the recording at `source_path` (an audio file on this machine) again in another voice: `voice` is
        a saved voice id or the path of a recording of that voice. Same length as the source."""
        files = {"audio": (Path(source_path).name, read_local(source_path), "application/octet-stream")}
        data = {"response_format": "pcm"} | ({"seed": str(seed)} if seed is not None else {})
        if os.path.isfile(voice):
            files["prompt_audio"] = (Path(voice).name, read_local(voice), "application/octet-stream")
        else:
            data["voice"] = voice
        response = await http.request("POST", "/v1/audio/voice-conversion", data=data, files=files)
        if response.status_code != 200:
            raise ToolError(error_message(response.status_code, response.content))
        return audio_result(response.content, format, output)

    @server.tool()
    async def list_voices() -> dict[str, Any]:
        """The voices of the server: saved ones (id, name, transcript, duration), then each model's named voices
        (`model` says whose)."""
        return {"voices": (await http.json("GET", VOICES_PATH))["data"]}

    @server.tool()
    async def add_voice(name: str, audio_path: str, text: str) -> dict[str, Any]:
        """Save a voice on the server from an audio file on this machine and its transcript; returns its id."""
        audio = read_local(audio_path)
        return await http.json(
            "POST",
            VOICES_PATH,
            ok=(200, 201),
            data={"name": name, "text": text},
            files={"audio": (Path(audio_path).name, audio, "application/octet-stream")},
        )

    @server.tool()
    async def server_status() -> dict[str, Any]:
        """Whether the server is ready (every worker process loaded and alive), its processes and models."""
        readiness = await http.request("GET", "/readiness")
        if readiness.status_code not in (200, 503):
            raise ToolError(error_message(readiness.status_code, readiness.content))
        models = await http.json("GET", "/query_tts_model")
        return {
            "url": http.url,
            "ready": readiness.status_code == 200,
            **readiness.json(),
            "models": models["tts_models"],
        }

    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--url", default=os.environ.get(URL_ENV, "http://127.0.0.1:8080"), help=f"LightTTS server (env {URL_ENV})"
    )
    parser.add_argument("--api_key", default=os.environ.get(API_KEY_ENV), help=f"(env {API_KEY_ENV})")
    parser.add_argument(
        "--output_dir",
        type=Path,
        default=Path(os.environ.get(OUTPUT_DIR_ENV, Path(tempfile.gettempdir()) / "lighttts-mcp")),
        help=f"where generate_speech writes files (env {OUTPUT_DIR_ENV})",
    )
    parser.add_argument("--timeout_s", type=float, default=600, help="per HTTP request")
    args = parser.parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per HTTP request would flood the client's log
    build_server(args.url, args.api_key, args.output_dir, args.timeout_s).run("stdio")


if __name__ == "__main__":
    main()
