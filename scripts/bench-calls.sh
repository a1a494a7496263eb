#!/usr/bin/env bash
# What a call between objects costs: the `sharded_counter` example's `sharded` increment (a
# write on the coordinator, then a typed call to one of its shards, which writes) against the
# built-in `counter` increment (one write), on the same server, over 1,000 objects each. With
# --cores 1 every call stays on its core; with 2 about half of them cross to the other core.
# Interleaved runs, medians. wrk on core 1 (with 2 server cores it shares a CPU with core 1).
# Usage: scripts/bench-calls.sh [seconds] [runs] [connections]   (default: 10 3 32)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
RUNS=${2:-3}
CONNECTIONS=${3:-32}
PORT=18084
cargo build --release --example sharded_counter >/dev/null
EXAMPLE=${CARGO_TARGET_DIR:-target}/release/examples/sharded_counter
WORK=$(mktemp -d -p "$PWD" bench-calls.XXXXXX)
SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Prints "rps p50_us p99_us".
measure() { # cores class
  rm -rf "$WORK/sharded-data"
  (cd "$WORK" && STEAD_CORES=$1 STEAD_LISTEN=127.0.0.1:$PORT exec "$OLDPWD/$EXAMPLE" >server.log 2>&1) &
  SERVER_PID=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" -s scripts/wrk-spread.lua \
    "http://127.0.0.1:$PORT" -- "$2" increment 1000 | grep STEADSUMMARY |
    sed -E 's/.*rps=([0-9]+) p50_us=([0-9]+) p99_us=([0-9]+).*/\1 \2 \3/'
  kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || true; SERVER_PID=
}

declare -A RESULTS
for run in $(seq "$RUNS"); do
  for cores in 1 2; do
    for class in counter sharded; do
      RESULTS["$cores $class"]+="$(measure "$cores" "$class")"$'\n'
    done
  done
done
field() { printf '%s' "${RESULTS["$1"]}" | awk -v f="$2" 'NF {print $f}' | median; }
echo "Machine: $(nproc) cores, $(uname -sr); wrk on core 1, $CONNECTIONS connections,"
echo "${SECONDS_PER_RUN}s per run, medians of $RUNS interleaved runs."
echo
echo "| server cores | counter req/s | p50 ms | p99 ms | sharded (write + call + write) req/s | p50 ms | p99 ms | sharded / counter |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
for cores in 1 2; do
  awk -v c="$cores" \
    -v r0="$(field "$cores counter" 1)" -v m0="$(field "$cores counter" 2)" -v p0="$(field "$cores counter" 3)" \
    -v r1="$(field "$cores sharded" 1)" -v m1="$(field "$cores sharded" 2)" -v p1="$(field "$cores sharded" 3)" \
    'BEGIN { printf "| %s | %d | %.2f | %.2f | %d | %.2f | %.2f | %.2f |\n",
      c, r0, m0 / 1000, p0 / 1000, r1, m1 / 1000, p1 / 1000, (r0 > 0 ? r1 / r0 : 0) }'
done
