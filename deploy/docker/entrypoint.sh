#!/bin/sh
# The images' entry point: the server on 0.0.0.0:$LIGHTTTS_PORT with the flags given to `docker run IMAGE ...`
# (a later --port or --host wins). Without --model_dir it makes and serves a tiny random model (noise).
set -eu
exec "$LIGHTTTS_VENV/bin/python" -m light_tts.server.api_server --host 0.0.0.0 --port "${LIGHTTTS_PORT:-8080}" "$@"
