#!/usr/bin/env bash
# What TLS costs on the request path, by `stead bench` against two `stead serve --cores 1`
# (pinned to core 0): one plain, one with --tls-cert/--tls-key (a P-256 certificate made here by
# openssl). The bench runs on core 1, keep-alive connections, closed loop; `hello` (/healthz,
# no storage) and `counter-spread` (durable increments over 1,000 counters). Plain and TLS
# runs alternate; medians.
# Usage: scripts/bench-tls.sh [seconds] [runs] [connections]   (default: 5 3 16)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-5}
RUNS=${2:-3}
CONNECTIONS=${3:-16}
PORT=18091
TLS_PORT=18092
WORK_NAME=bench-tls
source scripts/bench-common.sh

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -addext "basicConstraints=critical,CA:FALSE" 2>/dev/null

start_stead
rm -rf "$WORK/tls-data"
wait_quiet
taskset -c 0 "$BIN" serve --listen 127.0.0.1:$TLS_PORT --data-dir "$WORK/tls-data" --cores 1 \
  --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" >"$WORK/tls-server.log" 2>&1 &
TLS_PID=$!
trap 'kill $TLS_PID 2>/dev/null || true; cleanup' EXIT
for _ in $(seq 100); do
  curl -sf --cacert "$WORK/cert.pem" "https://127.0.0.1:$TLS_PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

# Prints "rps p50_us p99_us" of one run.
measure() { # url scenario
  "$BIN" bench --url "$1" --tls-ca "$WORK/cert.pem" --scenario "$2" \
    --connections "$CONNECTIONS" --bench-cores 1 --duration "${SECONDS_PER_RUN}s" --warmup 1s \
    --json "$WORK/run.json" >/dev/null
  python3 -c 'import json,sys; f=json.load(open(sys.argv[1])); l=f["latency_ms"]
print(round(f["throughput_rps"]), round(l["p50"]*1000), round(l["p99"]*1000))' "$WORK/run.json"
}

declare -A RESULTS
for run in $(seq "$RUNS"); do
  for scenario in hello counter-spread; do
    RESULTS["plain $scenario"]+="$(measure "http://127.0.0.1:$PORT" "$scenario")"$'\n'
    RESULTS["tls $scenario"]+="$(measure "https://127.0.0.1:$TLS_PORT" "$scenario")"$'\n'
  done
done
stop_stead
echo "Machine: $(nproc) cores, $(uname -sr); stead serve --cores 1 on core 0, stead bench on"
echo "core 1, $CONNECTIONS keep-alive connections; ${SECONDS_PER_RUN}s per run after 1s warm-up,"
echo "medians of $RUNS alternating runs."
echo
echo "| scenario | plain req/s | TLS req/s | TLS / plain | plain p50 µs | TLS p50 µs | plain p99 µs | TLS p99 µs |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for scenario in hello counter-spread; do
  awk -v s="$scenario" -v pr="$(field "plain $scenario" 1)" -v tr="$(field "tls $scenario" 1)" \
    -v p5="$(field "plain $scenario" 2)" -v t5="$(field "tls $scenario" 2)" \
    -v p9="$(field "plain $scenario" 3)" -v t9="$(field "tls $scenario" 3)" \
    'BEGIN { printf "| %s | %d | %d | %.2f | %d | %d | %d | %d |\n", s, pr, tr, tr / pr, p5, t5, p9, t9 }'
done
