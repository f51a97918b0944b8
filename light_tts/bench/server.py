"""End-to-end server benchmark: start the real server, sweep client concurrency, stop it.

    python -m light_tts.bench.server --model_dir DIR --out OUT [--concurrency 1 4 16] [-- SERVER FLAGS...]

Writes OUT/prompt.wav (a synthetic 3 s voice), OUT/server.log, and the results of the packaged client
light_tts.clients.bench (lighttts-bench: OUT/zs_speed_stream.json/.png, OUT/zs_speed_nonstream.json/.png): time to first audio percentiles, real-time
factor and audio seconds per second at each concurrency level, failures counted by client and server.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
import urllib.request
import wave
from pathlib import Path

import numpy as np

from light_tts.clients import bench as bench_client

TTS_TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away into the quiet green forest."


def write_prompt_wav(path: Path, seconds: float = 3.0, sr: int = 16000) -> None:
    """A voiced-speech-like signal: a gliding harmonic tone with a syllable-rate envelope."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2)
    pcm = (0.25 * x / np.abs(x).max() * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(sr), w.writeframes(pcm.tobytes())


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
        time.sleep(1)
    raise TimeoutError(f"server not ready after {timeout_s} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests_per_level", type=int, default=16)
    parser.add_argument("--ready_timeout_s", type=float, default=400)
    parser.add_argument("server_args", nargs="*", help="extra server flags, after --")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{args.port}"
    write_prompt_wav(args.out / "prompt.wav")
    with open(args.out / "server.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "light_tts.server.api_server", "--model_dir", args.model_dir,
                                   "--port", str(args.port), *args.server_args], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(url, server, args.ready_timeout_s)
            for stream in ("true", "false"):
                name = "stream" if stream == "true" else "nonstream"
                bench_client.main(["--url", url, "--prompt_wav", str(args.out / "prompt.wav"),
                                   "--prompt_text", "A short prompt.", "--tts_text", TTS_TEXT, "--stream", stream,
                                   "--concurrency", *map(str, args.concurrency),
                                   "--requests_per_level", str(args.requests_per_level),
                                   "--out", str(args.out / f"zs_speed_{name}.json"),
                                   "--plot", str(args.out / f"zs_speed_{name}.png")])
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
