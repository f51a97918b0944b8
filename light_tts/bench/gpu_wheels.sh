#!/usr/bin/env bash
# Downloads, into .whl/, the cp312 manylinux wheels of the server's packages that the GPU image lacks (its
# python3 is 3.12 with torch, triton, numpy, transformers, onnxruntime, av, httpx and prometheus-client), at the
# versions installed in this venv. The device tool carries .whl (ignored through .git/info/exclude) and the
# command on the GPU machine installs them with:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# Usage: bash light_tts/bench/gpu_wheels.sh [extra-package ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
names=(fastapi starlette pydantic pydantic-core annotated-types annotated-doc typing-inspection opentelemetry-api
       uvicorn websockets python-multipart pyzmq msgspec setproctitle soundfile cffi pycparser soxr kaldi-native-fbank
       wetext kaldifst contractions textsearch anyascii pyahocorasick fastapi-offline "$@")
mkdir -p .whl
for name in "${names[@]}"; do
    version=$(python -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    [ -n "$version" ] || { echo "not installed here: $name" >&2; exit 1; }
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        --platform any -d .whl "$name==$version" 2>/dev/null \
    || python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl "$name==$version"
done
du -sh .whl
