"""The README's start command on a fresh clone in a fresh environment: `python3 dev.py serve` makes its own venv,
installs torch for this host (CPU here: no nvidia-smi) and the server, and serves the tiny model, which answers.

The clone is of this checkout with its uncommitted changes to tracked files laid over it; the interpreter is the
base Python, not the tests' venv. pip's cache is shared (the wheels the tests' own install fetched), so the
install is the real one without the downloads. The test command itself is what CI runs (`.ci/run`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT_S = 1500  # torch and the server's dependencies from pip's cache, then the server's start (it
# takes 1-2 minutes on an idle 2-core machine, ten times that on a shared, overloaded one)


def fresh_clone(destination: Path) -> Path:
    """`git clone` of this checkout plus its uncommitted edits of tracked files."""
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(destination)], check=True)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        source = ROOT / name
        if source.is_file() and not source.is_symlink():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs git and a checkout")
@pytest.mark.timeout(INSTALL_TIMEOUT_S + 300)
def test_start_command_on_a_fresh_clone(tmp_path):
    clone = fresh_clone(tmp_path / "clone")
    assert not (clone / ".venv").exists()
    port = free_port()
    pip_cache = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True)
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(
        XDG_DATA_HOME=str(tmp_path / "data"),
        PYTHONUNBUFFERED="1",
        LIGHTTTS_TORCH="",
        PATH=os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(sys.prefix)),
    )
    if pip_cache.returncode == 0 and pip_cache.stdout.strip():
        env["PIP_CACHE_DIR"] = pip_cache.stdout.strip()
    python = getattr(sys, "_base_executable", sys.executable)  # the machine's Python, not the tests' venv
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [python, "dev.py", "serve", "--port", str(port), "--log_level", "warning"],
            cwd=clone,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + INSTALL_TIMEOUT_S
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()[-4000:]
            try:
                if httpx.get(f"{url}/readiness", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"no server after {INSTALL_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")
        assert httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"] == "tiny-model"
        spoken = httpx.post(
            f"{url}/inference_zero_shot",
            timeout=120,
            data={"tts_text": "Hello.", "prompt_text": "A prompt.", "fixed_speech_tokens": "5"},
            files={"prompt_wav": ("p.wav", tone_wav(), "audio/wav")},
        )
        assert spoken.status_code == 200 and len(spoken.content) == 2 * 5 * 960, spoken.text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the server stops cleanly
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:  # stopped while installing or starting: leave nothing behind
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    log = log_path.read_text()
    assert code == 0, log[-4000:]
    venv_python = clone / ".venv" / "bin" / "python"
    torch = subprocess.run(
        [venv_python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True, check=True
    ).stdout
    assert torch.startswith("2.13.0") and "installing torch 2.13.0 (cpu)" in log, (torch, log[-3000:])
    # a second start finds everything installed: no pip run
    again = subprocess.run(
        [python, "dev.py", "serve", "--help"], cwd=clone, env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0 and "--model_dir" in again.stdout and "installing" not in again.stderr


def tone_wav() -> bytes:
    import io
    import wave

    import numpy as np

    t = np.arange(16000) / 16000
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.sin(2 * np.pi * 150 * t) * 8000).astype("<i2").tobytes())
    return buf.getvalue()
