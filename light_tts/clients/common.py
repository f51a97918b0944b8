"""What every LightTTS client shares: its command line, the zero-shot form, audio files, and one-line failures.

Imports only the standard library (httpx and websockets are imported by the clients that use them), so a
`pip install light-tts[client]` runs every client without torch or numpy.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import wave
from collections.abc import Callable
from typing import NoReturn

SAMPLE_RATE = 24000  # the server's audio: mono int16 little-endian PCM at 24 kHz
BYTES_PER_SECOND = SAMPLE_RATE * 2
API_KEY_ENV = "LIGHTTTS_API_KEY"


class ClientError(Exception):
    """A failure the user must read: printed as one line on stderr, then the client exits with status 1."""


def str2bool(value: str) -> bool:
    text = value.strip().lower()
    if text in ("true", "1", "yes", "y", "on"):
        return True
    if text in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def build_parser(doc: str, default_url: str, default_out: str | None) -> argparse.ArgumentParser:
    """The options of every client: server, voice (a prompt file + transcript, or a saved voice id), text."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--url", default=default_url, help="server address")
    parser.add_argument(
        "--api_key",
        default=os.environ.get(API_KEY_ENV),
        help=f"sent as 'Authorization: Bearer KEY' (default: ${API_KEY_ENV})",
    )
    parser.add_argument("--prompt_wav", help="a few seconds of the voice to clone (wav/flac/ogg/mp3)")
    parser.add_argument("--prompt_text", help="what the voice says in --prompt_wav")
    parser.add_argument(
        "--voice_id", help="a saved voice (POST /v1/audio/voices), instead of --prompt_wav and --prompt_text"
    )
    parser.add_argument("--tts_text", required=True, help="the text to speak")
    parser.add_argument("--tts_model_name", default="default")
    parser.add_argument("--seed", type=int, default=None, help="same inputs + same seed = same audio")
    parser.add_argument(
        "--fixed_speech_tokens",
        type=int,
        default=None,
        help="benchmarks: every sentence generates exactly this many speech tokens (25 = 1 s)",
    )
    if default_out is not None:
        parser.add_argument(
            "--out",
            default=default_out,
            help="audio file: .wav (playable), .pcm/.raw (headerless int16 24 kHz), - (PCM to stdout)",
        )
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.voice_id is None and (args.prompt_wav is None or args.prompt_text is None):
        parser.error("give --prompt_wav and --prompt_text, or --voice_id")
    return args


def read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ClientError(f"cannot read {path}: {e.strerror}") from None


def voice_fields(args: argparse.Namespace) -> tuple[dict[str, str], dict[str, tuple[str, bytes, str]]]:
    """(form fields, files) naming the voice: a saved voice id, or the prompt audio and its transcript."""
    if args.voice_id is not None:
        return {"voice_id": args.voice_id}, {}
    wav = read_file(args.prompt_wav)
    return {"prompt_text": args.prompt_text}, {
        "prompt_wav": (os.path.basename(args.prompt_wav), wav, "application/octet-stream")
    }


def zero_shot_form(args: argparse.Namespace, stream: bool, speed: float | None = None):
    """(data, files) of a POST /inference_zero_shot multipart form."""
    data, files = voice_fields(args)
    data.update(tts_text=args.tts_text, stream=str(stream).lower(), tts_model_name=args.tts_model_name)
    if speed is not None:
        data["speed"] = str(speed)
    for name in ("seed", "fixed_speech_tokens"):
        if getattr(args, name, None) is not None:
            data[name] = str(getattr(args, name))
    return data, files


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def error_message(status: int | None, body: bytes | str) -> str:
    """One line from an error response (or, with no status, a WebSocket error event): the server's
    {"error", "kind"} body, OpenAI's {"error": {"message", "code", ...}} (the /v1/* routes), or the start of
    whatever it sent."""
    prefix = f"HTTP {status}" if status is not None else "server error"
    try:
        parsed = json.loads(body)
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict) and "message" in error:
            return f"{prefix} {error.get('code') or 'error'}: {error['message']}"
        if error is not None:
            return f"{prefix} {parsed.get('kind', 'error')}: {error}"
    except ValueError:
        pass
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    return f"{prefix}: {' '.join(text.split())[:200] or '(empty body)'}"


def write_audio(path: str, pcm: bytes) -> None:
    """A .wav file (stdlib wave: plays anywhere), raw PCM for .pcm/.raw, or raw PCM on stdout for '-'."""
    if path == "-":
        sys.stdout.buffer.write(pcm)
        sys.stdout.buffer.flush()
        return
    if path.lower().endswith((".pcm", ".raw")):
        with open(path, "wb") as f:
            f.write(pcm)
        return
    with open(path, "wb") as f:
        f.write(wav_bytes(pcm))


def wav_bytes(pcm: bytes) -> bytes:
    """The server's PCM as a WAV file's bytes (mono, 16-bit, 24 kHz)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm)
    return buf.getvalue()


def report(message: str, out: str | None = None) -> None:
    """A progress line on stdout, or on stderr when the audio itself goes to stdout (--out -)."""
    print(message, file=sys.stderr if out == "-" else sys.stdout, flush=True)


def fail(prog: str, message: str) -> NoReturn:
    one_line = message.replace("\r", " ").replace("\n", " ")
    print(f"{prog}: error: {one_line}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def transport_message(error: BaseException) -> str:
    """One line for a network failure; the names say what broke (a stream cut short, a refused connection)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"{type(error).__name__}: {text}"


def run_client(prog: str, body: Callable[[], None]) -> None:
    """Run a client's work; any expected failure becomes one line on stderr and exit status 1, never a traceback.

    httpx and websockets failures are caught by their base classes, imported here lazily so that a client that
    needs only one of the two libraries runs without the other.
    """
    network_errors: list[type[BaseException]] = [OSError, EOFError]
    for module, name in (("httpx", "HTTPError"), ("websockets.exceptions", "WebSocketException")):
        try:
            network_errors.append(getattr(__import__(module, fromlist=[name]), name))
        except ImportError:
            pass
    try:
        body()
    except ClientError as e:
        fail(prog, str(e))
    except KeyboardInterrupt:
        fail(prog, "interrupted")
    except tuple(network_errors) as e:
        fail(prog, transport_message(e))
