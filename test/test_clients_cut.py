"""The packaged clients (light_tts.clients) against servers that fail on purpose: a stream cut mid-body, a
connection reset, a WebSocket dropped without a close frame, a refused connection. Each must end with exit status
1 and one line on stderr, never a traceback, and keep the audio received so far."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import wave
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AUDIO_CHUNK = b"\x01\x00" * 2400  # 0.1 s of int16 audio at 24 kHz


class CuttingHttpServer(threading.Thread):
    """Answers one request with 200 and a chunked body that stops after one chunk: the peer closes (a body that
    ends early) or resets (RST) the connection."""

    def __init__(self, how: str):
        super().__init__(daemon=True)
        self.how = how
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def run(self):
        conn, _ = self.sock.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            headers, body = head.split(b"\r\n\r\n", 1)
            length = next(
                int(line.split(b":")[1])
                for line in headers.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            while len(body) < length:
                body += conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n" + b"%x\r\n" % len(AUDIO_CHUNK) + AUDIO_CHUNK + b"\r\n"
            )
            if self.how == "reset":  # SO_LINGER 0: close() sends RST instead of FIN
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def run_client(module: str, url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    prompt = tmp_path / "prompt.wav"
    with wave.open(str(prompt), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(b"\x00\x00" * 1600)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            f"light_tts.clients.{module}",
            "--url",
            url,
            "--prompt_wav",
            str(prompt),
            "--prompt_text",
            "Hi.",
            "--tts_text",
            "Hello there.",
            "--out",
            str(tmp_path / "out.wav"),
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_failure(result: subprocess.CompletedProcess, prog: str, *words: str) -> str:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"{prog}: error: "), lines
    for word in words:
        assert word in lines[0], lines
    return lines[0]


@pytest.mark.parametrize("how", ["close", "reset"])
def test_stream_cut_mid_body_is_one_line_and_keeps_the_audio(how, tmp_path):
    server = CuttingHttpServer(how)
    server.start()
    result = run_client("stream", server.url, tmp_path, "--quiet")
    server.join(timeout=10)
    assert_one_line_failure(result, "lighttts-stream", "stream cut short after 0.10 s of audio")
    with wave.open(str(tmp_path / "out.wav")) as w:  # what arrived before the cut is kept, playable
        assert w.getframerate() == 24000 and w.getnframes() == len(AUDIO_CHUNK) // 2


def test_websocket_dropped_without_close_frame_is_one_line(tmp_path):
    from websockets.sync.server import serve

    def handler(ws):
        ws.recv()  # start message
        ws.recv()  # prompt audio
        ws.send(AUDIO_CHUNK)
        ws.socket.shutdown(socket.SHUT_RDWR)  # the connection dies: no close frame

    with serve(handler, "127.0.0.1", 0) as ws_server:
        threading.Thread(target=ws_server.serve_forever, daemon=True).start()
        port = ws_server.socket.getsockname()[1]
        result = run_client("bistream", f"ws://127.0.0.1:{port}", tmp_path, "--piece_interval_s", "0")
        ws_server.shutdown()
    assert_one_line_failure(result, "lighttts-bistream", "stream cut short after 0.10 s of audio", "no close frame")


@pytest.mark.parametrize("module, scheme", [("say", "http"), ("stream", "http"), ("bistream", "ws")])
def test_refused_connection_is_one_line(module, scheme, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_client(module, f"{scheme}://127.0.0.1:{port}", tmp_path)
    assert_one_line_failure(result, f"lighttts-{module}")


def test_unreadable_prompt_file_is_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "light_tts.clients.say",
            "--prompt_wav",
            str(tmp_path / "nope"),
            "--prompt_text",
            "Hi.",
            "--tts_text",
            "Hello.",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_one_line_failure(result, "lighttts-say", "cannot read")


def test_clients_import_neither_torch_nor_numpy():
    """A `[client]` install has neither: importing every client must not need them."""
    code = (
        "import sys; import light_tts.clients.say, light_tts.clients.stream, light_tts.clients.bistream, "
        "light_tts.clients.bench; heavy = {'torch', 'numpy'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
