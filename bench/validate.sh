#!/usr/bin/env bash
# Validation throughput of Portcullis on one store, with wrk over loopback.
# Usage: [STORE=URL] bench/validate.sh [DURATION] [RUNS]
#   defaults: the embedded SQLite store, 10s, 3 runs; 50 connections, 2 threads, 3 s warm-up
# Prints one line per run and the median. Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10s} RUNS=${2:-3} CONNS=${CONNS:-50} PORT=${PORT:-18181}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
cargo build --release -q
BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')/release/portcullis
DIR=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
STORE_ARGS=()
[ -n "${STORE:-}" ] && STORE_ARGS=(--store "$STORE")
export KEY=$("$BIN" --data-dir "$DIR/cli" "${STORE_ARGS[@]}" api-keys create --name bench 2>/dev/null)
"$BIN" --data-dir "$DIR" "${STORE_ARGS[@]}" serve --listen 127.0.0.1:$PORT --audit-log off 2>"$DIR/server.log" &
PID=$!
for _ in $(seq 100); do curl -sf 127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.1; done
export TOKEN=$(curl -sf 127.0.0.1:$PORT/v1/sessions -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
  -d '{"subject":"bench","data":{"cart":[1,2,3]}}' | python3 -c 'import json,sys;print(json.load(sys.stdin)["token"])')
wrk -t2 -c"$CONNS" -d3s -s bench/validate.lua http://127.0.0.1:$PORT/v1/sessions/validate >/dev/null
results=()
for i in $(seq "$RUNS"); do
  out=$(wrk -t2 -c"$CONNS" -d"$DURATION" --latency -s bench/validate.lua http://127.0.0.1:$PORT/v1/sessions/validate)
  rps=$(awk '/Requests\/sec/{print $2}' <<<"$out"); p99=$(awk '$1=="99%"{print $2}' <<<"$out"); bad=$(awk -F= '/non2xx/{print $2}' <<<"$out")
  echo "run $i: $rps req/s, p99 $p99, non-2xx $bad"
  results+=("$rps")
done
rss=$(awk '/VmRSS/{print $2" "$3}' /proc/$PID/status)
printf '%s\n' "${results[@]}" | sort -n | awk -v rss="$rss" '{a[NR]=$1} END {print "median: " a[int((NR+1)/2)] " req/s; server RSS after load: " rss}'
