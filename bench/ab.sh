#!/usr/bin/env bash
# A/B two builds of Portcullis on one store, interleaved so the machine's drift hits both alike:
#
#   bench/ab.sh OLD-BINARY NEW-BINARY [sqlite|redis] [ROUNDS]
#
# Each round starts each binary (in alternating order) on a fresh data directory (and, for redis, a fresh key prefix on
# the private redis-server this script starts on 6393), creates one session and measures
# POST /v1/sessions/validate with wrk (-t2 -c50, 2 s warm-up, DURATION=5s). Prints every round
# and the medians. Loopback only.
set -euo pipefail
OLD=$1 NEW=$2 STORE=${3:-sqlite} ROUNDS=${4:-3}
DURATION=${DURATION:-5s}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/portcullis-ab.XXXXXX)
PORT=18190 REDIS_PORT=6393
cleanup() {
  [ "$STORE" = redis ] && redis-cli -p $REDIS_PORT shutdown nosave >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT
if [ "$STORE" = redis ]; then
  redis-server --port $REDIS_PORT --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --logfile "$WORK/redis.log" --dir "$WORK"
  sleep 0.3
fi

# one BINARY LABEL -> prints "req/s p99-ms"
one() {
  local bin=$1 dir args=()
  dir=$(mktemp -d "$WORK/pc.XXXX")
  [ "$STORE" = redis ] && args=(--store "redis://127.0.0.1:$REDIS_PORT?prefix=ab${RANDOM}")
  # Builds from before applications have no `apps` and no `--app`.
  if "$bin" "${args[@]}" --data-dir "$dir" apps add ab >/dev/null 2>&1; then
    KEY=$("$bin" "${args[@]}" --data-dir "$dir" api-keys create --app ab 2>/dev/null)
  else
    KEY=$("$bin" "${args[@]}" --data-dir "$dir" api-keys create --name ab 2>/dev/null)
  fi
  "$bin" "${args[@]}" --data-dir "$dir" serve --listen 127.0.0.1:$PORT --audit-log off 2>"$dir/log" &
  local pid=$!
  for _ in $(seq 200); do curl -fs http://127.0.0.1:$PORT/healthz >/dev/null 2>&1 && break; sleep 0.05; done
  TOKEN=$(curl -fsS http://127.0.0.1:$PORT/v1/sessions -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/json' -d '{"subject":"bench","data":{"cart":[1,2,3]}}' |
    python3 -c 'import json,sys;print(json.load(sys.stdin)["token"])')
  export KEY TOKEN
  local url=http://127.0.0.1:$PORT/v1/sessions/validate
  wrk -t2 -c50 -d2s -s "$ROOT/bench/lua/validate.lua" "$url" >/dev/null
  wrk -t2 -c50 -d"$DURATION" --latency -s "$ROOT/bench/lua/validate.lua" "$url" | awk '
    /Requests\/sec/ { r = $2 }
    $1 == "99%" { v = $2; if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else { sub(/s$/, "", v); v *= 1000 }; p = v }
    END { printf "%.0f %.2f\n", r, p }'
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

printf '%-6s %12s %10s %12s %10s\n' round "old req/s" "old p99" "new req/s" "new p99"
OLD_RPS=() NEW_RPS=()
for round in $(seq "$ROUNDS"); do
  # Alternate which build goes first, so a machine slowing within a round favours neither.
  if [ $((round % 2)) = 1 ]; then
    read -r o op < <(one "$OLD")
    read -r n np < <(one "$NEW")
  else
    read -r n np < <(one "$NEW")
    read -r o op < <(one "$OLD")
  fi
  OLD_RPS+=("$o") NEW_RPS+=("$n")
  printf '%-6s %12s %10s %12s %10s\n' "$round" "$o" "$op" "$n" "$np"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
mo=$(median "${OLD_RPS[@]}") mn=$(median "${NEW_RPS[@]}")
echo "store $STORE: median old $mo req/s, new $mn req/s, new/old $(python3 -c "print(round($mn/$mo, 2))")"
