#!/usr/bin/env bash
# Longest stall of a core under a write load that keeps compaction busy: one core, wrk on the
# other, for SECONDS. Prints wrk's p50/p99/max latency and, if the binary has the stall probe,
# the longest stall it saw and the compactions it ran (from /metrics).
#
# Usage: scripts/bench-stall.sh [binary] [seconds] [config.toml] [class path objects]
# e.g.   scripts/bench-stall.sh target/release/stead 30 stall.toml ratelimiter check 10000
set -euo pipefail
BIN=${1:-target/release/stead}
SECONDS_PER_RUN=${2:-30}
CONFIG=${3:-}
shift $(( $# < 3 ? $# : 3 ))
if [ $# -gt 0 ]; then WORKLOAD=("$@"); else WORKLOAD=(counter increment 10000); fi
PORT=${PORT:-18081}
WORK=$(mktemp -d /tmp/bench-stall.XXXXXX)
cleanup() {
  [ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ARGS=(serve --listen 127.0.0.1:$PORT --data-dir "$WORK/data" --cores 1)
[ -n "$CONFIG" ] && ARGS+=(--config "$CONFIG")
taskset -c 0 "$BIN" "${ARGS[@]}" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
OUT=$(taskset -c 1 wrk -t1 -c32 -d"${SECONDS_PER_RUN}s" --latency -s scripts/wrk-spread.lua \
  "http://127.0.0.1:$PORT" -- "${WORKLOAD[@]}")
METRICS=$(curl -sf "http://127.0.0.1:$PORT/metrics" || true)
SUMMARY=$(echo "$OUT" | grep STEADSUMMARY)
MAX=$(echo "$OUT" | awk '$1 == "Latency" && NF >= 4 {print $4; exit}')
P99=$(echo "$OUT" | awk '$1 == "99%" {print $2; exit}')
STALL=$(echo "$METRICS" | awk '$1 ~ /^stead_core_stall_max_seconds/ {print $2 * 1000 " ms"}')
BUSY=$(echo "$METRICS" | awk '$1 ~ /^stead_core_busy_stall_max_seconds/ {print $2 * 1000 " ms"}')
STALLS=$(echo "$METRICS" | awk '$1 ~ /^stead_core_stalls_over_10ms_total/ {print $2}')
COMPACTIONS=$(echo "$METRICS" | awk '$1 ~ /^stead_storage_compactions_total/ {print $2}')
echo "$SUMMARY wrk_p99=$P99 wrk_max=$MAX stall_max=${STALL:-n/a} busy_stall_max=${BUSY:-n/a} stalls_over_10ms=${STALLS:-n/a} compactions=${COMPACTIONS:-n/a}"
