#!/usr/bin/env bash
# The benchmark harness: Portcullis on every store next to its peers, side by side in one run.
#
#   bench/run.sh            full run (under 20 minutes): validation, create/rotate/logout, memory,
#                           criterion in-process benches, scale; writes bench/results/<time>/
#   bench/run.sh --smoke    short smoke of the same paths (one peer, one store, 1 s runs; one short
#                           OpenID Connect pass, about a minute)
#   bench/run.sh --write    full run, then BENCHMARKS.md and bench/throughput.svg are replaced
#   bench/run.sh --oidc     the OpenID Connect section alone (about 8 minutes): refresh grant, code
#                           exchange and authorization from a live SSO session, Portcullis on SQLite
#                           and on Redis next to node-oidc-provider (../shared/peers/oidc), ES256
#                           for both; with --smoke, a short pass of it
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
#      BENCH_REDIS_PORT (6390): the private Redis's port.
#      OIDC_ROUNDS (PAIRS) OIDC_DURATION (PAIR_DURATION): the OpenID Connect section's rounds, each
#      one run per system and operation in turn; OIDC_PEOPLE (100; smoke 4): people signed in on
#      each system, whose SSO sessions the authorization loads take in turn; OIDC_ROTATING_PEER (1;
#      smoke 0): also measure the refresh grant on a copy of the peer that rotates refresh tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SMOKE=0 WRITE=0 OIDC_ONLY=0
for arg in "$@"; do
  case $arg in
    --smoke) SMOKE=1 ;;
    --write) WRITE=1 ;;
    --oidc) OIDC_ONLY=1 ;;
    *) echo "usage: bench/run.sh [--smoke|--write|--oidc]" >&2; exit 2 ;;
  esac
done
if [ $SMOKE = 1 ]; then
  DURATION=1s WARMUP=1s RUNS=1 CONNS=10 PAIRS=1 PAIR_DURATION=1s
fi
DURATION=${DURATION:-10s} WARMUP=${WARMUP:-2s} RUNS=${RUNS:-3} CONNS=${CONNS:-50} OPS_RUNS=${OPS_RUNS:-1}
PAIRS=${PAIRS:-4} PAIR_DURATION=${PAIR_DURATION:-4s}
if [ $SMOKE = 1 ]; then
  OIDC_ROUNDS=${OIDC_ROUNDS:-1} OIDC_ROTATING_PEER=${OIDC_ROTATING_PEER:-0} OIDC_PEOPLE=${OIDC_PEOPLE:-4}
fi
OIDC_ROUNDS=${OIDC_ROUNDS:-$PAIRS} OIDC_DURATION=${OIDC_DURATION:-$PAIR_DURATION}
OIDC_ROTATING_PEER=${OIDC_ROTATING_PEER:-1} OIDC_PEOPLE=${OIDC_PEOPLE:-100}
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
  echo "oidc: $OIDC_ROUNDS rounds after a warm-up round, each one wrk -t2 -c$CONNS -d$OIDC_DURATION run per system and operation in turn (the order reversed every other round), every system up at once; $OIDC_PEOPLE people signed in on each"
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
if [ $OIDC_ONLY = 1 ]; then
  cargo build -q --release --locked -p portcullis
else
  cargo build -q --release --locked -p portcullis -p portcullis-bench
fi
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')
PC=$TARGET/release/portcullis

# --- peers --------------------------------------------------------------------------------
PEER_SRC=$ROOT/../shared/peers
WORK=/var/tmp/portcullis-peers-work
HAVE_PEERS=0
if [ -d "$PEER_SRC/axum-sessions" ] && [ $OIDC_ONLY = 0 ]; then
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
BENCH_REDIS_PORT=${BENCH_REDIS_PORT:-6390}
redis-server --port $BENCH_REDIS_PORT --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --pidfile "$OUT/redis.pid" --logfile "$OUT/redis.log" --dir "$OUT"
wait_port $BENCH_REDIS_PORT
# Redis writes its pidfile once it listens: without it the port is someone else's Redis.
for _ in $(seq 50); do [ -s "$OUT/redis.pid" ] && break; sleep 0.1; done
[ -s "$OUT/redis.pid" ] || { echo "redis-server could not listen on $BENCH_REDIS_PORT (see $OUT/redis.log); set BENCH_REDIS_PORT" >&2; exit 1; }
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

if [ $OIDC_ONLY = 1 ]; then
  PEERS_LIST=() PC_LIST=()
elif [ $SMOKE = 1 ]; then
  PEERS_LIST=(hello) PC_LIST=(sqlite)
else
  PEERS_LIST=(hello express axum-redis axum-memory axum-sqlite) PC_LIST=(sqlite redis postgres redis-cluster)
fi

[ $OIDC_ONLY = 0 ] && echo "== 1. validation over HTTP (one pre-created session, $CONNS connections)"
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
if [ $HAVE_PEERS = 1 ] && [ $SMOKE = 0 ] && [ $OIDC_ONLY = 0 ]; then
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

# --- 6. OpenID Connect --------------------------------------------------------------------
# Portcullis on SQLite and on Redis next to node-oidc-provider 9 (../shared/peers/oidc: its Redis
# adapter, on this run's private Redis), every system up at once, ID tokens signed with ES256 on
# both sides (the peer: ID_TOKEN_ALG=ES256; Portcullis signs its JWT access tokens with the same
# key). Each round runs, per operation, one load on each system in turn (the order reversed every
# other round), so the machine's drift hits all alike; round 0 is a warm-up of WARMUP, not reported.
# Rows go to $OUT/oidc.tsv (op, system, round, req/s, p99 ms, non-2xx, the script's own counts):
#   refresh       the refresh grant: CONNS + 8 fresh refresh tokens per run, each its own family
#                 (bench/oidc_prep.py); every token is presented once and its successor next
#                 (bench/lua/oidc_refresh.lua), so a rotation is measured, never the retry grace.
#   authorize     GET of the authorization request (scope openid, PKCE) with the SSO cookie of one
#                 of OIDC_PEOPLE people, each signed in once through the pages, in turn -> 303 to the
#                 client with a code. (One person's SSO session answering them all would make every
#                 exchange a session of the same person: see bench/oidc_analysis.md.)
#   code          the exchange of the codes that authorize run just collected (each fresh, used once;
#                 topped up by unmeasured authorize loads when too few); access + ID token, no
#                 refresh token on either side: Portcullis's client `bench-code` has the
#                 authorization_code grant alone, the peer issues one only for offline_access.
#   code+refresh  Portcullis alone, client `bench` (both grants): the exchange also starts a refresh
#                 family (the peer's equivalent needs its consent interaction for every code).
# OIDC_ROTATING_PEER=1 adds oidc-rotating: a copy of the peer with rotateRefreshToken: true (the
# shared peer rotates only public clients' tokens), for the refresh grant only.
OIDC_VERIFIER=portcullis-bench-pkce-verifier-0123456789abcdefghijklmnop   # as in bench/oidc_prep.py
declare -A OIDC_PID OIDC_BASE OIDC_KIND OIDC_TOKEN_PATH OIDC_CLIENT OIDC_SECRET OIDC_PEOPLE_FILE OIDC_RATE

oidc_start_pc() { # STORE PORT : Portcullis on STORE as system portcullis-STORE
  local store=$1 port=$2 sys=portcullis-$1 dir=$OUT/oidc/pc-$1 pw client secret c
  local args=(--data-dir "$dir" --config "$dir/portcullis.toml")
  [ "$store" = redis ] && args+=(--store "redis://127.0.0.1:$BENCH_REDIS_PORT?prefix=pcoidc:$ID")
  mkdir -p "$dir" && chmod 700 "$dir"   # the server refuses a data directory others can enter
  printf 'issuer = "http://127.0.0.1:%s"\nencryption_keys = "k1:%s"\n' "$port" "$(head -c32 /dev/urandom | base64)" \
    >"$dir/portcullis.toml"
  "$PC" "${args[@]}" apps add bench >/dev/null 2>&1
  "$PC" "${args[@]}" apps client bench --redirect-uri http://127.0.0.1:8080/cb >"$dir/client.json" 2>"$dir/client.err"
  "$PC" "${args[@]}" apps add bench-code >/dev/null 2>&1
  "$PC" "${args[@]}" apps client bench-code --redirect-uri http://127.0.0.1:8080/cb --grant-type authorization_code \
    >"$dir/client-code.json" 2>"$dir/client-code.err"
  pw=$(head -c24 /dev/urandom | base64 | tr '+/' 'xy')
  : >"$dir/people"
  for i in $(seq "$OIDC_PEOPLE"); do
    printf '%s\n%s\n' "$pw" "$pw" | "$PC" "${args[@]}" users add "person-$i" >>"$dir/users.log" 2>&1
    echo "person-$i $pw" >>"$dir/people"
  done
  "$PC" "${args[@]}" serve --listen "127.0.0.1:$port" --audit-log off 2>"$dir/server.log" &
  OIDC_PID[$sys]=$!
  PIDS+=("${OIDC_PID[$sys]}")
  OIDC_BASE[$sys]=http://127.0.0.1:$port OIDC_KIND[$sys]=portcullis OIDC_TOKEN_PATH[$sys]=/oidc/token
  OIDC_PEOPLE_FILE[$sys]=$dir/people
  wait_http "${OIDC_BASE[$sys]}/healthz"
  for c in "" -code; do
    client=$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["client"]["client_id"])' "$dir/client$c.json")
    secret=$(sed -n 's/.*shown only now: //p' "$dir/client$c.err")
    [ -n "$secret" ] || { echo "no client secret for bench$c:" >&2; cat "$dir/client$c.err" >&2; return 1; }
    OIDC_CLIENT[$sys$c]=$client OIDC_SECRET[$sys$c]=$secret
  done
}

oidc_start_peer() { # SYSTEM PORT SCRIPT : node-oidc-provider (a script in $WORK/oidc)
  local sys=$1 port=$2 script=$3
  (cd "$WORK/oidc" && PORT=$port ID_TOKEN_ALG=ES256 REDIS_URL=$REDIS_URL exec node "$script") >"$OUT/oidc/$sys.log" 2>&1 &
  OIDC_PID[$sys]=$!
  PIDS+=("${OIDC_PID[$sys]}")
  OIDC_BASE[$sys]=http://127.0.0.1:$port OIDC_KIND[$sys]=peer OIDC_TOKEN_PATH[$sys]=/token
  OIDC_CLIENT[$sys]=portcullis-bench OIDC_SECRET[$sys]=portcullis-bench-secret-0123456789abcdef  # oidc/client.js
  OIDC_CLIENT[$sys-code]=${OIDC_CLIENT[$sys]} OIDC_SECRET[$sys-code]=${OIDC_SECRET[$sys]}
  OIDC_PEOPLE_FILE[$sys]=$OUT/oidc/$sys.people   # dev interactions: any name, any password
  for i in $(seq "$OIDC_PEOPLE"); do echo "person-$i any"; done >"${OIDC_PEOPLE_FILE[$sys]}"
  wait_http "${OIDC_BASE[$sys]}/.well-known/openid-configuration"
}

oidc_prep() { # COMMAND SYSTEM ARGS... : bench/oidc_prep.py against SYSTEM (its client `bench`)
  local cmd=$1 sys=$2; shift 2
  python3 bench/oidc_prep.py "$cmd" --system "${OIDC_KIND[$sys]}" --base "${OIDC_BASE[$sys]}" \
    --client-id "${OIDC_CLIENT[$sys]}" --secret "${OIDC_SECRET[$sys]}" --cookie-file "$OUT/oidc/$sys.cookie" "$@"
}
oidc_basic() { # CLIENT-KEY : the Basic credentials of OIDC_CLIENT[key]
  python3 -c 'import sys;sys.path.insert(0,"bench");import oidc_prep as p;print(p.basic(sys.argv[1],sys.argv[2]))' \
    "${OIDC_CLIENT[$1]}" "${OIDC_SECRET[$1]}"
}

# oidc_load NAME SYSTEM DURATION WRK-ARGS... : one wrk run against SYSTEM; sets LOAD_RPS LOAD_P99
# LOAD_BAD (non-2xx) LOAD_EXTRA (the script's own counts); the output is kept as NAME.txt.
oidc_load() {
  local name=$1 sys=$2 duration=$3 out; shift 3
  out=$(WRK_THREADS=2 wrk_run "$duration" "$@" "${OIDC_BASE[$sys]}/")
  echo "$out" | sed '$d' >"$OUT/oidc/$name.txt"
  read -r LOAD_RPS LOAD_P99 LOAD_BAD <<<"$(tail -n1 <<<"$out")"
  LOAD_EXTRA=$(grep -E '^(rotated|codes|exhausted)=' <<<"$out" | tr '\n' ' ' | sed 's/ $//' || true)
}
# oidc_row OP SYSTEM ROUND : the last load as a row (not for the warm-up round) and a line.
oidc_row() {
  [ "$3" != 0 ] && printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$LOAD_RPS" "$LOAD_P99" "$LOAD_BAD" "$LOAD_EXTRA" >>"$OUT/oidc.tsv"
  printf '  %-40s %10s req/s  p99 %8s ms  non-2xx %s  %s\n' "$1 / $2$([ "$3" = 0 ] && echo ' (warm-up)')" \
    "$LOAD_RPS" "$LOAD_P99" "$LOAD_BAD" "$LOAD_EXTRA"
}
whole_seconds() { local d=${1%s}; echo "${d%.*}"; }

# oidc_codes SYSTEM CLIENT-SUFFIX DURATION NAME FOR : an authorize load of DURATION that keeps its
# codes in $OUT/oidc/codes, then unmeasured authorize loads until there are enough for an exchange
# load of FOR at 1.5 times the exchange rate last measured (OIDC_RATE[SYSTEM+SUFFIX]).
oidc_codes() {
  local sys=$1 c=$2 duration=$3 name=$4 for=$5 have need rate auth cookies=$OUT/oidc/$sys.cookie
  auth=$(python3 bench/oidc_prep.py authorize-path --system "${OIDC_KIND[$sys]}" --client-id "${OIDC_CLIENT[$sys$c]}")
  AUTH_PATH=$auth COOKIES=$cookies CODES_OUT=$OUT/oidc/codes oidc_load "$name" "$sys" "$duration" -s bench/lua/oidc_authorize.lua
  local rps=$LOAD_RPS p99=$LOAD_P99 bad=$LOAD_BAD extra=$LOAD_EXTRA
  need=$(( ${OIDC_RATE[$sys$c]:-0} * $(whole_seconds "$for") * 3 / 2 + 200 ))
  have=$(wc -l <"$OUT/oidc/codes")
  rate=${rps%.*}
  while [ "$have" -lt "$need" ] && [ "$rate" -gt 0 ]; do
    AUTH_PATH=$auth COOKIES=$cookies CODES_OUT=$OUT/oidc/codes.more \
      oidc_load "collect.$sys" "$sys" "$(( (need - have) / rate + 1 ))s" -s bench/lua/oidc_authorize.lua
    cat "$OUT/oidc/codes.more" >>"$OUT/oidc/codes"
    have=$(wc -l <"$OUT/oidc/codes")
  done
  LOAD_RPS=$rps LOAD_P99=$p99 LOAD_BAD=$bad LOAD_EXTRA=$extra   # the authorize load's, for its row
}

# oidc_exchange OP SYSTEM CLIENT-SUFFIX ROUND DURATION : the code exchange of $OUT/oidc/codes. When
# the codes ran out (exhausted=), the rate assumed is doubled, codes are collected again and the run
# is made again (twice at most).
oidc_exchange() {
  local op=$1 sys=$2 c=$3 round=$4 duration=$5 try exhausted rate
  for try in 1 2 3; do
    CODES=$OUT/oidc/codes VERIFIER=$OIDC_VERIFIER TOKEN_PATH=${OIDC_TOKEN_PATH[$sys]} CLIENT_BASIC=$(oidc_basic "$sys$c") \
      oidc_load "$op.$sys.round$round" "$sys" "$duration" -s bench/lua/oidc_code.lua
    exhausted=$(sed -n 's/.*exhausted=\([0-9]*\).*/\1/p' <<<"$LOAD_EXTRA")
    rate=${LOAD_RPS%.*}
    if [ "${exhausted:-0}" = 0 ]; then
      OIDC_RATE[$sys$c]=$rate
      break
    fi
    OIDC_RATE[$sys$c]=$(( (rate > ${OIDC_RATE[$sys$c]:-0} ? rate : ${OIDC_RATE[$sys$c]:-0}) * 2 + 200 ))
    [ $try = 3 ] && break   # still too few codes: kept, with its errors counted
    echo "  $op / $sys: the codes ran out ($LOAD_EXTRA); collecting more and running again"
    oidc_codes "$sys" "$c" 1s "collect.$sys" "$duration"
  done
  oidc_row "$op" "$sys" "$round"
}

if [ -d "$PEER_SRC/oidc" ]; then
  echo "== 6. OpenID Connect (Portcullis on SQLite and Redis, node-oidc-provider; ES256)"
  mkdir -p "$OUT/oidc" "$WORK/oidc"
  : >"$OUT/oidc.tsv"
  # The peer: a copy of shared/peers/oidc, installed from its lockfile (npm ci) when that changed.
  (cd "$PEER_SRC/oidc" && tar --exclude=node_modules -cf - .) | (cd "$WORK/oidc" && tar -xf -)
  chmod -R u+w "$WORK/oidc"
  if ! cmp -s "$WORK/oidc/package-lock.json" "$WORK/oidc/node_modules/.bench-lock.json"; then
    (cd "$WORK/oidc" && npm ci --no-audit --no-fund --loglevel=error >/dev/null \
      && cp package-lock.json node_modules/.bench-lock.json)
  fi
  OIDC_SYSTEMS=(portcullis-sqlite portcullis-redis oidc)
  oidc_start_pc sqlite 18280
  oidc_start_pc redis 18281
  oidc_start_peer oidc 3004 provider.js
  OIDC_REFRESH_SYSTEMS=("${OIDC_SYSTEMS[@]}")
  if [ "$OIDC_ROTATING_PEER" = 1 ]; then
    # The one change to the peer: rotate every refresh token, as Portcullis does.
    sed 's/^  pkce: {/  rotateRefreshToken: true, \/\/ bench\/run.sh: rotate every refresh token\n  pkce: {/' \
      "$WORK/oidc/provider.js" >"$WORK/oidc/provider-rotating.js"
    grep -q 'rotateRefreshToken: true' "$WORK/oidc/provider-rotating.js"
    oidc_start_peer oidc-rotating 3008 provider-rotating.js
    OIDC_REFRESH_SYSTEMS+=(oidc-rotating)
  fi
  for sys in "${OIDC_REFRESH_SYSTEMS[@]}"; do
    alg=$(oidc_prep signin "$sys" --users "${OIDC_PEOPLE_FILE[$sys]}" 2>>"$OUT/oidc/prep.log")
    check=$(oidc_prep check-refresh "$sys" | sed 's/^http:[^ ]* //')
    echo "  $sys: ID token $alg; $check"
    echo "$sys	$alg	$check" >>"$OUT/oidc/checks.tsv"
  done
  for round in $(seq 0 "$OIDC_ROUNDS"); do
    duration=$OIDC_DURATION
    [ "$round" = 0 ] && duration=$WARMUP
    order=("${OIDC_REFRESH_SYSTEMS[@]}")
    if [ $((round % 2)) = 1 ]; then
      for ((i = ${#OIDC_REFRESH_SYSTEMS[@]} - 1, j = 0; i >= 0; i--, j++)); do order[j]=${OIDC_REFRESH_SYSTEMS[i]}; done
    fi
    echo " round $round"
    for sys in "${order[@]}"; do
      oidc_prep tokens "$sys" --n $((CONNS + 8)) --out "$OUT/oidc/tokens"
      TOKENS=$OUT/oidc/tokens TOKEN_PATH=${OIDC_TOKEN_PATH[$sys]} CLIENT_BASIC=$(oidc_basic "$sys") \
        oidc_load "refresh.$sys.round$round" "$sys" "$duration" -s bench/lua/oidc_refresh.lua
      oidc_row refresh "$sys" "$round"
    done
    for sys in "${order[@]}"; do
      [ "$sys" = oidc-rotating ] && continue
      oidc_codes "$sys" -code "$duration" "authorize.$sys.round$round" "$duration"
      oidc_row authorize "$sys" "$round"
      oidc_exchange code "$sys" -code "$round" "$duration"
    done
    for sys in "${order[@]}"; do
      [ "${OIDC_KIND[$sys]}" = portcullis ] || continue
      [ -n "${OIDC_RATE[$sys]:-}" ] || OIDC_RATE[$sys]=${OIDC_RATE[$sys-code]:-0}
      oidc_codes "$sys" "" 1s "collect.$sys" "$duration"
      oidc_exchange code+refresh "$sys" "" "$round" "$duration"
    done
  done
  for sys in "${OIDC_REFRESH_SYSTEMS[@]}"; do
    printf 'rss\t%s\t\t\t\t\t%s\n' "$sys" "$(rss_kb "${OIDC_PID[$sys]}")" >>"$OUT/oidc.tsv"
    kill "${OIDC_PID[$sys]}"; wait "${OIDC_PID[$sys]}" 2>/dev/null || true
  done
  python3 bench/oidc_report.py "$OUT" >"$OUT/oidc.md"
  cat "$OUT/oidc.md"
fi

if [ $OIDC_ONLY = 1 ]; then
  :
elif [ $SMOKE = 0 ]; then
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
if [ $OIDC_ONLY = 1 ]; then
  # The OpenID Connect section alone: --write replaces that section of BENCHMARKS.md, nothing else.
  if [ $WRITE = 1 ] && [ -s "$OUT/oidc.tsv" ]; then
    python3 bench/oidc_report.py --splice "$OUT" BENCHMARKS.md
    echo "BENCHMARKS.md: section \"6. OpenID Connect\" written"
  fi
  exit 0
fi
python3 bench/report.py report "$OUT" >"$OUT/report.md"
cat "$OUT/report.md"
if [ $WRITE = 1 ]; then
  cp "$OUT/report.md" BENCHMARKS.md
  cp "$OUT/throughput.svg" bench/throughput.svg
  # bench/report.py writes sections 1-5; the OpenID Connect section is this run's.
  [ -s "$OUT/oidc.tsv" ] && python3 bench/oidc_report.py --splice "$OUT" BENCHMARKS.md
  echo "BENCHMARKS.md and bench/throughput.svg written"
fi
