#!/bin/sh
# Installs LightTTS into a fresh venv. The one install step of Dockerfile and Dockerfile.cpu, and of the test that
# replays it (test/test_docker_steps.py).
#
#   deploy/docker/install.sh VENV SRC TORCH_SPEC TORCH_INDEX EXTRAS
#
# torch goes first, from TORCH_INDEX (PyTorch's CPU or CUDA wheel index; empty = pip's configured index), so that
# the `server` extra's torch range is already met and pip does not pick another build.
set -eu
venv=$1 src=$2 torch_spec=$3 torch_index=$4 extras=$5
python3 -m venv "$venv"
pip="$venv/bin/pip --disable-pip-version-check --no-input"
if [ -n "$torch_index" ]; then
    $pip install -q "$torch_spec" --index-url "$torch_index"
else
    $pip install -q "$torch_spec"
fi
$pip install -q "$src[$extras]"
