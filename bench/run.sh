#!/usr/bin/env bash
# The benchmark harness: Portcullis on every store next to its peers, side by side in one run.
#
#   bench/run.sh            full run (under 20 minutes): validation, create/rotate/logout, memory,
#                           criterion in-process benches, scale; writes bench/results/<time>/
#   bench/run.sh --smoke    30-second smoke of the same paths (one peer, one store, 1 s runs)
#   bench/run.sh --write    full run, then BENCHMARKS.md and bench/throughput.svg are replaced
#
# Besides the peers, the embedded store is paired with the bare exchange (`exchange`, built here):
# its own validation request and answer with no work behind them.
#
# Traffic goes to 127.0.0.1 only; every load is bounded in time. Needs redis-server and the services
# of .ci/run (PostgreSQL, the local Redis Cluster on 7100-7102); Redis-backed systems share a private
# redis-server on 6390 started here; peers come from ../shared/peers,
# copied to a work directory and installed from the registries (npm ci, cargo build --locked).
# Env: DURATION (10s) WARMUP (2s) RUNS (3) OPS_RUNS (1, for create/rotate/logout) CONNS (50)
#      PAIRS (4) PAIR_DURATION (4s, for the paired ratio runs) SCALE_SIZES ("1000000").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SMOKE=0 WRITE=0
for arg in "$@"; do
  case $arg in
    --smoke) SMOKE=1 ;;
    --write) WRITE=1 ;;
    *) echo "usage: bench/run.sh [--smoke|--write]" >&2; exit 2 ;;
  esac
done
if [ $SMOKE = 1 ]; then
  DURATION=1s WARMUP=1s RUNS=1 CONNS=10 PAIRS=1 PAIR_DURATION=1s
fi
DURATION=${DURATION:-10s} WARMUP=${WARMUP:-2s} RUNS=${RUNS:-3} CONNS=${CONNS:-50} OPS_RUNS=${OPS_RUNS:-1}
PAIRS=${PAIRS:-4} PAIR_DURATION=${PAIR_DURATION:-4s}
OUT=$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
ROWS=$OUT/rows.tsv
: >"$ROWS"
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "host: $(nproc) cores, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)"
  echo "kernel: $(uname -r); rustc: $(rustc --version | awk '{print $2}'); node: $(node -v 2>/dev/null || echo none); redis: $(redis-server --version | awk '{print $3}'); postgres: $(psql --version | awk '{print $3}'); wrk: $(wrk -v 2>&1 | awk 'NR==1{print $2}')"
  echo "load: wrk -t2 -c$CONNS -d$DURATION --latency after a $WARMUP warm-up, $RUNS runs each, medians; loopback only"
  echo "pairs: $PAIRS alternating runs of -d$PAIR_DURATION for each target ratio, both systems up at once"
  echo "command: bench/run.sh $*"
} >"$OUT/env.txt"
cat "$OUT/env.txt"

wait_http() { for _ in $(seq 200); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "no answer from $1" >&2; return 1; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
rss_kb() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }

# wrk_run DURATION WRK-ARGS... : one run; prints wrk's output, then "rps p99-ms non-2xx" last.
wrk_run() {
  local duration=$1 out; shift
  out=$(wrk -t2 -c"$CONNS" -d"$duration" --latency "$@")
  echo "$out"
  awk '/Requests\/sec/ { r = $2 }
    $1 == "99%" { v = $2; if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 }; p = v }
    /^non2xx=/ { split($0, a, "="); n = a[2] }
    END { print r, p, n + 0 }' <<<"$out"
}

# measure SECTION SYSTEM PID WRK-ARGS... : warm-up, RUNS runs; one row with every run and the
# process's memory (RSS, KiB) at the end of the load.
measure() {
  local section=$1 system=$2 pid=$3 runs=$RUNS; shift 3
  [ "$section" = validate ] || runs=$OPS_RUNS
  wrk -t2 -c"$CONNS" -d"$WARMUP" "$@" >/dev/null 2>&1 || true
  local rps=() p99=() bad=0 out r p n
  for i in $(seq "$runs"); do
    out=$(wrk_run "$DURATION" "$@")
    echo "$out" | sed '$d' >"$OUT/$section.$system.run$i.txt"
    read -r r p n <<<"$(tail -n1 <<<"$out")"
    rps+=("$r") p99+=("$p") bad=$((bad + n))
  done
  local rss=""
  [ -n "$pid" ] && rss=$(rss_kb "$pid")
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$section" "$system" "${rps[*]}" "${p99[*]}" "$bad" "$rss" >>"$ROWS"
  printf '  %-40s %s req/s (p99 ms: %s) non-2xx %s\n' "$section / $system" "${rps[*]}" "${p99[*]}" "$bad"
}

# pair NAME-A NAME-B WRK-ARGS-A... -- WRK-ARGS-B... : a target ratio measured in PAIRS rounds,
# A and B in turn (which goes first alternates), both servers up, so the machine's drift
# between runs hits both alike. One row: A's req/s per round, B's, A's p99 per round.
pair() {
  local a=$1 b=$2 a_args=() b_args=(); shift 2
  while [ "$1" != -- ]; do a_args+=("$1"); shift; done
  shift
  b_args=("$@")
  wrk -t2 -c"$CONNS" -d"$WARMUP" "${a_args[@]}" >/dev/null 2>&1 || true
  wrk -t2 -c"$CONNS" -d"$WARMUP" "${b_args[@]}" >/dev/null 2>&1 || true
  local ra=() rb=() pa=() bad=0 r p n r2 p2 n2
  for i in $(seq "$PAIRS"); do
    if [ $((i % 2)) = 1 ]; then
      read -r r p n <<<"$(wrk_run "$PAIR_DURATION" "${a_args[@]}" | tail -n1)"
      read -r r2 p2 n2 <<<"$(wrk_run "$PAIR_DURATION" "${b_args[@]}" | tail -n1)"
    else
      read -r r2 p2 n2 <<<"$(wrk_run "$PAIR_DURATION" "${b_args[@]}" | tail -n1)"
      read -r r p n <<<"$(wrk_run "$PAIR_DURATION" "${a_args[@]}" | tail -n1)"
    fi
    ra+=("$r") rb+=("$r2") pa+=("$p") bad=$((bad + n + n2))
  done
  printf 'pair\t%s/%s\t%s\t%s\t%s\t%s\n' "$a" "$b" "${ra[*]}" "${rb[*]}" "${pa[*]}" "$bad" >>"$ROWS"
  printf '  %-40s %s vs %s req/s, non-2xx %s\n' "pair / $a vs $b" "${ra[*]}" "${rb[*]}" "$bad"
}

echo "== building Portcullis (release)"
cargo build -q --release -p portcullis -p portcullis-bench
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')
PC=$TARGET/release/portcullis

# --- peers --------------------------------------------------------------------------------
PEER_SRC=$ROOT/../shared/peers
WORK=/var/tmp/portcullis-peers-work
HAVE_PEERS=0
if [ -d "$PEER_SRC/axum-sessions" ]; then
  echo "== preparing peers (a copy of shared/peers in $WORK)"
  mkdir -p "$WORK"
  for dir in axum-sessions node-session; do
    mkdir -p "$WORK/$dir"
    (cd "$PEER_SRC/$dir" && tar --exclude=target --exclude=node_modules -cf - .) | (cd "$WORK/$dir" && tar -xf -)
  done
  cargo build -q --release --locked --manifest-path "$WORK/axum-sessions/Cargo.toml" --target-dir /var/tmp/peers-target
  if [ $SMOKE = 0 ]; then
    (cd "$WORK/node-session" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  fi
  HAVE_PEERS=1
fi
PEER_BIN=/var/tmp/peers-target/release

start_peer() { # NAME -> sets PEER_PID, PEER_PORT
  case $1 in
    hello) PEER_PORT=3003; PORT=3003 "$PEER_BIN/hello" >/dev/null 2>&1 & ;;
    axum-memory) PEER_PORT=3005; STORE=memory PORT=3005 "$PEER_BIN/session" >/dev/null 2>&1 & ;;
    axum-redis) PEER_PORT=3002; STORE=redis PORT=3002 "$PEER_BIN/session" >/dev/null 2>&1 & ;;
    axum-sqlite) PEER_PORT=3006; rm -f "$OUT/peer.sqlite3"*; STORE=sqlite PORT=3006 SQLITE_PATH="$OUT/peer.sqlite3" "$PEER_BIN/session" >/dev/null 2>&1 & ;;
    express) PEER_PORT=3001; PORT=3001 node "$WORK/node-session/server.js" >/dev/null 2>&1 & ;;
    # Ours, not a peer: Portcullis's own request and answer with no work behind them.
    exchange) PEER_PORT=3010; "$TARGET/release/exchange" --port 3010 --answer "$OUT/answer.json" >/dev/null 2>&1 & ;;
  esac
  PEER_PID=$!
  PIDS+=("$PEER_PID")
  wait_port "$PEER_PORT"
  sleep 0.3
}

peer_cookie() {
  curl -fsS -D - -o /dev/null -X POST -H 'content-type: application/json' -d '{"user_id":"bench-user"}' \
    "http://127.0.0.1:$1/login" | tr -d '\r' | awk 'tolower($1) == "set-cookie:" { split($2, a, ";"); print a[1]; exit }'
}

# A private Redis for the peers and Portcullis alike (same server, no persistence), stopped at
# the end, so the machine's Redis keeps nothing of the run.
BENCH_REDIS_PORT=6390
redis-server --port $BENCH_REDIS_PORT --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --pidfile "$OUT/redis.pid" --logfile "$OUT/redis.log" --dir "$OUT"
wait_port $BENCH_REDIS_PORT
export REDIS_URL=redis://127.0.0.1:$BENCH_REDIS_PORT
ID=$$
cleanup_stores() {
  redis-cli -p $BENCH_REDIS_PORT shutdown nosave >/dev/null 2>&1 || true
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP SCHEMA IF EXISTS pc_bench_$ID CASCADE" >/dev/null 2>&1 || true
}
trap 'cleanup; cleanup_stores' EXIT

# --- Portcullis ---------------------------------------------------------------------------
declare -A STORES=(
  [sqlite]=""
  [redis]="redis://127.0.0.1:$BENCH_REDIS_PORT?prefix=pcbench:$ID"
  [postgres]="postgres://postgres@127.0.0.1:5432/postgres?schema=pc_bench_$ID"
  [redis-cluster]="redis+cluster://127.0.0.1:7100,127.0.0.1:7101,127.0.0.1:7102?prefix=pcbench:$ID"
)
start_pc() { # STORE-NAME -> sets PC_PID, PC_BASE, KEY, TOKEN, PC_IDLE_KB
  local url=${STORES[$1]} dir=$OUT/pc-$1 port=18180
  local store_args=()
  [ -n "$url" ] && store_args=(--store "$url")
  mkdir -p "$dir" && chmod 700 "$dir"   # the server refuses a data directory others can enter
  "$PC" "${store_args[@]}" --data-dir "$dir" apps add bench >/dev/null 2>&1
  KEY=$("$PC" "${store_args[@]}" --data-dir "$dir" api-keys create --app bench 2>/dev/null)
  "$PC" "${store_args[@]}" --data-dir "$dir" serve --listen 127.0.0.1:$port --audit-log off 2>"$dir/server.log" &
  PC_PID=$!
  PIDS+=("$PC_PID")
  PC_BASE=http://127.0.0.1:$port
  wait_http "$PC_BASE/healthz"
  sleep 0.5
  PC_IDLE_KB=$(rss_kb "$PC_PID")
  TOKEN=$(curl -fsS "$PC_BASE/v1/sessions" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    -d '{"subject":"bench","data":{"cart":[1,2,3]}}' | python3 -c 'import json,sys;print(json.load(sys.stdin)["token"])')
  export KEY TOKEN
}

if [ $SMOKE = 1 ]; then
  PEERS_LIST=(hello) PC_LIST=(sqlite)
else
  PEERS_LIST=(hello express axum-redis axum-memory axum-sqlite) PC_LIST=(sqlite redis postgres redis-cluster)
fi

echo "== 1. validation over HTTP (one pre-created session, $CONNS connections)"
if [ $HAVE_PEERS = 1 ]; then
  for peer in "${PEERS_LIST[@]}"; do
    start_peer "$peer"
    if [ "$peer" = hello ]; then
      measure validate "$peer" "$PEER_PID" "http://127.0.0.1:$PEER_PORT/"
    else
      cookie=$(peer_cookie "$PEER_PORT")
      measure validate "$peer" "$PEER_PID" -H "Cookie: $cookie" "http://127.0.0.1:$PEER_PORT/me"
    fi
    kill "$PEER_PID"; wait "$PEER_PID" 2>/dev/null || true
  done
fi
for store in "${PC_LIST[@]}"; do
  start_pc "$store"
  printf 'memory\tportcullis-%s\t\t\t\t%s\n' "$store" "$PC_IDLE_KB" >>"$ROWS"
  measure validate "portcullis-$store" "$PC_PID" -s bench/lua/validate.lua "$PC_BASE/v1/sessions/validate"
  # The target ratios again, measured in pairs: the embedded store against the ceiling, the
  # Redis store against tower-sessions on the same Redis. And the embedded store against the bare
  # exchange (its own request and answer, no work), which shows what of the gap is the wire's.
  partners=()
  [ "$store" = sqlite ] && partners=(exchange)
  [ "$store" = sqlite ] && [ $HAVE_PEERS = 1 ] && partners=(hello exchange)
  [ "$store" = redis ] && [ $SMOKE = 0 ] && [ $HAVE_PEERS = 1 ] && partners=(axum-redis)
  for partner in "${partners[@]}"; do
    case $partner in
      exchange)
        curl -fsS "$PC_BASE/v1/sessions/validate" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
          -d "{\"token\":\"$TOKEN\"}" -o "$OUT/answer.json"
        start_peer exchange
        partner_args=(-s bench/lua/validate.lua "http://127.0.0.1:$PEER_PORT/v1/sessions/validate") ;;
      hello) start_peer hello; partner_args=("http://127.0.0.1:$PEER_PORT/") ;;
      *) start_peer "$partner"; partner_args=(-H "Cookie: $(peer_cookie "$PEER_PORT")" "http://127.0.0.1:$PEER_PORT/me") ;;
    esac
    pair "portcullis-$store" "$partner" -s bench/lua/validate.lua "$PC_BASE/v1/sessions/validate" -- "${partner_args[@]}"
    kill "$PEER_PID"; wait "$PEER_PID" 2>/dev/null || true
  done
  echo "== 2. create / rotate / logout: portcullis-$store"
  measure create "portcullis-$store" "$PC_PID" -s bench/lua/create.lua "$PC_BASE/v1/sessions"
  export ACTION=rotate
  measure rotate "portcullis-$store" "$PC_PID" -s bench/lua/cycle.lua "$PC_BASE/"
  export ACTION=logout
  measure create+logout "portcullis-$store" "$PC_PID" -s bench/lua/cycle.lua "$PC_BASE/"
  unset ACTION
  kill "$PC_PID"; wait "$PC_PID" 2>/dev/null || true
done
if [ $HAVE_PEERS = 1 ] && [ $SMOKE = 0 ]; then
  export MODE=peer
  for peer in express axum-redis axum-memory axum-sqlite; do
    echo "== 2. create / logout: $peer"
    start_peer "$peer"
    measure create "$peer" "$PEER_PID" -s bench/lua/create.lua "http://127.0.0.1:$PEER_PORT/"
    export ACTION=logout
    measure create+logout "$peer" "$PEER_PID" -s bench/lua/cycle.lua "http://127.0.0.1:$PEER_PORT/"
    unset ACTION
    kill "$PEER_PID"; wait "$PEER_PID" 2>/dev/null || true
  done
  unset MODE
fi

if [ $SMOKE = 0 ]; then
  echo "== 3. in-process cost (criterion)"
  cargo bench -q -p portcullis-bench --bench engine -- --warm-up-time 1 --measurement-time 2 >"$OUT/criterion.txt" 2>&1
  python3 bench/report.py criterion "$TARGET/criterion" >>"$ROWS"
  echo "== 4. scale"
  # The peers' loads above left their sessions (hundreds of thousands of keys) in this Redis. Redis
  # doubles its key table when the key count crosses a power of two, so whether the scale load's keys
  # cross one depended on the peers' throughput: 371 and 413 B per session in two runs of the same
  # build. Bytes per session are measured on a Redis that holds Portcullis's sessions alone.
  redis-cli -p $BENCH_REDIS_PORT flushall >/dev/null
  for size in ${SCALE_SIZES:-1000000}; do
    "$TARGET/release/scale" --sessions "$size" --dir "$OUT/scale" --redis "$REDIS_URL" --prefix pc >>"$ROWS"
  done
else
  "$TARGET/release/scale" --sessions 10000 --dir "$OUT/scale" --redis "$REDIS_URL" --prefix pc >>"$ROWS"
fi

echo "elapsed: $((SECONDS / 60)) min $((SECONDS % 60)) s (build, peers, loads, criterion, scale)" >>"$OUT/env.txt"
python3 bench/report.py report "$OUT" >"$OUT/report.md"
cat "$OUT/report.md"
if [ $WRITE = 1 ]; then
  cp "$OUT/report.md" BENCHMARKS.md
  cp "$OUT/throughput.svg" bench/throughput.svg
  echo "BENCHMARKS.md and bench/throughput.svg written"
fi
