#!/usr/bin/env bash
# WebSocket fan-out through `chat` rooms, by `stead bench --scenario chat-fanout` against
# `stead serve --cores 1` (pinned to core 0; the bench on core 1): one room of 100 and of 1,000
# members, and 10 rooms of 100; closed loop (each room's sender keeps 8 messages in flight,
# so latency includes the queue) and open loop at 100 messages/s per room (the latency of one
# broadcast). Interleaved runs, medians.
# Usage: scripts/bench-chat-fanout.sh [seconds] [runs]   (default: 5 3)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-5}
RUNS=${2:-3}
PORT=18087
WORK_NAME=bench-chat-fanout
source scripts/bench-common.sh

# Prints "deliveries_per_s messages_per_s p50_us p99_us" of one run.
measure() { # members rooms load
  local args=(--url "http://127.0.0.1:$PORT" --scenario chat-fanout --connections "$1"
    --objects "$2" --duration "${SECONDS_PER_RUN}s" --warmup 1s --bench-cores 1
    --json "$WORK/run.json")
  if [ "$3" = paced ]; then args+=(--rate "$((100 * $2))"); else args+=(--pipeline 8); fi
  "$BIN" bench "${args[@]}" >/dev/null
  python3 -c 'import json,sys; f=json.load(open(sys.argv[1])); l=f["latency_ms"]
assert f["errors"]["total"] == 0, f["errors"]
print(round(f["throughput_rps"]), round(f["messages_sent"] / f["elapsed_s"]),
      round(l["p50"]*1000), round(l["p99"]*1000))' "$WORK/run.json"
}

SHAPES=("100 1" "1000 1" "1000 10")
declare -A RESULTS
start_stead
for run in $(seq "$RUNS"); do
  for shape in "${SHAPES[@]}"; do
    for load in flooded paced; do
      # shellcheck disable=SC2086
      RESULTS["$shape $load"]+="$(measure $shape $load)"$'\n'
    done
  done
done
stop_stead
echo "Machine: $(nproc) cores, $(uname -sr); stead serve --cores 1 on core 0, stead bench on"
echo "core 1; ${SECONDS_PER_RUN}s per run after 1s warm-up, medians of $RUNS interleaved runs."
echo
echo "| members | rooms | load | deliveries/s | messages/s | p50 ms | p99 ms |"
echo "|---:|---:|---|---:|---:|---:|---:|"
for shape in "${SHAPES[@]}"; do
  for load in flooded paced; do
    set -- $shape
    awk -v m="$1" -v r="$2" -v l="$load" -v d="$(field "$shape $load" 1)" \
      -v s="$(field "$shape $load" 2)" -v p="$(field "$shape $load" 3)" -v q="$(field "$shape $load" 4)" \
      'BEGIN { printf "| %d | %d | %s | %d | %d | %.2f | %.2f |\n", m, r, l, d, s, p / 1000, q / 1000 }'
  done
done
