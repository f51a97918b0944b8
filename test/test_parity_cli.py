"""The parity CLI as users run it: every check passes on the upstream fixtures, and a wrong model fails it."""

import shutil
import subprocess
import sys

import torch


def run_cli(model_dir):
    return subprocess.run(
        [sys.executable, "-m", "light_tts.tools.parity", str(model_dir)], capture_output=True, text=True, timeout=600
    )


def test_parity_cli_passes_on_fixture(fixture_dir):
    result = run_cli(fixture_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.rstrip().endswith(("PASS", "FAIL")) or " PASS " in line]
    assert len(rows) >= 13
    assert "0 failed" in result.stdout


def test_parity_cli_passes_on_cosyvoice3_fixture(cv3_fixture_dir):
    """The directory's family (cosyvoice3.yaml) picks the checks: LLM log-probs and greedy runs (early stop,
    instruct), flow mels, HiFT audio and noise tables, every streamed chunk, the frontend's inputs."""
    result = run_cli(cv3_fixture_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "24 passed, 0 failed" in result.stdout
    assert "stream chunk count and sizes" in result.stdout and "instruct greedy tokens" in result.stdout


def test_parity_cli_fails_on_perturbed_weights(fixture_dir, tmp_path):
    d = tmp_path / "perturbed"
    shutil.copytree(fixture_dir, d)
    sd = torch.load(d / "hift.pt", weights_only=True)
    key = next(k for k in sd if k.endswith("conv_post.bias"))
    sd[key] = sd[key] + 0.05
    (d / "hift.pt").chmod(0o644)
    torch.save(sd, d / "hift.pt")
    result = run_cli(d)
    assert result.returncode == 1
    assert "hift audio" in result.stdout and "FAIL" in result.stdout
