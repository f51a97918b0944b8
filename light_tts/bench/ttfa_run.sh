#!/usr/bin/env bash
# Issue 21's whole-server run on a GPU host, one server for every level: a full-size random model, the server with
# --model_dir only (what a user gets: the flags of capacity_run.sh are derived at startup, printed in server.log)
# plus SERVER_FLAGS, then light_tts.bench.streams with the server's stage table at every level (--breakdown):
#   1. TTFA at one stream, saved voice, then new voice (ONE requests each, closed at their first audio);
#   2. closed-loop levels with saved voices (SAVED), then with every request a new voice (NEW), LEVEL_S s each.
# 5-s prompts, 10-s utterances (--fixed_speech_tokens 250). Results: OUT/{one_saved,one_new,saved,new}/streams.json,
# OUT/server.log (the derived flags), OUT/metrics.txt.
#
#   OUT=after bash light_tts/bench/ttfa_run.sh                       # defaults: the levers on
#   OUT=before SERVER_FLAGS="$(cat light_tts/bench/levers_off.flags)" bash light_tts/bench/ttfa_run.sh
#   STEPS="one saved" SAVED="64 256" NEW="64 128 200" ONE=32 LEVEL_S=20   (defaults shown)
set -euo pipefail
OUT=${OUT:-ttfa}
MODEL=${MODEL:-/tmp/full}
PORT=${PORT:-18080}
ONE=${ONE:-32}
SAVED=${SAVED:-64 128 256 320}
NEW=${NEW:-64 128 200}
LEVEL_S=${LEVEL_S:-20}
STEPS=${STEPS:-one saved new}
mkdir -p "$OUT"
URL=http://127.0.0.1:$PORT
get() { python3 -c "import sys, urllib.request; sys.stdout.buffer.write(urllib.request.urlopen('$URL$1').read())"; }
[ -f "$MODEL/llm.pt" ] || python3 -m light_tts.tools.make_model "$MODEL" --size full
setsid python3 -m light_tts.server.api_server --model_dir "$MODEL" --port "$PORT" ${SERVER_FLAGS:-} \
    > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'get /metrics > "$OUT/metrics.txt" 2>/dev/null || true; kill -INT $SERVER 2>/dev/null; sleep 5; kill -9 -$SERVER 2>/dev/null || true' EXIT
for _ in $(seq 600); do get /readiness >/dev/null 2>&1 && break; kill -0 $SERVER 2>/dev/null || break; sleep 1; done
get /readiness >/dev/null || { tail -50 "$OUT/server.log"; exit 1; }
echo "server ready after $SECONDS s"; grep "derived for this host" "$OUT/server.log" || true
bench() { python3 -m light_tts.bench.streams --url "$URL" --fixed_speech_tokens 250 --breakdown "$@"; }
has() { [[ " $STEPS " == *" $1 "* ]]; }
if has one; then
    bench --out "$OUT/one_saved" --concurrency 1 --requests_per_level "$ONE" --ramp_s 0 --first_audio_only
    bench --out "$OUT/one_new" --concurrency 1 --requests_per_level "$ONE" --ramp_s 0 --first_audio_only \
        --new_voice_fraction 1
fi
has saved && bench --out "$OUT/saved" --concurrency $SAVED --duration_per_level "$LEVEL_S" --client_procs 4
has new && bench --out "$OUT/new" --concurrency $NEW --new_voice_fraction 1 --duration_per_level "$LEVEL_S" \
    --client_procs 4
echo "done after $SECONDS s"
