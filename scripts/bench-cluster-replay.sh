#!/usr/bin/env bash
# How long a cluster node takes to start from the stream: one nats-server (replicas 1) or a
# cluster of three (replicas 3), a node (`--cores 1`, 256 partitions) that takes N increments
# over 1,000 counters (`stead bench --requests N`), is stopped (SIGTERM: it gives its node key
# up, so the start does not wait for it to expire) and started again, its store rebuilt:
# the time from the start to /healthz answering 200 (fence 256 partitions, rebuild, serve), the
# batches it replayed from the log and from snapshots, without snapshots
# (`snapshot_batches = 0`) and with one every 50 batches of a partition. Medians of
# interleaved runs. Needs nats-server.
# Usage: scripts/bench-cluster-replay.sh [increments] [runs]   (default: 100000 3)
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${1:-100000}
RUNS=${2:-3}
PORT=18089
WORK_NAME=bench-cluster-replay
source scripts/bench-common.sh
source scripts/nats-cluster.sh
trap 'stop_nats; cleanup' EXIT

# Prints "start_ms log_batches snapshot_batches".
measure() { # replicas snapshot_batches
  rm -rf "$WORK"/nats-*
  local nats
  if [ "$1" = 1 ]; then
    start_nats_single 14422 "$WORK"; nats='"nats://127.0.0.1:14422"'
  else
    start_nats_cluster 14430 "$WORK"
    nats='"nats://127.0.0.1:14431", "nats://127.0.0.1:14432", "nats://127.0.0.1:14433"'
  fi
  printf '[storage]\npartitions = 256\n\n[cluster]\nnats = [%s]\nnode_id = "bench"\nreplicas = %s\nsnapshot_batches = %s\n' \
    "$nats" "$1" "$2" >"$WORK/cluster.toml"
  start_stead --config "$WORK/cluster.toml"
  "$BIN" bench --url "http://127.0.0.1:$PORT" --scenario counter-spread --objects 1000 \
    --connections 32 --requests "$REQUESTS" >/dev/null
  stop_stead
  local started=$(date +%s%N)
  start_stead --config "$WORK/cluster.toml"
  local ready=$(date +%s%N)
  local batches from_snapshots
  # The control thread's line of the rebuild (one core): "… from_snapshots=N … from_log=M".
  local line
  line=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/server.log" | grep 'rebuilt from snapshots and the log' | tail -1)
  batches=$(printf '%s' "$line" | grep -o 'from_log=[0-9]*' | cut -d= -f2)
  from_snapshots=$(printf '%s' "$line" | grep -o 'from_snapshots=[0-9]*' | cut -d= -f2)
  stop_stead
  stop_nats
  wait 2>/dev/null || true
  echo "$(( (ready - started) / 1000000 )) ${batches:-0} ${from_snapshots:-0}"
}

declare -A RESULTS
CONFIGS=("1 0" "3 0" "1 50" "3 50")
for run in $(seq "$RUNS"); do
  for config in "${CONFIGS[@]}"; do
    # shellcheck disable=SC2086
    RESULTS[$config]+="$(measure $config)"$'\n'
  done
done
echo "Machine: $(nproc) cores, $(uname -sr); $REQUESTS increments over 1,000 counters before the"
echo "stop; the start is timed until /healthz answers (curl every 100 ms); medians of $RUNS runs."
echo
echo "| replicas | snapshot_batches | batches replayed from the log | batches from snapshots | start ms |"
echo "|---:|---:|---:|---:|---:|"
for config in "${CONFIGS[@]}"; do
  set -- $config
  echo "| $1 | $2 | $(field "$config" 2) | $(field "$config" 3) | $(field "$config" 1) |"
done
