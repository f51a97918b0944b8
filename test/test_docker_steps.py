"""Dockerfile.cpu's install and start steps, replayed outside Docker in a clean environment: its RUN install line
(deploy/docker/install.sh) into a fresh venv with Debian's python3 (the image's base is Debian bookworm), then its
ENTRYPOINT with no flags (it must serve the tiny model) under an empty environment and HOME, until its
HEALTHCHECK command passes; then the image's stop signal (SIGTERM) must end it cleanly.

Only what cannot run here is changed: PyTorch's wheel index (unreachable: pip's configured index gives the same
torch==2.13.0 CPU wheel), pip's cache (the image keeps none), the paths /opt/lighttts/... (mapped into a temporary
directory) and tini (dropped when not installed; it only forwards signals and reaps zombies)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
IMAGE_ROOT = "/opt/lighttts"


def dockerfile_steps(path: Path) -> dict:
    """ARG defaults, ENV values, the RUN line of install.sh, and the HEALTHCHECK and ENTRYPOINT exec arrays."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())  # join continuation lines
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    steps: dict = {"args": {}, "env": {}}
    for line in lines:
        instruction, _, rest = line.partition(" ")
        if instruction == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            steps["args"][name] = value
        elif instruction == "ENV":
            steps["env"].update(item.split("=", 1) for item in shlex.split(rest))
        elif instruction == "RUN" and "install.sh" in rest:
            steps["install"] = rest
        elif instruction == "HEALTHCHECK":
            steps["healthcheck"] = json.loads(rest.split(" CMD ", 1)[1])
        elif instruction == "ENTRYPOINT":
            steps["entrypoint"] = json.loads(rest)
    return steps


def in_tmp(value, tmp: Path):
    """Map the image's /opt/lighttts/src to this checkout and the rest of /opt/lighttts into `tmp`."""
    if isinstance(value, list):
        return [in_tmp(v, tmp) for v in value]
    return value.replace(f"{IMAGE_ROOT}/src", str(ROOT)).replace(IMAGE_ROOT, str(tmp))


def test_cpu_image_steps_install_and_serve_the_tiny_model(tmp_path):
    steps = dockerfile_steps(ROOT / "Dockerfile.cpu")
    assert steps["args"]["TORCH_SPEC"] == "torch==2.13.0"
    assert steps["args"]["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    env = {k: in_tmp(v, tmp_path) for k, v in steps["env"].items()}
    # The image keeps no pip cache (PIP_NO_CACHE_DIR, for its size); here the machine's cache may serve the wheels.
    build_env = {**steps["args"], **env, "TORCH_INDEX": "", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    build_env.pop("PIP_NO_CACHE_DIR")
    start = time.monotonic()
    install = subprocess.run(
        ["sh", "-c", in_tmp(steps["install"], tmp_path)], env=build_env, capture_output=True, text=True, timeout=600
    )
    print(f"image install step: {time.monotonic() - start:.0f} s")
    assert install.returncode == 0, install.stderr[-4000:]
    venv_python = Path(env["LIGHTTTS_VENV"]) / "bin" / "python"
    assert subprocess.run([str(venv_python), "-c", "import light_tts.server.api.app, torch"]).returncode == 0

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tmp_path / "home"
    home.mkdir()
    run_env = {**env, "LIGHTTTS_PORT": str(port), "PATH": "/usr/bin:/bin", "HOME": str(home)}
    entrypoint = in_tmp(steps["entrypoint"], tmp_path)
    if entrypoint[0] == "tini" and shutil.which("tini") is None:
        entrypoint = entrypoint[2:]
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen(entrypoint, env=run_env, cwd=home, stdout=log, stderr=subprocess.STDOUT)
    try:
        healthcheck = in_tmp(steps["healthcheck"], tmp_path)
        deadline = time.monotonic() + 240
        while subprocess.run(healthcheck, env=run_env, capture_output=True).returncode != 0:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "HEALTHCHECK never passed"
            time.sleep(0.5)
        assert (home / ".cache" / "lighttts" / "tiny-model").is_dir()  # no --model_dir: the tiny model
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=120).json()["status"] == "ok"
        server.send_signal(signal.SIGTERM)  # `docker stop`
        assert server.wait(timeout=60) == 0, (tmp_path / "server.log").read_text()[-4000:]
    finally:
        if server.poll() is None:
            server.kill()
        log.close()


def test_both_images_share_the_install_and_start_steps():
    """The CUDA image differs only in its base and torch build; a step changed in one must change in the other."""
    gpu, cpu = dockerfile_steps(ROOT / "Dockerfile"), dockerfile_steps(ROOT / "Dockerfile.cpu")
    for key in ("install", "healthcheck", "entrypoint", "env"):
        assert gpu[key] == cpu[key], key
    assert gpu["args"]["TORCH_INDEX"].startswith("https://download.pytorch.org/whl/cu")
    assert "gpu" in gpu["args"]["EXTRAS"].split(",")
    for name in ("Dockerfile", "Dockerfile.cpu"):
        text = (ROOT / name).read_text()
        assert "USER lighttts" in text and "VOLUME /models" in text and "--shm-size" in text
