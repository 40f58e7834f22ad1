#!/usr/bin/env bash
# Password sign-in beside raw Argon2id on the same cores: ROUNDS rounds of one wrk load of
# `POST /login` (a right password, the embedded store, every sign-in hashing once) and one run of
# `hash_rate` (the same function and parameters on as many threads as the server hashes at once),
# the ratio taken per round, then the median. About 1 minute with the defaults.
#
#   bench/signin.sh      prints a Markdown table
# Env: ROUNDS (3) DURATION (10, seconds) CONNS (4: the server hashes on every core and queues 8
#      per core; more connections only wait) USERS (16)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-10} CONNS=${CONNS:-4} USERS=${USERS:-16}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build -q --release --locked -p portcullis -p portcullis-bench
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')
PC=$TARGET/release/portcullis
OUT=$(mktemp -d)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$OUT"' EXIT

dir=$OUT/pc && mkdir -p "$dir" && chmod 700 "$dir"
"$PC" --data-dir "$dir" serve --listen 127.0.0.1:18192 --audit-log off 2>"$dir/server.log" &
PIDS+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/18192) 2>/dev/null && break; sleep 0.1; done
export PASSWORD="correct horse battery staple" USERS
for i in $(seq "$USERS"); do
  echo "$PASSWORD" | "$PC" --data-dir "$dir" users add "bench$i" 2>/dev/null
done
# Any value the form and the cookie agree on passes the double-submit check.
CSRF=$(head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
export CSRF
status=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Cookie: __Host-portcullis-csrf=$CSRF" \
  --data-urlencode "csrf=$CSRF" --data-urlencode "return_to=/" --data-urlencode "username=bench1" \
  --data-urlencode "password=$PASSWORD" http://127.0.0.1:18192/login)
[ "$status" = 303 ] || { echo "a sign-in answered $status, not 303 (see $dir/server.log)" >&2; exit 1; }

signins=() raw=() ratios=() non2xx=0
for round in $(seq "$ROUNDS"); do
  out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" -s bench/lua/signin.lua http://127.0.0.1:18192/)
  rate=$(awk '/Requests\/sec/ { print $2 }' <<<"$out")
  non2xx=$((non2xx + $(awk -F= '/^non2xx=/ { print $2 }' <<<"$out")))
  ceiling=$("$TARGET/release/hash_rate" --seconds "$DURATION" | awk -F= '{ print $2 }')
  signins+=("$rate") raw+=("$ceiling")
  ratios+=("$(python3 -c "print(round($rate / $ceiling, 3))")")
done
median() { python3 -c 'import statistics,sys; print(round(statistics.median(float(x) for x in sys.argv[1:]), 3))' "$@"; }
echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); $(nproc) cores; wrk -t2 -c$CONNS -d${DURATION}s, $ROUNDS rounds; $USERS accounts; Portcullis $(git rev-parse --short HEAD)"
echo
echo "| measure | per round | median |"
echo "|---|---|---:|"
echo "| password sign-ins/s (\`POST /login\`, embedded store) | $(IFS=/; echo "${signins[*]}") | $(median "${signins[@]}") |"
echo "| raw Argon2id checks/s (\`hash_rate\`, $(nproc) threads) | $(IFS=/; echo "${raw[*]}") | $(median "${raw[@]}") |"
echo "| sign-ins ÷ raw | $(IFS=/; echo "${ratios[*]}") | $(median "${ratios[@]}") |"
echo
echo "non-2xx answers to sign-ins: $non2xx"
