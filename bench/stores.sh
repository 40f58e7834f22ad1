#!/usr/bin/env bash
# Validation throughput on every store, side by side in one run, next to the HTTP ceiling
# (an axum route answering "ok", built from ../shared/peers/axum-sessions when present).
# Needs the services of .ci/run (PostgreSQL, Redis, the local Redis Cluster on 7100-7102).
# Usage: bench/stores.sh [DURATION] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10s} RUNS=${2:-3}
ID=$$
stores=(
  "sqlite (embedded)|"
  "postgres|postgres://postgres@127.0.0.1:5432/postgres?schema=pc_bench_$ID"
  "redis|redis://127.0.0.1:6379?prefix=pcbench:$ID"
  "redis cluster (3 primaries)|redis+cluster://127.0.0.1:7100,127.0.0.1:7101,127.0.0.1:7102?prefix=pcbench:$ID"
)
printf '| system | req/s per run | median req/s |\n|---|---|---:|\n'
PEERS=../shared/peers/axum-sessions
if [ -f "$PEERS/Cargo.toml" ]; then
  cargo build -q --release --locked --manifest-path "$PEERS/Cargo.toml" --target-dir /var/tmp/peers-target --bin hello
  /var/tmp/peers-target/release/hello >/dev/null 2>&1 &
  HELLO=$!
  sleep 0.5
  wrk -t2 -c50 -d3s http://127.0.0.1:3003/ >/dev/null
  runs=()
  for _ in $(seq "$RUNS"); do runs+=("$(wrk -t2 -c50 -d"$DURATION" http://127.0.0.1:3003/ | awk '/Requests\/sec/{print $2}')"); done
  kill $HELLO
  median=$(printf '%s\n' "${runs[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "| axum \"ok\" route (ceiling) | ${runs[*]} | $median |"
fi
for entry in "${stores[@]}"; do
  name=${entry%%|*} url=${entry#*|}
  out=$(STORE="$url" bash bench/validate.sh "$DURATION" "$RUNS" 2>&1)
  runs=$(grep -o 'run [0-9]*: [0-9.]*' <<<"$out" | awk '{print $3}' | tr '\n' ' ')
  median=$(awk '/median/{print $2}' <<<"$out")
  echo "| Portcullis validate, $name | $runs| $median |"
done
