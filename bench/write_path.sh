#!/usr/bin/env bash
# The write path on the embedded store, side by side with tower-sessions' SQLite store: both
# servers up at once, ROUNDS rounds of one wrk load per system and operation in turn (the order
# reversed every other round), ratios taken per round, then the median. About 3 minutes.
#
#   bench/write_path.sh        needs the release build and the peer built by bench/run.sh (or
#                              built here when missing); prints a Markdown table
# Env: ROUNDS (4) DURATION (6s) CONNS (50)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-4} DURATION=${DURATION:-6s} CONNS=${CONNS:-50}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build -q --release --locked -p portcullis
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')
PC=$TARGET/release/portcullis
WORK=/var/tmp/portcullis-peers-work
if [ ! -x /var/tmp/peers-target/release/session ]; then
  mkdir -p "$WORK/axum-sessions"
  (cd ../shared/peers/axum-sessions && tar --exclude=target -cf - .) | (cd "$WORK/axum-sessions" && tar -xf -)
  cargo build -q --release --locked --manifest-path "$WORK/axum-sessions/Cargo.toml" --target-dir /var/tmp/peers-target
fi
OUT=$(mktemp -d)
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$OUT"' EXIT

dir=$OUT/pc && mkdir -p "$dir" && chmod 700 "$dir"
"$PC" --data-dir "$dir" apps add bench >/dev/null 2>&1
KEY=$("$PC" --data-dir "$dir" api-keys create --app bench 2>/dev/null)
"$PC" --data-dir "$dir" serve --listen 127.0.0.1:18191 --audit-log off 2>"$dir/server.log" &
PIDS+=($!)
STORE=sqlite PORT=3016 SQLITE_PATH="$OUT/peer.sqlite3" /var/tmp/peers-target/release/session >/dev/null 2>&1 &
PIDS+=($!)
for port in 18191 3016; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done
export KEY

rate() { # SYSTEM OPERATION -> requests per second of one load
  local sys=$1 op=$2 base script
  if [ "$sys" = portcullis-sqlite ]; then base=http://127.0.0.1:18191; export MODE=portcullis
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
systems=(portcullis-sqlite tower-sessions-sqlite)
for round in $(seq "$ROUNDS"); do
  order=("${systems[@]}")
  [ $((round % 2)) = 0 ] && order=(tower-sessions-sqlite portcullis-sqlite)
  for op in create create+logout; do
    for sys in "${order[@]}"; do
      RATES[$sys,$op,$round]=$(rate "$sys" "$op")
    done
  done
  RATES[portcullis-sqlite,rotate,$round]=$(rate portcullis-sqlite rotate)
done

median() { python3 -c 'import statistics,sys; m = statistics.median(float(x) for x in sys.argv[1:]); print(round(m) if m > 100 else round(m, 2))' "$@"; }
echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); $(nproc) cores; wrk -t2 -c$CONNS -d$DURATION, $ROUNDS rounds; Portcullis $(git rev-parse --short HEAD)"
echo
echo "| operation | system | req/s per round | median | ÷ tower-sessions per round | median ÷ |"
echo "|---|---|---|---:|---|---:|"
for op in create create+logout rotate; do
  for sys in "${systems[@]}"; do
    [ -z "${RATES[$sys,$op,1]:-}" ] && continue
    per=() ratios=()
    for round in $(seq "$ROUNDS"); do
      per+=("${RATES[$sys,$op,$round]}")
      if [ -n "${RATES[tower-sessions-sqlite,$op,$round]:-}" ] && [ "$sys" = portcullis-sqlite ]; then
        ratios+=("$(python3 -c "print(round(${RATES[$sys,$op,$round]} / ${RATES[tower-sessions-sqlite,$op,$round]}, 2))")")
      fi
    done
    ratio_cell="" ratio_median=""
    if [ ${#ratios[@]} -gt 0 ]; then ratio_cell=$(IFS=/; echo "${ratios[*]}"); ratio_median=$(median "${ratios[@]}"); fi
    echo "| $op | $sys | $(IFS=/; echo "${per[*]}") | $(median "${per[@]}") | $ratio_cell | $ratio_median |"
  done
done
