"""The benchmark commands stay where their docs say: every `python -m light_tts.bench.X` named in the docs, scripts,
deploy files or tests is a module at light_tts/bench/X.py, every module there is a command (the helpers live in
bench/serving/ and bench/engines/), and each one starts: `--help` runs through its imports and its parser."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "light_tts" / "bench"
COMMANDS = sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "__init__")
# where commands are written down for people and machines to run
DOCUMENTED_IN = [
    "README.md",
    "Makefile",
    "Dockerfile",
    "Dockerfile.cpu",
    "launcher.sh",
    "docs",
    "scripts",
    ".ci",
    "deploy",
    "light_tts",
    "test",
]

# runs each command's module as __main__ with --help in one interpreter (torch is imported once, not 15 times)
HELP_ALL = """
import contextlib, io, runpy, sys
for name in sys.argv[1:]:
    sys.argv = [name, "--help"]
    out = io.StringIO()
    code = "no exit"
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_module("light_tts.bench." + name, run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code
    print(name, code, "usage:" in out.getvalue())
"""


def documented_commands() -> set[str]:
    found = set()
    for entry in DOCUMENTED_IN:
        path = ROOT / entry
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
        for f in files:
            if f.suffix in {".png", ".wav", ".pyc", ".onnx", ".pt"} or "__pycache__" in f.parts:
                continue
            text = f.read_text(errors="ignore")
            found.update(re.findall(r"-m\s+light_tts\.bench\.([a-z_][a-z0-9_]*)", text))
            found.update(re.findall(r'"-m",\s*"light_tts\.bench\.([a-z_][a-z0-9_]*)"', text))
    return found


def test_every_documented_command_is_a_module_at_the_top():
    documented = documented_commands()
    assert {"streams", "decode", "llm", "soak", "pressure", "kernel_compile"} <= documented  # the search works
    assert sorted(documented - set(COMMANDS)) == []


def test_every_module_at_the_top_is_a_command():
    assert [c for c in COMMANDS if 'if __name__ == "__main__":' not in (BENCH / f"{c}.py").read_text()] == []


def test_every_command_prints_its_help():
    out = subprocess.run(
        [sys.executable, "-c", HELP_ALL, *COMMANDS], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[:-1] == [f"{c} 0 True" for c in COMMANDS], out.stderr[-3000:]
