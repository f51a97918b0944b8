"""Harness of the end-to-end tests: the real server in a subprocess, synthetic voices, /proc and /dev/shm checks."""

from __future__ import annotations

import ctypes
import io
import os
import signal
import socket
import subprocess
import sys
import time
import wave
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]


def stop_with_the_tests() -> None:
    """preexec_fn: the server gets SIGTERM when the test process dies (killed by a timeout, say), so an
    interrupted run leaves no server behind (start_new_session keeps Ctrl-C from reaching it)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def voice_wav(seed: int, seconds: float = 1.5, rate: int = 16000) -> bytes:
    """A synthetic 'voice': a harmonic tone with vibrato and noise; each seed gives different audio."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 110 + 30 * seed % 200 + 8 * np.sin(2 * np.pi * 5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * 0.15 + rng.normal(0, 0.02, len(t))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def assert_same_audio(got: bytes, want: bytes) -> None:
    """Same length and the same waveform: the same seed samples the same speech tokens in the server's batched
    engine as offline, and batched float rounding moves a sample by at most a few int16 steps."""
    a, b = np.frombuffer(got, np.int16).astype(np.int32), np.frombuffer(want, np.int16).astype(np.int32)
    assert len(a) == len(b) and len(a) > 0, (len(a), len(b))
    assert np.abs(a - b).max() <= 8, np.abs(a - b).max()


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


@contextmanager
def serving(srv: ServerProcess):
    """Waits for `srv` to be ready and yields it; then stops it with Ctrl-C (to the whole group) and checks that it
    exited with 0 and left no shared memory, socket or process behind."""
    try:
        srv.wait_ready()
        yield srv
    finally:
        code = srv.stop(signal.SIGINT, whole_group=True)
    assert code == 0, srv.log_path.read_text()[-4000:]
    srv.assert_clean_exit_state()


class ServerProcess:
    """`python -m light_tts.server.api_server` (or, with `gunicorn_workers`, gunicorn running wsgi_wrapper.py) in a
    subprocess, with helpers to inspect and stop it."""

    def __init__(self, model_dir: Path, log_path: Path, *extra: str, gunicorn_workers: int = 0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        args = ["--model_dir", str(model_dir), "--log_level", "warning", *extra]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if gunicorn_workers:
            cmd = [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "wsgi_wrapper.py",
                "-w",
                str(gunicorn_workers),
                "-b",
                f"127.0.0.1:{self.port}",
                "wsgi_wrapper:app",
            ]
            env["LIGHTTTS_ARGS"] = " ".join(args)
        else:
            cmd = [sys.executable, "-m", "light_tts.server.api_server", "--port", str(self.port), *args]
        self.log = open(log_path, "wb")
        # its own session, so that a Ctrl-C can be imitated by signalling the whole process group
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=stop_with_the_tests,
        )
        self.children: set[int] = set()
        self.was_unready_while_loading = False

    def wait_ready(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()[-4000:]}")
            try:
                status = httpx.get(f"{self.url}/readiness", timeout=2).status_code
                if status == 200:
                    self.children = descendants(self.proc.pid)
                    return
                self.was_unready_while_loading |= status == 503
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log_path.read_text()[-4000:]}")

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """(sample name, sorted label items) -> value, from /metrics."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def slots_in_use(self) -> float:
        return self.metrics()[("lighttts_request_slots", (("state", "in_use"),))]

    def wait_slots_free(self, timeout: float) -> float:
        """Seconds until no slot is in use; fails after `timeout`."""
        start = time.monotonic()
        while self.slots_in_use() != 0:
            assert time.monotonic() - start < timeout, f"slots still in use after {timeout} s"
            time.sleep(0.05)
        return time.monotonic() - start

    def shm_leftovers(self) -> list[str]:
        return [p.name for p in Path("/dev/shm").glob(f"lighttts_{self.proc.pid}_*")]

    def stop(self, sig: int = signal.SIGTERM, whole_group: bool = False) -> int:
        """Signal the launcher (or, like a terminal's Ctrl-C, every process of the server) and wait for it."""
        if self.proc.poll() is None:
            if whole_group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.log.close()
        return code

    def assert_clean_exit_state(self) -> None:
        """No worker outlived the server and no shared memory was left behind."""
        deadline = time.monotonic() + 5
        alive = {pid for pid in self.children if Path(f"/proc/{pid}").exists()}
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = {pid for pid in alive if Path(f"/proc/{pid}").exists()}
        assert not alive, f"orphan worker processes: {alive}"
        assert self.shm_leftovers() == []


def outcomes(server, endpoint: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for (name, labels), value in server.metrics().items():  # summed over the model label
        if name == "lighttts_requests_total" and dict(labels).get("endpoint") == endpoint:
            counts[dict(labels)["outcome"]] = counts.get(dict(labels)["outcome"], 0) + value
    return counts
