#!/usr/bin/env python3
"""The two commands of a fresh clone, on a machine with Python 3.10+ and nothing else:

    python3 dev.py serve [SERVER FLAGS...]   # the server (no --model_dir: the tiny random model) on :8080
    python3 dev.py test [PYTEST ARGS...]     # the tests (default: pytest -q test)
    python3 dev.py check                     # the static checks (scripts/check: ruff, mypy), as CI runs them

Each first makes `.venv` (LIGHTTTS_VENV elsewhere) and installs what it needs into it, once: torch for this host
(the CUDA build where `nvidia-smi` works, the CPU build otherwise; LIGHTTTS_TORCH=cpu|cuda chooses), then the
package with the extras of the command. A stamp in the venv records what was installed, so later runs start at
once (until pyproject.toml changes). PyTorch's wheel index is probed for a few seconds first: where it cannot be
reached, torch comes from the default index (pip's configuration) instead of pip retrying it for minutes.
Standard library only, so that it runs before anything is installed.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

if sys.version_info < (3, 10):  # noqa: UP036 - dev.py may be started by an older python; it must say why it stops
    sys.exit(f"LightTTS needs Python 3.10 or newer; this is {sys.version.split()[0]}")

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("LIGHTTTS_VENV", ROOT / ".venv"))
# torch per host: the builds the project is tested on (README, Install)
TORCH = {
    "cuda": ("2.11.0", "https://download.pytorch.org/whl/cu130"),
    "cpu": ("2.13.0", "https://download.pytorch.org/whl/cpu"),
}
EXTRAS = {"serve": ("serve",), "test": ("test", "serve"), "check": ("test", "serve")}
PROBE_TIMEOUT_S = 4.0


def say(message: str) -> None:
    print(f"[dev.py] {message}", file=sys.stderr, flush=True)


def host_device() -> str:
    """cuda where nvidia-smi lists a GPU, else cpu (LIGHTTTS_TORCH overrides)."""
    chosen = os.environ.get("LIGHTTTS_TORCH")
    if chosen in TORCH:
        return chosen
    if shutil.which("nvidia-smi") is None:
        return "cpu"
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "cpu"
    return "cuda" if listed.returncode == 0 and "GPU" in listed.stdout else "cpu"


def is_reachable(index_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{index_url}/torch/", timeout=PROBE_TIMEOUT_S) as response:
            return response.status == 200
    except Exception:  # DNS, refused, timeout, TLS, HTTP error: all mean "not usable now"
        return False


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(*cmd) -> None:
    result = subprocess.run([str(c) for c in cmd])
    if result.returncode:
        sys.exit(f"[dev.py] failed ({result.returncode}): {' '.join(str(c) for c in cmd)}")


def make_venv() -> None:
    if venv_python().exists():
        return
    say(f"creating {VENV}")
    if subprocess.run([sys.executable, "-m", "venv", str(VENV)]).returncode:
        sys.exit("[dev.py] could not create a virtual environment; on Debian/Ubuntu: apt install python3-venv")


def has_torch() -> bool:
    return subprocess.run([str(venv_python()), "-c", "import torch"], capture_output=True).returncode == 0


def install_torch(device: str) -> None:
    version, index = TORCH[device]
    if is_reachable(index):
        say(f"installing torch {version} ({device}) from {index}")
        run(venv_python(), "-m", "pip", "install", "-q", f"torch=={version}", "--index-url", index)
        return
    say(
        f"{index} is not reachable (probed for {PROBE_TIMEOUT_S:g} s): installing torch {version} ({device}) "
        "from the default index"
        + (" (on Linux, PyPI's wheel is the CUDA build: several GB)" if device == "cpu" else "")
    )
    run(venv_python(), "-m", "pip", "install", "-q", f"torch=={version}")


def install(command: str) -> None:
    """torch and the package with the command's extras, unless the stamp says they are there already."""
    make_venv()
    stamp = VENV / ".lighttts-installed.json"
    pyproject = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    device = host_device()
    done = json.loads(stamp.read_text()) if stamp.exists() else {}
    if done.get("pyproject") != pyproject or done.get("device") != device:
        done = {}
    extras = sorted(set(done.get("extras", [])) | set(EXTRAS[command]))
    if done and set(EXTRAS[command]) <= set(done["extras"]):
        return
    if not has_torch():
        install_torch(device)
    say(f"installing light-tts[{','.join(extras)}] (editable)")
    run(venv_python(), "-m", "pip", "install", "-q", "-e", f"{ROOT}[{','.join(extras)}]")
    stamp.write_text(json.dumps({"pyproject": pyproject, "device": device, "extras": extras}))


def main(argv: list) -> None:
    if not argv or argv[0] not in EXTRAS:
        sys.exit(__doc__)
    command, args = argv[0], argv[1:]
    install(command)
    python = str(venv_python())
    os.chdir(ROOT)
    if command == "serve":
        say("starting the server (without --model_dir: the tiny random-weight model, its audio is noise)")
        os.execv(python, [python, "-m", "light_tts.server.api_server", *args])
    if command == "check":  # scripts/check runs `python -m ...`: the venv's python first on PATH
        os.environ["PATH"] = os.pathsep.join([str(venv_python().parent), os.environ.get("PATH", "")])
        os.execv("/bin/bash", ["bash", str(ROOT / "scripts" / "check"), *args])
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        say(
            "the browser tests skip without Debian's chromium and chromium-driver (apt install chromium "
            "chromium-driver)"
        )
    os.execv(python, [python, "-m", "pytest", "-q", *(args or ["test"])])


if __name__ == "__main__":
    main(sys.argv[1:])
