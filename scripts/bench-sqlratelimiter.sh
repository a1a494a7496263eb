#!/usr/bin/env bash
# The SQL rate limiter against the key-value one and against Redis 7 running the same sliding
# window as a Lua script over a sorted set (`appendfsync always`: every server answers a check
# only once its write is on disk). 100 objects × 100 keys: `sqlratelimiter` checks 100 keys in
# each of 100 objects (one row per check, `COUNT(*)` over the (key, timestamp) index); the
# key-value `ratelimiter` and Redis check 10,000 keys. The limit (10^9) is never reached, so
# every check writes. Interleaved: each run measures all three, so noise falls on each.
#
# Server (stead --cores 1, or redis-server) pinned to core 0, load generator (`stead bench`,
# redis-benchmark) to core 1; loopback; a fresh data directory per measurement.
# Prints a Markdown table: medians over the runs and the ratios of the medians.
# Usage: scripts/bench-sqlratelimiter.sh [seconds] [runs] [connections]   (default: 10 3 32)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
RUNS=${2:-3}
CONNECTIONS=${3:-32}
PORT=18391
REDIS_PORT=16493
WORK_NAME=bench-sqlratelimiter
source scripts/bench-common.sh

# One stead measurement: "rps p99_us errors".
stead_run() { # scenario objects
  local file="$WORK/run.json"
  taskset -c 1 "$BIN" bench --url "http://127.0.0.1:$PORT" --scenario "$1" --objects "$2" \
    --connections "$CONNECTIONS" --duration "${SECONDS_PER_RUN}s" --warmup 1s --json "$file" \
    >"$WORK/bench.log" 2>&1 || [ -s "$file" ] || { cat "$WORK/bench.log" >&2; exit 1; }
  python3 - "$file" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
print(f"{run['throughput_rps']:.0f} {run['latency_ms']['p99'] * 1000:.0f} {run['errors']['total']}")
PY
}


# One Redis measurement: "rps p99_us errors", sized from the last run's rate.
REDIS_RATE=15000
redis_run() {
  local requests=$((REDIS_RATE * SECONDS_PER_RUN)) line
  line=$(taskset -c 1 redis-benchmark -p $REDIS_PORT -c "$CONNECTIONS" -n "$requests" --csv \
    -r 10000 EVALSHA "$SHA" 1 rl:__rand_int__ 1000000000 60000 2>/dev/null | tail -n 1)
  echo "$line" | tr -d '"' | awk -F, '{printf "%.0f %.0f 0\n", $2, $7 * 1000}'
}

declare -A RESULTS
record() { RESULTS["$1"]+="$2"$'\n'; }

for _ in $(seq "$RUNS"); do
  start_stead
  record sql "$(stead_run sqlratelimiter 100)"
  stop_stead
  start_stead
  record kv "$(stead_run ratelimit 10000)"
  stop_stead
  start_redis
  result=$(redis_run)
  REDIS_RATE=${result%% *}
  record redis "$result"
  stop_redis
done

errors() { printf '%s' "${RESULTS["$1"]}" | awk 'NF {s += $3} END {print s + 0}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
ms() { awk -v u="$1" 'BEGIN{printf "%.2f", u/1000}'; }

echo "Machine: $(nproc) cores, $(uname -sr). Server pinned to core 0, load generator to core 1;"
echo "$CONNECTIONS connections, ${SECONDS_PER_RUN}s per run, medians of $RUNS interleaved runs."
echo
echo "| limiter | req/s | p99 ms | errors | SQL limiter / this |"
echo "|---|---:|---:|---:|---:|"
sql=$(field sql 1)
for name in sql kv redis; do
  case $name in
    sql) label="stead \`sqlratelimiter\` (SQL, 100 objects × 100 keys)" ;;
    kv) label="stead \`ratelimiter\` (key-value, 10,000 objects)" ;;
    redis) label="Redis 7, Lua sliding window on a sorted set (10,000 keys)" ;;
  esac
  echo "| $label | $(field $name 1) | $(ms "$(field $name 2)") | $(errors $name) | $(ratio "$sql" "$(field $name 1)") |"
done
