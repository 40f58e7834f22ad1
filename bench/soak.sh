#!/usr/bin/env bash
# The soak: a long mixed load on Portcullis over each store, one store at a time, reporting per
# minute the server's memory (RSS), its throughput and latency (p50/p99), so a leak or a slow
# drift shows as a column that keeps climbing. A harness, not a timed test: it prints tables.
#
#   bench/soak.sh                      30 minutes on each of sqlite, redis, postgres
#   bench/soak.sh --minutes 3          3 minutes each
#   bench/soak.sh --stores "sqlite"    one store (runs of different stores can go side by side)
#
# The load is bench/lua/mixed.lua under wrk (the tools of bench/run.sh): sessions created,
# validated (80 %), rotated (10 %) and logged out (10 %) from a bounded pool per connection, and
# every SIGNIN_EVERY requests a person signing in and out on the pages (Argon2id, the "Stay
# signed in?" step, the account page, sign-out). Every session created is ended again, and ended
# sessions are forgotten after `ended_retention` (1m here, instead of 1h, so the steady state
# comes within the first minutes; the default policy idles out after 2 minutes without
# re-constitution, so the sessions left in wrk's pools each minute go too): what stays in memory
# is bounded, and RSS must level off.
#
# Traffic goes to 127.0.0.1 only; each wrk run is bounded in time. Redis: a private redis-server
# on 6391 started and stopped here; PostgreSQL: a schema of its own on 127.0.0.1:5432, dropped at
# the end (the services of .ci/run). Results: bench/results/soak-<time>/soak.md.
# Env: CONNS (4: wrk threads, one connection each), POOL (50), SIGNIN_EVERY (400), SOAK_BIN
#      (a release binary to use instead of building one).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
MINUTES=30
STORE_LIST="sqlite redis postgres"
while [ $# -gt 0 ]; do
  case $1 in
    --minutes) MINUTES=$2; shift 2 ;;
    --stores) STORE_LIST=$2; shift 2 ;;
    *) echo "usage: bench/soak.sh [--minutes N] [--stores \"sqlite redis postgres\"]" >&2; exit 2 ;;
  esac
done
CONNS=${CONNS:-4}
export POOL=${POOL:-50} SIGNIN_EVERY=${SIGNIN_EVERY:-400}
OUT=$ROOT/bench/results/soak-$(date -u +%Y%m%dT%H%M%SZ)-${STORE_LIST// /-}
mkdir -p "$OUT"
REPORT=$OUT/soak.md
PIDS=()
ID=$$
REDIS_PORT=6391
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  case " $STORE_LIST " in *" redis "*) redis-cli -p $REDIS_PORT shutdown nosave >/dev/null 2>&1 || true ;; esac
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP SCHEMA IF EXISTS pc_soak_$ID CASCADE" >/dev/null 2>&1 || true
}
trap cleanup EXIT
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

wait_http() { for _ in $(seq 200); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "no answer from $1" >&2; return 1; }
rss_mib() { awk '/VmRSS/{printf "%.1f", $2 / 1024}' "/proc/$1/status"; }

if [ -n "${SOAK_BIN:-}" ]; then
  PC=$SOAK_BIN
else
  echo "== building Portcullis (release)"
  cargo build -q --release -p portcullis
  TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')
  PC=$TARGET/release/portcullis
fi

case " $STORE_LIST " in *" redis "*)
  redis-server --port $REDIS_PORT --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --pidfile "$OUT/redis.pid" --logfile "$OUT/redis.log" --dir "$OUT"
  for _ in $(seq 100); do redis-cli -p $REDIS_PORT ping >/dev/null 2>&1 && break; sleep 0.05; done ;;
esac
declare -A URLS=(
  [sqlite]=""
  [redis]="redis://127.0.0.1:$REDIS_PORT?prefix=pcsoak:$ID"
  [postgres]="postgres://postgres@127.0.0.1:5432/postgres?schema=pc_soak_$ID"
)

{
  echo "# Soak: $MINUTES min of mixed load per store"
  echo
  if [ -n "${SOAK_BIN:-}" ]; then
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); binary: $SOAK_BIN (given, not built here)"
  else
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); commit $(git rev-parse --short HEAD 2>/dev/null || echo '(not a git checkout)')$(git diff --quiet HEAD -- crates 2>/dev/null || echo ' + uncommitted changes')"
  fi
  echo "- host: $(nproc) cores, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo); redis $(redis-server --version | awk '{print $3}'); postgres $(psql --version | awk '{print $3}')"
  echo "- load: wrk -t$CONNS -c$CONNS --latency -s bench/lua/mixed.lua, per minute a 57 s run and a 3 s pause; per connection a pool of $POOL sessions (validate 80 %, rotate 10 %, logout 10 %, creates refill it), a page sign-in and sign-out (5 requests, one Argon2id) every $SIGNIN_EVERY requests"
  echo "- server: \`ended_retention = \"1m\"\`, \`sweep_interval = \"5s\"\`, policy \`default\` with \`idle = \"2m\"\` and no re-constitution, audit log off; RSS of the server process at the end of each minute under load, and settled (3 s after the load stopped: a sign-in's Argon2id takes 19 MiB while it runs)"
  echo "- refused: the 4xx/5xx answers of the minute by request kind (signinN: step N of a page sign-in)"
  echo
} >"$REPORT"

PASSWORD="soak passphrase that is long enough $ID"
export USERNAME=soak PASSWORD
for store in $STORE_LIST; do
  url=${URLS[$store]}
  # A port per store, so runs of different stores can go side by side.
  case $store in sqlite) port=18190 ;; redis) port=18191 ;; *) port=18192 ;; esac
  dir=$OUT/pc-$store
  store_args=()
  [ -n "$url" ] && store_args=(--store "$url")
  mkdir -p "$dir" && chmod 700 "$dir"
  export PORTCULLIS_ENDED_RETENTION=1m PORTCULLIS_SWEEP_INTERVAL=5s
  # wrk restarts every minute and its pools start empty, so the sessions left in them are never
  # logged out: a short idle limit and no re-constitution let them go within minutes (with the
  # default's 15 min idle and 24 h window the store would rightly keep them, growing for a day).
  cat >"$dir/portcullis.toml" <<'TOML'
[policies.default]
idle = "2m"
absolute = "12h"
reconstitute_window = "0s"
TOML
  export PORTCULLIS_CONFIG=$dir/portcullis.toml
  "$PC" "${store_args[@]}" --data-dir "$dir" apps add soak >/dev/null 2>&1
  KEY=$("$PC" "${store_args[@]}" --data-dir "$dir" api-keys create --app soak 2>/dev/null)
  export KEY
  printf '%s\n' "$PASSWORD" | "$PC" "${store_args[@]}" --data-dir "$dir" users add "$USERNAME" >/dev/null 2>&1 || true
  "$PC" "${store_args[@]}" --data-dir "$dir" serve --listen 127.0.0.1:$port --audit-log off 2>"$dir/server.log" &
  pid=$!
  PIDS+=("$pid")
  wait_http "http://127.0.0.1:$port/healthz"
  sleep 0.5
  idle=$(rss_mib "$pid")
  echo "== $store: $MINUTES min (server pid $pid, idle RSS $idle MiB)"
  {
    echo "## $store"
    echo
    echo "Idle RSS after start: $idle MiB."
    echo
    if [ "$store" = redis ]; then
      echo "| minute | req/s | p50 ms | p99 ms | refused | RSS MiB (load) | RSS MiB (settled) | Redis used MiB |"
      echo "|---:|---:|---:|---:|---|---:|---:|---:|"
    else
      echo "| minute | req/s | p50 ms | p99 ms | refused | RSS MiB (load) | RSS MiB (settled) |"
      echo "|---:|---:|---:|---:|---|---:|---:|"
    fi
  } >>"$REPORT"
  rss_series=()
  for minute in $(seq "$MINUTES"); do
    out=$(wrk -t"$CONNS" -c"$CONNS" -d57s --timeout 10s --latency -s bench/lua/mixed.lua "http://127.0.0.1:$port/")
    loaded=$(rss_mib "$pid")
    sleep 3
    echo "$out" >"$OUT/$store.minute$minute.txt"
    refused=$(awk -F': ' '/^refused:/ { print ($2 == "" ? "0" : $2) }' <<<"$out")
    read -r rps p50 p99 bad <<<"$(awk '
      function ms(v) { if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 } if (v ~ /ms$/) { sub(/ms$/, "", v); return v } if (v ~ /s$/) { sub(/s$/, "", v); return v * 1000 } return v }
      /Requests\/sec/ { r = $2 }
      $1 == "50%" { p50 = ms($2) }
      $1 == "99%" { p99 = ms($2) }
      /^non2xx=/ { split($0, a, "="); n = a[2] }
      END { printf "%.0f %.2f %.2f %d\n", r, p50, p99, n }' <<<"$out")"
    rss=$(rss_mib "$pid")
    rss_series+=("$rss")
    row="| $minute | $rps | $p50 | $p99 | ${refused:-$bad} | $loaded | $rss |"
    if [ "$store" = redis ]; then
      used=$(redis-cli -p $REDIS_PORT info memory | awk -F: '/^used_memory:/{printf "%.1f", $2 / 1048576}')
      row="$row $used |"
    fi
    echo "$row" | tee -a "$REPORT"
  done
  # Flat: from the end of the first minute (warm-up: pools filled, retention reached) to the end.
  verdict=$(python3 - "${rss_series[@]}" <<'EOF'
import sys
rss = [float(x) for x in sys.argv[1:]]
base = rss[1] if len(rss) > 2 else rss[0]
last, peak = rss[-1], max(rss[1:] or rss)
growth = last - base
per_min = growth / max(len(rss) - 2, 1)
flat = growth <= max(0.05 * base, 4.0)
print(f"RSS from minute {2 if len(rss) > 2 else 1} to the end: {base:.1f} → {last:.1f} MiB ({growth:+.1f} MiB, {per_min:+.2f} MiB/min; peak {peak:.1f}): {'flat' if flat else 'GROWING'}")
EOF
)
  echo "  $verdict"
  { echo; echo "$verdict"; echo; } >>"$REPORT"
  grep -m3 -i "panic\|error" "$dir/server.log" >>"$REPORT" || true
  kill "$pid"; wait "$pid" 2>/dev/null || true
done

echo "elapsed: $((SECONDS / 60)) min $((SECONDS % 60)) s" >>"$REPORT"
echo
cat "$REPORT"
