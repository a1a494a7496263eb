#!/usr/bin/env bash
# What one call between objects costs, by `stead bench` against `stead serve --cores 2`:
# - Round trip: one connection asks one relay for 1 and for 1,000 calls to its counter's
#   `/value` in one request (`times`), callee on the relay's core and on the other core; one
#   call costs (p50 of 1,000 − p50 of 1) / 999. No other load runs.
# - Throughput: `counter-read` (a client's read of one counter, no call) against `call` with
#   `--call-core same` and `other` over 1,000 relays, 32 connections, closed loop.
# The bench runs unpinned on the same 2 cores. Interleaved runs, medians.
# Usage: scripts/bench-call-roundtrip.sh [seconds] [runs]   (default: 5 3)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-5}
RUNS=${2:-3}
PORT=18086
WORK_NAME=bench-call-roundtrip
source scripts/bench-common.sh

# Prints "rps p50_us p99_us" of one run.
measure() { # scenario [extra args...]
  "$BIN" bench --url "http://127.0.0.1:$PORT" --scenario "$1" --duration "${SECONDS_PER_RUN}s" \
    --warmup 1s --json "$WORK/run.json" "${@:2}" >/dev/null
  python3 -c 'import json,sys; f=json.load(open(sys.argv[1])); l=f["latency_ms"]
print(round(f["throughput_rps"]), round(l["p50"]*1000), round(l["p99"]*1000))' "$WORK/run.json"
}

declare -A RESULTS
start_stead_with "" 2
for run in $(seq "$RUNS"); do
  for core in same other; do
    for times in 1 1000; do
      RESULTS["trip $core $times"]+="$(measure hello --connections 1 \
        --path "/objects/relay/trip/counter/value?core=$core&times=$times")"$'\n'
    done
  done
  RESULTS["read"]+="$(measure counter-read --connections 32)"$'\n'
  for core in same other; do
    RESULTS["call $core"]+="$(measure call --connections 32 --objects 1000 --call-core "$core")"$'\n'
  done
done
stop_stead
echo "Machine: $(nproc) cores, $(uname -sr); stead serve --cores 2, stead bench unpinned;"
echo "${SECONDS_PER_RUN}s per run after 1s warm-up, medians of $RUNS interleaved runs."
echo
echo "| callee | p50 of 1 call µs | p50 of 1,000 calls µs | one call µs |"
echo "|---|---:|---:|---:|"
for core in same other; do
  awk -v c="$core" -v one="$(field "trip $core 1" 2)" -v many="$(field "trip $core 1000" 2)" \
    'BEGIN { printf "| %s core | %d | %d | %.1f |\n", c, one, many, (many - one) / 999 }'
done
echo
echo "| request (32 connections) | req/s | p50 µs | p99 µs | req/s / counter-read |"
echo "|---|---:|---:|---:|---:|"
base=$(field read 1)
for kind in read "call same" "call other"; do
  case $kind in
    read) name="counter-read (no call)";;
    "call same") name="call, callee on the relay's core";;
    "call other") name="call, callee on the other core";;
  esac
  awk -v n="$name" -v r="$(field "$kind" 1)" -v m="$(field "$kind" 2)" -v p="$(field "$kind" 3)" \
    -v b="$base" 'BEGIN { printf "| %s | %d | %d | %d | %.2f |\n", n, r, m, p, (b > 0 ? r / b : 0) }'
done
