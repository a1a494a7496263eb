#!/usr/bin/env bash
# One round in flight against two (`[storage] rounds_in_flight`), interleaved: every run
# measures each workload with 1 and then with 2, so noise on the shared machine falls on both.
# Also reports the server's CPU time per request (from /proc), which tells a core that waits
# on the device from one that is busy. Prints a Markdown section: medians over the runs.
#
# Server (stead --cores 1) pinned to core 0, wrk to core 1; loopback only; a fresh data
# directory per server. Needs: wrk (Debian).
# Usage: scripts/bench-rounds.sh [seconds] [runs] [connections...]   (default: 10 3 32 128)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
RUNS=${2:-3}
if [ $# -gt 2 ]; then CONNECTION_COUNTS=("${@:3}"); else CONNECTION_COUNTS=(32 128); fi
OBJECTS=10000
PORT=18081
WORK_NAME=bench-rounds
source scripts/bench-common.sh
for rounds in 1 2; do
  printf '[storage]\nrounds_in_flight = %s\n' "$rounds" >"$WORK/rounds-$rounds.toml"
done

# Prints "rps p99_us cpu_us_per_request".
measure() { # rounds connections wrk-spread args...
  local rounds=$1 connections=$2; shift 2
  start_stead --config "$WORK/rounds-$rounds.toml"
  local ticks_before ticks_after summary
  ticks_before=$(awk '{print $14 + $15}' "/proc/$SERVER_PID/stat")
  summary=$(taskset -c 1 wrk -t1 -c"$connections" -d"${SECONDS_PER_RUN}s" -s scripts/wrk-spread.lua \
    "http://127.0.0.1:$PORT" -- "$@" | grep STEADSUMMARY)
  ticks_after=$(awk '{print $14 + $15}' "/proc/$SERVER_PID/stat")
  stop_stead
  echo "$summary" | sed -E 's/.*rps=([0-9]+) p50_us=([0-9]+) p99_us=([0-9]+).*/\1 \3/' |
    awk -v ticks=$((ticks_after - ticks_before)) -v hz="$(getconf CLK_TCK)" -v s="$SECONDS_PER_RUN" \
      '{ cpu = $1 > 0 ? ticks / hz * 1e6 / ($1 * s) : 0; printf "%s %s %.1f\n", $1, $2, cpu }'
}

declare -A RESULTS # "workload connections rounds" -> lines of "rps p99 cpu"

for run in $(seq "$RUNS"); do
  for connections in "${CONNECTION_COUNTS[@]}"; do
    for workload in hot spread ratelimit; do
      case $workload in
        hot) args=(counter increment 1) ;;
        spread) args=(counter increment $OBJECTS) ;;
        ratelimit) args=(ratelimiter check $OBJECTS) ;;
      esac
      for rounds in 1 2; do
        RESULTS["$workload $connections $rounds"]+="$(measure "$rounds" "$connections" "${args[@]}")"$'\n'
      done
    done
  done
done

echo "Machine: $(nproc) cores, $(uname -sr). Server pinned to core 0, wrk to core 1;"
echo "${SECONDS_PER_RUN}s per run, medians of $RUNS interleaved runs."
echo
echo "| connections | workload | 1 in flight req/s | p99 ms | CPU µs/req | 2 in flight req/s | p99 ms | CPU µs/req | 2 / 1 |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|"
for connections in "${CONNECTION_COUNTS[@]}"; do
  for workload in hot spread ratelimit; do
    one="$workload $connections 1"; two="$workload $connections 2"
    awk -v c="$connections" -v w="$workload" \
      -v r1="$(field "$one" 1)" -v p1="$(field "$one" 2)" -v u1="$(field "$one" 3)" \
      -v r2="$(field "$two" 1)" -v p2="$(field "$two" 2)" -v u2="$(field "$two" 3)" \
      'BEGIN { printf "| %s | %s | %d | %.2f | %.1f | %d | %.2f | %.1f | %.2f |\n",
        c, w, r1, p1 / 1000, u1, r2, p2 / 1000, u2, (r1 > 0 ? r2 / r1 : 0) }'
  done
done
