#!/usr/bin/env bash
# Engine macro benchmarks: stead against its own floor (--hello) and against Redis 7 with
# appendfsync always, on the same machine in the same run. Prints a Markdown section.
#
# Server on core 0, load generator on core 1 (this machine has 2 cores), loopback only.
# Needs: wrk, redis-server, redis-tools (Debian). Usage: scripts/bench-engine.sh [seconds] [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
RUNS=${2:-3}
CONNECTIONS=32
PORT=18080
REDIS_PORT=16390
BIN=${CARGO_TARGET_DIR:-target}/release/stead
cargo build --release --bin stead >/dev/null
WORK=$(mktemp -d -p "$PWD" bench-engine.XXXXXX)
cleanup() {
  [ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null || true
  [ -n "${REDIS_PID:-}" ] && kill "$REDIS_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

start_stead() { # extra args...
  rm -rf "$WORK/data"
  taskset -c 0 "$BIN" serve --listen 127.0.0.1:$PORT --data-dir "$WORK/data" --cores 1 "$@" \
    >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "stead did not start" >&2; cat "$WORK/server.log" >&2; exit 1
}
stop_stead() { kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || true; SERVER_PID=; }

wrk_run() { # url [script args...] -> "rps p50_us p99_us errors"
  local url=$1; shift
  local out
  if [ $# -gt 0 ]; then
    out=$(taskset -c 1 wrk -t1 -c$CONNECTIONS -d"${SECONDS_PER_RUN}s" -s scripts/wrk-spread.lua "$url" -- "$@")
  else
    out=$(taskset -c 1 wrk -t1 -c$CONNECTIONS -d"${SECONDS_PER_RUN}s" -s scripts/wrk-spread.lua "$url" -- fixed)
  fi
  echo "$out" | grep STEADSUMMARY | sed -E 's/.*rps=([0-9]+) p50_us=([0-9]+) p99_us=([0-9]+) errors=([0-9]+) non2xx=([0-9]+).*/\1 \2 \3 \4 \5/'
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A RPS P99 ERR
measure() { # name server-flags url [script args]; a fresh server and data dir for every run
  local name=$1 flags=$2; shift 2
  local rps=() p99=() errors=0
  for _ in $(seq "$RUNS"); do
    # shellcheck disable=SC2086
    start_stead $flags
    read -r r _ p e n < <(wrk_run "$@")
    stop_stead
    rps+=("$r"); p99+=("$p"); errors=$((errors + e + n))
  done
  RPS[$name]=$(printf '%s\n' "${rps[@]}" | median)
  P99[$name]=$(printf '%s\n' "${p99[@]}" | median)
  ERR[$name]=$errors
}

# The floor: the same HTTP stack answering a fixed body.
measure hello --hello "http://127.0.0.1:$PORT/objects/counter/x/value"
measure hot "" "http://127.0.0.1:$PORT" counter increment 1
measure spread "" "http://127.0.0.1:$PORT" counter increment 10000
measure read "" "http://127.0.0.1:$PORT" counter value 1
measure ratelimit "" "http://127.0.0.1:$PORT" ratelimiter check 10000

# Redis 7, answering only after fsync (appendonly yes, appendfsync always).
mkdir -p "$WORK/redis"
taskset -c 0 redis-server --port $REDIS_PORT --bind 127.0.0.1 --dir "$WORK/redis" --save '' \
  --appendonly yes --appendfsync always --daemonize no >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 100); do redis-cli -p $REDIS_PORT ping >/dev/null 2>&1 && break; sleep 0.1; done
SHA=$(redis-cli -p $REDIS_PORT SCRIPT LOAD "$(cat scripts/ratelimit.lua)")
REQUESTS=$((SECONDS_PER_RUN * 4000))
redis_run() { # args... -> requests per second
  taskset -c 1 redis-benchmark -p $REDIS_PORT -c $CONNECTIONS -n $REQUESTS --csv "$@" 2>/dev/null |
    tail -n 1 | awk -F'","' '{gsub(/"/,"",$2); print $2}'
}
declare -A REDIS
for name in incr_hot incr_spread ratelimit; do
  values=()
  for _ in $(seq "$RUNS"); do
    case $name in
      incr_hot) values+=("$(redis_run INCR hot)") ;;
      incr_spread) values+=("$(redis_run -r 10000 INCR key:__rand_int__)") ;;
      ratelimit) values+=("$(redis_run -r 10000 EVALSHA "$SHA" 1 rl:__rand_int__ 100 60000)") ;;
    esac
  done
  REDIS[$name]=$(printf '%s\n' "${values[@]}" | median)
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo "Machine: $(nproc) cores, $(uname -sr). stead --cores 1 pinned to core 0, load generator on core 1, $CONNECTIONS connections, ${SECONDS_PER_RUN}s per run, median of $RUNS runs."
echo
echo "| workload | stead req/s | p99 (µs) | errors | vs floor | Redis req/s | stead / Redis |"
echo "|---|---:|---:|---:|---:|---:|---:|"
echo "| floor (--hello) | ${RPS[hello]} | ${P99[hello]} | ${ERR[hello]} | 1.00 | | |"
echo "| increment, one object | ${RPS[hot]} | ${P99[hot]} | ${ERR[hot]} | $(ratio "${RPS[hot]}" "${RPS[hello]}") | ${REDIS[incr_hot]} (INCR one key) | $(ratio "${RPS[hot]}" "${REDIS[incr_hot]}") |"
echo "| increment, 10,000 objects | ${RPS[spread]} | ${P99[spread]} | ${ERR[spread]} | $(ratio "${RPS[spread]}" "${RPS[hello]}") | ${REDIS[incr_spread]} (INCR -r 10000) | $(ratio "${RPS[spread]}" "${REDIS[incr_spread]}") |"
echo "| value, one object | ${RPS[read]} | ${P99[read]} | ${ERR[read]} | $(ratio "${RPS[read]}" "${RPS[hello]}") | | |"
echo "| ratelimiter, 10,000 keys | ${RPS[ratelimit]} | ${P99[ratelimit]} | ${ERR[ratelimit]} | $(ratio "${RPS[ratelimit]}" "${RPS[hello]}") | ${REDIS[ratelimit]} (Lua sorted-set limiter) | $(ratio "${RPS[ratelimit]}" "${REDIS[ratelimit]}") |"
