"""What the whole-server benchmarks share: a synthetic voice prompt, and the real server started in a subprocess.

Used by light_tts.bench.server (concurrency sweep through test/test_zs_speed.py) and light_tts.bench.streams
(the real-time capacity benchmark).
"""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import wave
from contextlib import contextmanager
from pathlib import Path

import numpy as np

PROMPT_RATE = 16000


def prompt_pcm(seconds: float = 3.0, sr: int = PROMPT_RATE) -> np.ndarray:
    """A voiced-speech-like int16 signal: a gliding harmonic tone with a syllable-rate envelope."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)
    return (0.25 * x / np.abs(x).max() * 32767).astype(np.int16)


def wav_bytes(pcm: np.ndarray, sr: int = PROMPT_RATE) -> bytes:
    """A mono 16-bit WAV file of `pcm`."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(sr), w.writeframes(pcm.astype("<i2").tobytes())
    return buf.getvalue()


def write_prompt_wav(path: Path, seconds: float = 3.0) -> None:
    path.write_bytes(wav_bytes(prompt_pcm(seconds)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, server: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with code {server.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/readiness", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"server not ready after {timeout_s} s")


@contextmanager
def local_server(model_dir: str | None, port: int, server_args: list[str], log_path: Path, ready_timeout_s: float):
    """`python -m light_tts.server.api_server` on 127.0.0.1:`port` (0: a free port), logging to `log_path`; yields
    its URL once /readiness answers 200, and stops it with SIGINT (as Ctrl-C would) on exit."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    model = ["--model_dir", str(model_dir)] if model_dir else []  # none: the server makes a tiny random model
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "light_tts.server.api_server", *model, "--port", str(port), *server_args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_ready(url, server, ready_timeout_s)
            yield url
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
