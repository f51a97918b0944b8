#!/usr/bin/env bash
# Start the LightTTS server (HTTP workers, encode, LLM and decode processes); stop it with Ctrl-C or SIGTERM.
#
#   ./launcher.sh --model_dir /path/to/CosyVoice2-0.5B --port 8080 [--httpserver_workers 2 --decode_process_num 2 ...]
#
# Every flag is passed to `python -m light_tts.server.api_server` (see --help). Without --model_dir a tiny
# random-weight model is served: the API works but its audio is noise.
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then
    . .venv/bin/activate
fi
# exec: signals reach the launcher directly, which stops every worker and removes the shared memory
exec python -m light_tts.server.api_server "$@"
