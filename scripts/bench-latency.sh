#!/usr/bin/env bash
# Latency of the durable write workloads over a long run, and the longest stall of the core
# serving them: `stead serve --cores 1` pinned to core 0 (default configuration, so compaction
# runs by itself), `stead bench` pinned to core 1, 32 connections. Draws each run's latency by
# percentile (`stead bench --plot`) into docs/bench/, and reads the core's stall probe and
# compaction count from /metrics afterwards. Prints a Markdown table.
#
# Usage: scripts/bench-latency.sh [seconds]   (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-60}
PORT=18082
BIN=${CARGO_TARGET_DIR:-target}/release/stead
cargo build --release --bin stead >/dev/null
WORK=$(mktemp -d -p "$PWD" bench-latency.XXXXXX)
mkdir -p docs/bench
cleanup() {
  [ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

metric() { # name -> value (the first core's)
  awk -v name="$1" 'index($1, name "{") == 1 || $1 == name {print $2; exit}' "$WORK/metrics"
}
ms() { awk -v s="${1:-}" 'BEGIN { if (s == "") print "n/a"; else printf "%.1f", s * 1000 }'; }

echo "Machine: $(nproc) cores, $(uname -sr). \`stead serve --cores 1\` on core 0, \`stead bench"
echo "--bench-cores 1 --connections 32 --duration ${SECONDS_PER_RUN}s --warmup 2s\` on core 1; one run each."
echo "Stalls: the core's probe (a 1 ms sleep, how late it wakes; \`stead_core_stall_max_seconds\`,"
echo "\`stead_core_busy_stall_max_seconds\` = the part the core itself was busy)."
echo
echo "| workload | req/s | p50 ms | p99 ms | p99.9 ms | max ms | longest stall ms | busy part ms | stalls > 10 ms | compactions | plot |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
for entry in "counter-hot|--scenario counter-hot" \
  "counter-spread|--scenario counter-spread --objects 10000" \
  "ratelimit|--scenario ratelimit --objects 10000"; do
  name=${entry%%|*}
  flags=${entry#*|}
  rm -rf "$WORK/data"
  taskset -c 0 "$BIN" serve --listen 127.0.0.1:$PORT --data-dir "$WORK/data" --cores 1 \
    >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  plot=docs/bench/latency-$name.svg
  # shellcheck disable=SC2086
  "$BIN" bench --url "http://127.0.0.1:$PORT" $flags --bench-cores 1 --connections 32 \
    --duration "${SECONDS_PER_RUN}s" --warmup 2s --json "$WORK/$name.json" --plot "$plot" \
    >"$WORK/bench.log" 2>&1 || [ -s "$WORK/$name.json" ] || { cat "$WORK/bench.log" >&2; exit 1; }
  curl -sf "http://127.0.0.1:$PORT/metrics" >"$WORK/metrics"
  kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || true; SERVER_PID=
  python3 - "$name" "$WORK/$name.json" "$plot" \
    "$(ms "$(metric stead_core_stall_max_seconds)")" "$(ms "$(metric stead_core_busy_stall_max_seconds)")" \
    "$(metric stead_core_stalls_over_10ms_total)" "$(metric stead_storage_compactions_total)" <<'PY'
import json, sys
name, path, plot, stall, busy, stalls, compactions = sys.argv[1:]
run = json.load(open(path))
lat = run["latency_ms"]
errors = run["errors"]["total"]
label = name if errors == 0 else f"{name} ({errors} errors)"
print(f"| {label} | {run['throughput_rps']:.0f} | {lat['p50']:.2f} | {lat['p99']:.2f} | "
      f"{lat['p999']:.2f} | {lat['max']:.2f} | {stall} | {busy} | {stalls or 'n/a'} | "
      f"{compactions or 'n/a'} | `{plot}` |")
PY
done
