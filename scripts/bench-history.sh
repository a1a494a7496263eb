#!/usr/bin/env bash
# What a history window (point-in-time recovery) costs the write path: the same workload with
# `history_retention_ms` off and at one hour for the class, interleaved, so noise on the shared
# machine falls on both. Reports req/s and p99, the history the run kept (records and bytes,
# from /metrics), the bytes of history per write, and the server's resident memory per record
# kept (RSS with history minus RSS without, over the records).
#
# Server (stead --cores 1) pinned to core 0, wrk to core 1; loopback only; a fresh data
# directory per server. Needs: wrk (Debian).
# Usage: scripts/bench-history.sh [seconds] [runs] [connections]   (default: 10 3 32)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
RUNS=${2:-3}
CONNECTIONS=${3:-32}
OBJECTS=10000
PORT=18083
WORK_NAME=bench-history
source scripts/bench-common.sh
for class in counter ratelimiter; do
  printf '[classes.%s]\nhistory_retention_ms = 0\n' "$class" >"$WORK/$class-off.toml"
  printf '[classes.%s]\nhistory_retention_ms = 3600000\n' "$class" >"$WORK/$class-on.toml"
done

metric() { curl -s "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 ~ "^"m"[{ ]" {s += $2} END {printf "%d", s}'; }

# Prints "rps p99_us requests history_keys history_bytes rss_kib".
measure() { # history(on|off) class path objects
  local history=$1 class=$2 path=$3 objects=$4
  start_stead --config "$WORK/$class-$history.toml"
  local summary rps p99 keys bytes rss
  summary=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" -s scripts/wrk-spread.lua \
    "http://127.0.0.1:$PORT" -- "$class" "$path" "$objects" | grep STEADSUMMARY)
  rps=$(echo "$summary" | sed -E 's/.*rps=([0-9]+).*/\1/')
  p99=$(echo "$summary" | sed -E 's/.*p99_us=([0-9]+).*/\1/')
  keys=$(metric stead_history_keys)
  bytes=$(metric stead_history_bytes)
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$SERVER_PID/status")
  stop_stead
  echo "$rps $p99 $((rps * SECONDS_PER_RUN)) $keys $bytes $rss"
}

declare -A RESULTS # "workload history" -> lines
for run in $(seq "$RUNS"); do
  for workload in hot ratelimit; do
    case $workload in
      hot) args=(counter increment 1) ;;
      ratelimit) args=(ratelimiter check $OBJECTS) ;;
    esac
    for history in off on; do
      RESULTS["$workload $history"]+="$(measure "$history" "${args[@]}")"$'\n'
    done
  done
done

echo "Machine: $(nproc) cores, $(uname -sr). Server pinned to core 0, wrk to core 1, $CONNECTIONS"
echo "connections; ${SECONDS_PER_RUN}s per run, medians of $RUNS interleaved runs."
echo
echo "| workload | off req/s | off p99 ms | 1 h req/s | 1 h p99 ms | 1 h / off | records kept | history bytes / write | RSS / history key (B) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for workload in hot ratelimit; do
  off="$workload off"; on="$workload on"
  awk -v w="$workload" \
    -v r0="$(field "$off" 1)" -v p0="$(field "$off" 2)" -v m0="$(field "$off" 6)" \
    -v r1="$(field "$on" 1)" -v p1="$(field "$on" 2)" -v n1="$(field "$on" 3)" \
    -v k1="$(field "$on" 4)" -v b1="$(field "$on" 5)" -v m1="$(field "$on" 6)" \
    'BEGIN { printf "| %s | %d | %.2f | %d | %.2f | %.2f | %d | %.0f | %.0f |\n",
      w, r0, p0 / 1000, r1, p1 / 1000, (r0 > 0 ? r1 / r0 : 0), k1,
      (n1 > 0 ? b1 / n1 : 0), (k1 > 0 ? (m1 - m0) * 1024 / k1 : 0) }'
done
