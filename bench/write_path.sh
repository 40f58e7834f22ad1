#!/usr/bin/env bash
# The write path, side by side with tower-sessions on the same store: both servers up at once,
# ROUNDS rounds of one wrk load per system and operation in turn (the order reversed every other
# round), ratios taken per round, then the median. About 3 minutes.
#
#   bench/write_path.sh              the embedded store beside tower-sessions' SQLite store
#   STORE=redis bench/write_path.sh  Portcullis on Redis beside tower-sessions' Redis store, both
#                                    on a private redis-server started here (BENCH_REDIS_PORT)
# Needs the release build and the peer built by bench/run.sh (or built here when missing); prints
# a Markdown table.
# Env: STORE (sqlite) ROUNDS (4) DURATION (6s) CONNS (50) BENCH_REDIS_PORT (6391)
#      PC_BIN (a portcullis binary to measure instead of building this tree's; not PORTCULLIS_*,
#      which the server reads as its configuration)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-4} DURATION=${DURATION:-6s} CONNS=${CONNS:-50} STORE=${STORE:-sqlite}
BENCH_REDIS_PORT=${BENCH_REDIS_PORT:-6391}
case $STORE in sqlite|redis) ;; *) echo "STORE is sqlite or redis" >&2; exit 2 ;; esac
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
if [ -n "${PC_BIN:-}" ]; then
  PC=$PC_BIN
else
  cargo build -q --release --locked -p portcullis
  TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')
  PC=$TARGET/release/portcullis
fi
WORK=/var/tmp/portcullis-peers-work
if [ ! -x /var/tmp/peers-target/release/session ]; then
  mkdir -p "$WORK/axum-sessions"
  (cd ../shared/peers/axum-sessions && tar --exclude=target -cf - .) | (cd "$WORK/axum-sessions" && tar -xf -)
  cargo build -q --release --locked --manifest-path "$WORK/axum-sessions/Cargo.toml" --target-dir /var/tmp/peers-target
fi
OUT=$(mktemp -d)
PIDS=()
stop_redis() { [ "$STORE" = redis ] && redis-cli -p "$BENCH_REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true; }
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; stop_redis; rm -rf "$OUT"' EXIT

store_args=()
if [ "$STORE" = redis ]; then
  redis-server --port "$BENCH_REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --dir "$OUT" --logfile "$OUT/redis.log" --pidfile "$OUT/redis.pid"
  for _ in $(seq 50); do redis-cli -p "$BENCH_REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  store_args=(--store "redis://127.0.0.1:$BENCH_REDIS_PORT?prefix=pcwrite")
fi
dir=$OUT/pc && mkdir -p "$dir" && chmod 700 "$dir"
"$PC" "${store_args[@]}" --data-dir "$dir" apps add bench >/dev/null 2>&1
KEY=$("$PC" "${store_args[@]}" --data-dir "$dir" api-keys create --app bench 2>/dev/null)
"$PC" "${store_args[@]}" --data-dir "$dir" serve --listen 127.0.0.1:18191 --audit-log off 2>"$dir/server.log" &
PIDS+=($!)
if [ "$STORE" = redis ]; then
  STORE=redis PORT=3016 REDIS_URL="redis://127.0.0.1:$BENCH_REDIS_PORT" /var/tmp/peers-target/release/session >/dev/null 2>&1 &
else
  STORE=sqlite PORT=3016 SQLITE_PATH="$OUT/peer.sqlite3" /var/tmp/peers-target/release/session >/dev/null 2>&1 &
fi
PIDS+=($!)
for port in 18191 3016; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done
export KEY

rate() { # SYSTEM OPERATION -> requests per second of one load
  local sys=$1 op=$2 base script
  if [ "$sys" = portcullis-$STORE ]; then base=http://127.0.0.1:18191; export MODE=portcullis
  else base=http://127.0.0.1:3016; export MODE=peer; fi
  case $op in
    create) script=bench/lua/create.lua; [ "$MODE" = portcullis ] && base=$base/v1/sessions || base=$base/ ;;
    create+logout) export ACTION=logout; script=bench/lua/cycle.lua; base=$base/ ;;
    rotate) export ACTION=rotate; script=bench/lua/cycle.lua; base=$base/ ;;
  esac
  wrk -t2 -c"$CONNS" -d"$DURATION" -s "$script" "$base" | awk '/Requests\/sec/ { printf "%d", $2 }'
  unset ACTION
}

declare -A RATES
systems=(portcullis-$STORE tower-sessions-$STORE)
for round in $(seq "$ROUNDS"); do
  order=("${systems[@]}")
  [ $((round % 2)) = 0 ] && order=(tower-sessions-$STORE portcullis-$STORE)
  for op in create create+logout; do
    for sys in "${order[@]}"; do
      RATES[$sys,$op,$round]=$(rate "$sys" "$op")
    done
  done
  RATES[portcullis-$STORE,rotate,$round]=$(rate portcullis-$STORE rotate)
done

median() { python3 -c 'import statistics,sys; m = statistics.median(float(x) for x in sys.argv[1:]); print(round(m) if m > 100 else round(m, 2))' "$@"; }
echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); $(nproc) cores; wrk -t2 -c$CONNS -d$DURATION, $ROUNDS rounds; Portcullis ${PC_BIN:-$(git rev-parse --short HEAD)}"
echo
echo "| operation | system | req/s per round | median | ÷ tower-sessions per round | median ÷ |"
echo "|---|---|---|---:|---|---:|"
for op in create create+logout rotate; do
  for sys in "${systems[@]}"; do
    [ -z "${RATES[$sys,$op,1]:-}" ] && continue
    per=() ratios=()
    for round in $(seq "$ROUNDS"); do
      per+=("${RATES[$sys,$op,$round]}")
      if [ -n "${RATES[tower-sessions-$STORE,$op,$round]:-}" ] && [ "$sys" = portcullis-$STORE ]; then
        ratios+=("$(python3 -c "print(round(${RATES[$sys,$op,$round]} / ${RATES[tower-sessions-$STORE,$op,$round]}, 2))")")
      fi
    done
    ratio_cell="" ratio_median=""
    if [ ${#ratios[@]} -gt 0 ]; then ratio_cell=$(IFS=/; echo "${ratios[*]}"); ratio_median=$(median "${ratios[@]}"); fi
    echo "| $op | $sys | $(IFS=/; echo "${per[*]}") | $(median "${per[@]}") | $ratio_cell | $ratio_median |"
  done
done
