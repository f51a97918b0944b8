"""The packaged clients against the real server: playable WAV and raw PCM out, the old test/ entry points with their
old flags, server errors in one line, the benchmark sweep; and a fresh venv holding only the `client` extra (no
torch) that runs the console scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import venv
import wave
from pathlib import Path

import pytest
from server_harness import ROOT, voice_wav

TEXT = "Hello there."


@pytest.fixture(scope="module")
def prompt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clients") / "prompt.wav"
    path.write_bytes(voice_wav(seed=7))
    return path


def voice_args(prompt: Path, text: str = TEXT) -> list[str]:
    return ["--prompt_wav", str(prompt), "--prompt_text", "A short prompt.", "--tts_text", text, "--seed", "3"]


def run(cmd: list[str], text: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=text, timeout=240, **kwargs)


def wav_frames(path: Path) -> int:
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000)
        return w.getnframes()


def test_old_entry_points_write_playable_wav_with_their_old_flags(server, prompt, tmp_path):
    """test/test_zero_shot.py (--speed), test_zs_stream.py and test_bistream.py (--words_per_piece) as users call
    them; the same seed gives the same audio whatever the transport."""
    outs = {name: tmp_path / f"{name}.wav" for name in ("say", "stream", "bistream")}
    ws_url = server.url.replace("http://", "ws://")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "test/test_zero_shot.py",
                "--url",
                server.url,
                *voice_args(prompt),
                "--speed",
                "1.0",
                "--out",
                str(outs["say"]),
            ],
            cwd=ROOT,
        ),
        subprocess.Popen(
            [
                sys.executable,
                "test/test_zs_stream.py",
                "--url",
                server.url,
                *voice_args(prompt),
                "--out",
                str(outs["stream"]),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        ),
        subprocess.Popen(
            [
                sys.executable,
                "test/test_bistream.py",
                "--url",
                ws_url,
                *voice_args(prompt),
                "--words_per_piece",
                "1",
                "--piece_interval_s",
                "0",
                "--out",
                str(outs["bistream"]),
            ],
            cwd=ROOT,
        ),
    ]
    stream_stdout, _ = procs[1].communicate(timeout=240)
    assert [p.wait(timeout=240) for p in procs] == [0, 0, 0]
    assert "first audio after" in stream_stdout
    frames = {name: wav_frames(path) for name, path in outs.items()}
    assert frames["say"] > 0 and frames["say"] == frames["stream"], frames
    assert frames["bistream"] > 0


def test_pcm_to_stdout_matches_the_wav(server, prompt, tmp_path):
    """`--out -` pipes raw PCM (progress on stderr); `--out x.pcm` writes the same bytes, headerless."""
    piped = run(
        [sys.executable, "-m", "light_tts.clients.say", "--url", server.url, *voice_args(prompt), "--out", "-"],
        text=False,
    )
    assert piped.returncode == 0, piped.stderr
    assert b"s of audio in" in piped.stderr
    run(
        [
            sys.executable,
            "-m",
            "light_tts.clients.say",
            "--url",
            server.url,
            *voice_args(prompt),
            "--out",
            str(tmp_path / "a.pcm"),
        ]
    ).check_returncode()
    assert piped.stdout == (tmp_path / "a.pcm").read_bytes() and len(piped.stdout) > 0


@pytest.mark.parametrize("module", ["say", "stream"])
def test_server_error_is_one_line_with_its_kind(server, prompt, module):
    result = run(
        [sys.executable, "-m", f"light_tts.clients.{module}", "--url", server.url, *voice_args(prompt, text="   ")]
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"lighttts-{module}: error: HTTP 400 bad_text: "), result.stderr


def test_bistream_server_error_event_is_one_line(server, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    result = run(
        [
            sys.executable,
            "-m",
            "light_tts.clients.bistream",
            "--url",
            server.url.replace("http", "ws"),
            "--prompt_wav",
            str(bad),
            "--prompt_text",
            "Hi.",
            "--tts_text",
            TEXT,
        ]
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("lighttts-bistream: error: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bench_sweep_through_the_old_entry_point(server, prompt, tmp_path):
    out, plot = tmp_path / "speed.json", tmp_path / "speed.png"
    result = run(
        [
            sys.executable,
            "test/test_zs_speed.py",
            "--url",
            server.url,
            *voice_args(prompt)[:6],
            "--stream",
            "true",
            "--concurrency",
            "1",
            "2",
            "--requests_per_level",
            "2",
            "--out",
            str(out),
            "--plot",
            str(plot),
        ]
    )
    assert result.returncode == 0, result.stderr
    levels = json.loads(out.read_text())["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 2]
    assert all(lv["failures"] == 0 and lv["server_failures"] == 0 and lv["ttfa_p50"] > 0 for lv in levels), levels
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fresh_venv_with_only_the_client_extra(server, prompt, tmp_path):
    """`pip install 'light-tts[client]'` into an empty venv (a real, non-editable install from this checkout):
    no torch, no numpy, and its console scripts talk to the server."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    start = time.monotonic()
    install = run(
        [str(bin_dir / "pip"), "install", "-q", "--disable-pip-version-check", f"{ROOT}[client]"],
        env={**os.environ, "PIP_NO_INPUT": "1"},
    )
    print(f"client install: {time.monotonic() - start:.1f} s")
    assert install.returncode == 0, install.stderr[-3000:]
    installed = run([str(bin_dir / "python"), "-m", "pip", "list", "--format=json"]).stdout
    names = {p["name"].lower() for p in json.loads(installed)}
    assert {"httpx", "websockets", "light-tts"} <= names and not names & {"torch", "numpy", "fastapi"}, names
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    say = subprocess.run(
        [str(bin_dir / "lighttts-say"), "--url", server.url, *voice_args(prompt), "--out", str(tmp_path / "say.wav")],
        cwd=tmp_path,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert say.returncode == 0, say.stderr
    assert wav_frames(tmp_path / "say.wav") > 0
    stream = subprocess.run(
        [str(bin_dir / "lighttts-stream"), "--url", server.url, *voice_args(prompt), "--out", "-", "--quiet"],
        cwd=tmp_path,
        env=clean_env,
        capture_output=True,
        timeout=240,
    )
    assert stream.returncode == 0, stream.stderr
    assert len(stream.stdout) == 2 * wav_frames(tmp_path / "say.wav")
