#!/usr/bin/env bash
# stead against Redis 7 with `appendfsync always` (both answer a write only once it is on disk),
# and against stead's own floor (`serve --hello`), on the same machine, interleaved: every run
# measures each workload on stead and then on Redis, so noise on the shared machine falls on
# both. Prints a Markdown section: medians over the runs, and the ratios of those medians.
#
# Server (stead --cores 1, or redis-server) pinned to core 0, load generator to core 1 (this
# machine has 2 cores); loopback only; every server gets a fresh data directory per run.
# Needs: wrk, redis-server, redis-tools (Debian).
# Usage: scripts/bench-engine.sh [seconds] [runs] [connections...]   (default: 10 3 32 128)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
RUNS=${2:-3}
if [ $# -gt 2 ]; then CONNECTION_COUNTS=("${@:3}"); else CONNECTION_COUNTS=(32 128); fi
OBJECTS=10000
PORT=18080
REDIS_PORT=16390
WORK_NAME=bench-engine
source scripts/bench-common.sh

# One stead measurement: "rps p99_us errors".
stead_run() { # connections url [wrk-spread args...]
  local connections=$1 url=$2; shift 2
  [ $# -eq 0 ] && set -- fixed
  taskset -c 1 wrk -t1 -c"$connections" -d"${SECONDS_PER_RUN}s" -s scripts/wrk-spread.lua "$url" -- "$@" |
    grep STEADSUMMARY |
    sed -E 's/.*rps=([0-9]+) p50_us=([0-9]+) p99_us=([0-9]+) errors=([0-9]+) non2xx=([0-9]+).*/\1 \3 \4 \5/' |
    awk '{print $1, $2, $3 + $4}'
}

# One Redis measurement: "rps p99_us errors". redis-benchmark sends a fixed count: sized from
# the last run's rate so a run lasts about SECONDS_PER_RUN.
declare -A REDIS_RATE
redis_run() { # name connections args...
  local name=$1 connections=$2; shift 2
  local rate=${REDIS_RATE[$name]:-15000}
  local requests=$((rate * SECONDS_PER_RUN))
  local line
  line=$(taskset -c 1 redis-benchmark -p $REDIS_PORT -c "$connections" -n "$requests" --csv "$@" 2>/dev/null | tail -n 1)
  # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
  echo "$line" | tr -d '"' | awk -F, '{printf "%.0f %.0f 0\n", $2, $7 * 1000}'
}


declare -A RESULTS # "name connections" -> lines of "rps p99 errors"
record() { RESULTS["$1 $2"]+="$3"$'\n'; }

for run in $(seq "$RUNS"); do
  for connections in "${CONNECTION_COUNTS[@]}"; do
    start_stead --hello
    record hello "$connections" "$(stead_run "$connections" "http://127.0.0.1:$PORT/healthz")"
    stop_stead
    for workload in hot spread ratelimit; do
      start_stead
      case $workload in
        hot) args=(counter increment 1) ;;
        spread) args=(counter increment $OBJECTS) ;;
        ratelimit) args=(ratelimiter check $OBJECTS) ;;
      esac
      record "stead-$workload" "$connections" "$(stead_run "$connections" "http://127.0.0.1:$PORT" "${args[@]}")"
      stop_stead
      start_redis
      case $workload in
        hot) result=$(redis_run hot "$connections" INCR hot) ;;
        spread) result=$(redis_run spread "$connections" -r $OBJECTS INCR key:__rand_int__) ;;
        ratelimit) result=$(redis_run ratelimit "$connections" -r $OBJECTS EVALSHA "$SHA" 1 rl:__rand_int__ 100 60000) ;;
      esac
      REDIS_RATE[$workload]=${result%% *}
      record "redis-$workload" "$connections" "$result"
      stop_redis
    done
  done
done

field() { # name connections field-number -> median of that field
  printf '%s' "${RESULTS["$1 $2"]}" | awk -v f="$3" 'NF {print $f}' | median
}
errors() { printf '%s' "${RESULTS["$1 $2"]}" | awk 'NF {s += $3} END {print s + 0}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

echo "Machine: $(nproc) cores, $(uname -sr). Server pinned to core 0, load generator to core 1;"
echo "${SECONDS_PER_RUN}s per run, medians of $RUNS interleaved runs; ratios are of the medians."
echo
echo "| connections | workload | stead req/s | stead p99 ms | Redis req/s | Redis p99 ms | stead / Redis | stead / floor |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|"
for connections in "${CONNECTION_COUNTS[@]}"; do
  floor=$(field hello "$connections" 1)
  echo "| $connections | floor (\`serve --hello\`, GET /healthz) | $floor | $(awk -v u="$(field hello "$connections" 2)" 'BEGIN{printf "%.2f", u/1000}') | | | | 1.00 |"
  for workload in hot spread ratelimit; do
    case $workload in
      hot) label="increment one object (Redis: INCR one key)" ;;
      spread) label="increment over $OBJECTS objects (Redis: INCR over $OBJECTS keys)" ;;
      ratelimit) label="sliding-window rate limit, $OBJECTS keys (Redis: Lua on a sorted set)" ;;
    esac
    s_rps=$(field "stead-$workload" "$connections" 1)
    r_rps=$(field "redis-$workload" "$connections" 1)
    s_p99=$(awk -v u="$(field "stead-$workload" "$connections" 2)" 'BEGIN{printf "%.2f", u/1000}')
    r_p99=$(awk -v u="$(field "redis-$workload" "$connections" 2)" 'BEGIN{printf "%.2f", u/1000}')
    errs=$(errors "stead-$workload" "$connections")
    # wrk counts any non-2xx: for the rate limiter, a 429 on one of the randomly drawn keys
    # that passed its limit counts here too.
    [ "$errs" != 0 ] && label="$label ($errs stead responses not 2xx or failed)"
    echo "| $connections | $label | $s_rps | $s_p99 | $r_rps | $r_p99 | $(ratio "$s_rps" "$r_rps") | $(ratio "$s_rps" "$floor") |"
  done
done
