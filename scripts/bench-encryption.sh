#!/usr/bin/env bash
# What encryption at rest costs the write path, by `stead bench` against two `stead serve
# --cores 1` (pinned to core 0): one plain, one with --encryption-key-file (a random key made
# here). The bench runs on core 1, closed loop; `counter-spread` (durable increments over
# 10,000 counters) and `sqlratelimiter` (SQL pages, 4 KiB values written back each request).
# Plain and encrypted runs alternate; medians. Recovery: `cargo bench -p stead-storage --bench
# recovery` with and without STEAD_RECOVERY_ENCRYPTED=1 (see BENCHMARKS.md).
# Usage: scripts/bench-encryption.sh [seconds] [runs] [connections]   (default: 5 3 32)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-5}
RUNS=${2:-3}
CONNECTIONS=${3:-32}
PORT=18093
SEALED_PORT=18094
WORK_NAME=bench-encryption
source scripts/bench-common.sh

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$WORK/keys"
echo >> "$WORK/keys"

start_stead
rm -rf "$WORK/sealed-data"
wait_quiet
taskset -c 0 "$BIN" serve --listen 127.0.0.1:$SEALED_PORT --data-dir "$WORK/sealed-data" \
  --cores 1 --encryption-key-file "$WORK/keys" >"$WORK/sealed-server.log" 2>&1 &
SEALED_PID=$!
trap 'kill $SEALED_PID 2>/dev/null || true; cleanup' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$SEALED_PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

# Prints "rps p50_us p99_us" of one run.
measure() { # port scenario objects
  "$BIN" bench --url "http://127.0.0.1:$1" --scenario "$2" --objects "$3" \
    --connections "$CONNECTIONS" --bench-cores 1 --duration "${SECONDS_PER_RUN}s" --warmup 1s \
    --json "$WORK/run.json" >/dev/null
  python3 -c 'import json,sys; f=json.load(open(sys.argv[1])); l=f["latency_ms"]
print(round(f["throughput_rps"]), round(l["p50"]*1000), round(l["p99"]*1000))' "$WORK/run.json"
}

declare -A RESULTS
for run in $(seq "$RUNS"); do
  for scenario in "counter-spread 10000" "sqlratelimiter 100"; do
    set -- $scenario
    RESULTS["plain $1"]+="$(measure "$PORT" "$1" "$2")"$'\n'
    RESULTS["sealed $1"]+="$(measure "$SEALED_PORT" "$1" "$2")"$'\n'
  done
done
stop_stead
echo "Machine: $(nproc) cores, $(uname -sr); stead serve --cores 1 on core 0, stead bench on"
echo "core 1, $CONNECTIONS connections; ${SECONDS_PER_RUN}s per run after 1s warm-up, medians of"
echo "$RUNS alternating runs."
echo
echo "| scenario | plain req/s | encrypted req/s | encrypted / plain | plain p50 µs | encrypted p50 µs | plain p99 µs | encrypted p99 µs |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for scenario in counter-spread sqlratelimiter; do
  awk -v s="$scenario" -v pr="$(field "plain $scenario" 1)" -v tr="$(field "sealed $scenario" 1)" \
    -v p5="$(field "plain $scenario" 2)" -v t5="$(field "sealed $scenario" 2)" \
    -v p9="$(field "plain $scenario" 3)" -v t9="$(field "sealed $scenario" 3)" \
    'BEGIN { printf "| %s | %d | %d | %.2f | %d | %d | %d | %d |\n", s, pr, tr, tr / pr, p5, t5, p9, t9 }'
done
