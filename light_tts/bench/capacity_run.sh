#!/usr/bin/env bash
# The whole-server capacity run on a GPU host (what docs/performance.md reports): a full-size random model, the
# real server with fp8 flow pages, then light_tts.bench.streams against it: TTFA at one stream (saved and new
# voice), a closed-loop sweep with saved voices, one with every request a new voice, and an open-loop soak. Each
# level prints the server's stage table of time to first audio (--breakdown; docs/architecture.md).
#
#   OUT=results bash light_tts/bench/capacity_run.sh
#   SAVED="64 128 256" NEW="32 64"       closed-loop levels of the two sweeps
#   STEPS="ttfa saved"                   which steps to run (default: ttfa saved new soak; soak needs SOAK_RATE)
#   SOAK_RATE=R SOAK_S=600               the soak's Poisson arrivals per second (0.8 x what the sweep holds)
#   SERVER_FLAGS="--decode_gpus 0,1 --decode_process_num 2"   extra server flags (placement on several GPUs)
#   KEEP_SERVER=1                        leave the server running (setsid) for a later call; a server already
#                                        ready on PORT is reused and never stopped
set -euo pipefail
OUT=${OUT:-out}
MODEL=${MODEL:-/tmp/full}
PORT=${PORT:-18080}
SAVED=${SAVED:-64 128 192 256}
NEW=${NEW:-16 32 64}
STEPS=${STEPS:-ttfa saved new soak}
SERVER_LOG=${SERVER_LOG:-$OUT/server.log}
mkdir -p "$OUT"
URL=http://127.0.0.1:$PORT
get() { python3 -c "import sys, urllib.request; sys.stdout.buffer.write(urllib.request.urlopen('$URL$1').read())"; }
if get /readiness >/dev/null 2>&1; then
    echo "reusing the server on $URL"
else
    [ -f "$MODEL/llm.pt" ] || python3 -m light_tts.tools.make_model "$MODEL" --size full
    setsid python3 -m light_tts.server.api_server --model_dir "$MODEL" --port "$PORT" --httpserver_workers 2 \
        --encode_process_num 4 --running_max_req_size 512 --decode_max_batch_size 256 --hop_policy fixed \
        --max_total_token_num 400000 --flow_cache_dtype fp8_e4m3 --decode_mem_fraction 0.8 \
        --max_speech_tokens 1000 ${SERVER_FLAGS:-} > "$SERVER_LOG" 2>&1 &
    SERVER=$!
    [ -n "${KEEP_SERVER:-}" ] || trap 'kill -INT $SERVER 2>/dev/null; sleep 5; kill -9 -$SERVER 2>/dev/null || true' EXIT
    for _ in $(seq 600); do get /readiness >/dev/null 2>&1 && break; kill -0 $SERVER 2>/dev/null || break; sleep 1; done
    get /readiness >/dev/null || { tail -50 "$SERVER_LOG"; exit 1; }
    echo "server ready after $SECONDS s"
fi
bench() { python3 -m light_tts.bench.streams --url "$URL" --fixed_speech_tokens 250 --breakdown "$@"; }
has() { [[ " $STEPS " == *" $1 "* ]]; }
if has ttfa; then
    bench --out "$OUT/ttfa_saved" --concurrency 1 --requests_per_level 16 --ramp_s 0
    bench --out "$OUT/ttfa_new" --concurrency 1 --requests_per_level 16 --ramp_s 0 --new_voice_fraction 1
fi
has saved && bench --out "$OUT/saved" --concurrency $SAVED --duration_per_level 20 --client_procs 4
has new && bench --out "$OUT/new" --concurrency $NEW --new_voice_fraction 1 --duration_per_level 20 --client_procs 4
# the soak at 80% of capacity: SOAK_RATE = 0.8 x the open-loop arrival rate the sweep above holds
if has soak && [ -n "${SOAK_RATE:-}" ]; then
    python3 -m light_tts.bench.soak --url "$URL" --out "$OUT/soak" --rate "$SOAK_RATE" --duration "${SOAK_S:-600}" \
        --fixed_speech_tokens 250 --client_procs 4 || echo "soak FAILED (see $OUT/soak/soak.json)"
fi
get /metrics > "$OUT/metrics.txt" || true
