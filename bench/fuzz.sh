#!/usr/bin/env bash
# The property tests over every parser of untrusted input, run long with many cases: what CI runs
# with proptest's modest default (256 cases a property, 64-128 for the Redis ones), here in
# rounds of PROPTEST_CASES each, with a fresh random seed every round, until the time is up.
# A harness, not a timed test: it prints a table.
#
#   bench/fuzz.sh                     an hour, 10000 cases a property per round
#   bench/fuzz.sh --minutes 5 --cases 2000 --debug    (the debug build: no release build first)
#
# Suites (each a test binary; every property in it runs with the round's case count):
#   core-parsers   tokens and API keys, public ids, token hashes, durations in the configuration
#                  (crates/portcullis-core/tests/parsers_prop.rs)
#   http-parsers   cookie headers, user agents, return_to, CSRF values, Forwarded and
#                  X-Forwarded-For chains, problem documents
#                  (crates/portcullis-http/tests/parsers_prop.rs)
#   http-bodies    random JSON and bytes at every API endpoint, random forms and cookies at every
#                  page, over real HTTP (crates/portcullis-http/tests/fuzz.rs)
#   redis-records  Redis session records: any session round trip, any bytes as a record
#                  (crates/portcullis-store-redis/tests/record_prop.rs; needs Redis on 6379)
# A failing case is kept by proptest in the crate's proptest-regressions/ and its output in
# bench/results/fuzz-<time>/; the script goes on with the other suites and exits 1 at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=60
CASES=10000
PROFILE=(--release)
while [ $# -gt 0 ]; do
  case $1 in
    --minutes) MINUTES=$2; shift 2 ;;
    --cases) CASES=$2; shift 2 ;;
    --debug) PROFILE=(); shift ;;
    *) echo "usage: bench/fuzz.sh [--minutes N] [--cases N] [--debug]" >&2; exit 2 ;;
  esac
done
OUT=bench/results/fuzz-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
SUITES=(
  "core-parsers portcullis-core parsers_prop"
  "http-parsers portcullis-http parsers_prop"
  "http-bodies portcullis-http fuzz"
  "redis-records portcullis-store-redis record_prop"
)

echo "== building the property tests ${PROFILE[*]:-(debug)}"
# Rounds run the test executables themselves (as cargo would, from the crate's directory), so a
# round never waits for cargo's lock on a build directory another build is using.
declare -A EXE
for suite in "${SUITES[@]}"; do
  read -r name package test <<<"$suite"
  EXE[$name]=$(cargo test -q "${PROFILE[@]}" -p "$package" --test "$test" --no-run --message-format=json |
    python3 -c 'import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' | tail -n 1)
  [ -x "${EXE[$name]}" ] || { echo "no test executable for $name" >&2; exit 1; }
done

declare -A ROUNDS PROPS CASES_RUN SECS FAILED
for suite in "${SUITES[@]}"; do
  read -r name _ <<<"$suite"
  ROUNDS[$name]=0 PROPS[$name]=0 CASES_RUN[$name]=0 SECS[$name]=0 FAILED[$name]=0
done

deadline=$((SECONDS + MINUTES * 60))
round=0
while [ $SECONDS -lt $deadline ]; do
  round=$((round + 1))
  for suite in "${SUITES[@]}"; do
    [ $SECONDS -lt $deadline ] || break
    read -r name package test <<<"$suite"
    started=$SECONDS
    log=$OUT/$name.round$round.log
    if (cd "crates/$package" && PROPTEST_CASES=$CASES "${EXE[$name]}" -q) >"$log" 2>&1; then
      status=ok
      rm -f "$log"
    else
      status=FAILED
      FAILED[$name]=$((FAILED[$name] + 1))
    fi
    props=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($(i) ~ /^passed;?$/) p += $(i-1) } END { print p + 0 }' "$log" 2>/dev/null || echo 0)
    [ "$status" = ok ] && props=$("${EXE[$name]}" --list 2>/dev/null | grep -c ': test$' || true)
    ROUNDS[$name]=$((ROUNDS[$name] + 1))
    PROPS[$name]=$props
    CASES_RUN[$name]=$((CASES_RUN[$name] + props * CASES))
    SECS[$name]=$((SECS[$name] + SECONDS - started))
    printf '  round %d  %-14s %-6s %3d s\n' "$round" "$name" "$status" $((SECONDS - started))
  done
done

{
  echo "# Property tests, $MINUTES min: $CASES cases a property per round"
  echo
  echo "- build: ${PROFILE[*]:-debug}; date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); commit $(git rev-parse --short HEAD 2>/dev/null || echo '(not a git checkout)')$(git diff --quiet HEAD -- crates 2>/dev/null || echo ' + uncommitted changes'); $(nproc) cores"
  echo
  echo "| suite | tests | rounds | cases run (tests × cases × rounds) | seconds | failed rounds |"
  echo "|---|---:|---:|---:|---:|---:|"
  total_failed=0
  for suite in "${SUITES[@]}"; do
    read -r name _ <<<"$suite"
    echo "| $name | ${PROPS[$name]} | ${ROUNDS[$name]} | ${CASES_RUN[$name]} | ${SECS[$name]} | ${FAILED[$name]} |"
    total_failed=$((total_failed + FAILED[$name]))
  done
  echo
  echo "elapsed: $((SECONDS / 60)) min $((SECONDS % 60)) s"
} | tee "$OUT/fuzz.md"
[ "$(grep -c '| [1-9][0-9]* |$' "$OUT/fuzz.md" || true)" = 0 ] || { echo "failures: see $OUT/*.log"; exit 1; }
