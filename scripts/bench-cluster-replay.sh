#!/usr/bin/env bash
# How long a cluster node takes to start from the stream: one nats-server (replicas 1) or a
# cluster of three (replicas 3), a node (`--cores 1`, 256 partitions) that takes N increments
# over 1,000 counters (`stead bench --requests N`), is killed with SIGKILL and started again:
# the time from the start to its listening (fence 256 partitions, replay, serve), and the
# batches it replayed. Medians of interleaved runs. Needs nats-server.
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

# Prints "start_ms batches".
measure() { # replicas
  rm -rf "$WORK"/nats-*
  local nats
  if [ "$1" = 1 ]; then
    start_nats_single 14422 "$WORK"; nats='"nats://127.0.0.1:14422"'
  else
    start_nats_cluster 14430 "$WORK"
    nats='"nats://127.0.0.1:14431", "nats://127.0.0.1:14432", "nats://127.0.0.1:14433"'
  fi
  printf '[storage]\npartitions = 256\n\n[cluster]\nnats = [%s]\nnode_id = "bench"\nreplicas = %s\n' \
    "$nats" "$1" >"$WORK/cluster.toml"
  start_stead --config "$WORK/cluster.toml"
  "$BIN" bench --url "http://127.0.0.1:$PORT" --scenario counter-spread --objects 1000 \
    --connections 32 --requests "$REQUESTS" >/dev/null
  kill -KILL "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=
  local started=$(date +%s%N)
  start_stead --config "$WORK/cluster.toml"
  local ready=$(date +%s%N)
  local batches
  batches=$(grep -o 'rebuilt from the log.*batches[^ ]*=[^ ]*[0-9]\+' "$WORK/server.log" | grep -o '[0-9]\+$' | tail -1)
  stop_stead
  stop_nats
  wait 2>/dev/null || true
  echo "$(( (ready - started) / 1000000 )) ${batches:-0}"
}

declare -A RESULTS
for run in $(seq "$RUNS"); do
  for replicas in 1 3; do
    RESULTS[$replicas]+="$(measure "$replicas")"$'\n'
  done
done
echo "Machine: $(nproc) cores, $(uname -sr); $REQUESTS increments over 1,000 counters before the"
echo "SIGKILL; the start is timed until /healthz answers (curl every 100 ms); medians of $RUNS runs."
echo
echo "| replicas | batches replayed | start ms | batches/s |"
echo "|---:|---:|---:|---:|"
for replicas in 1 3; do
  awk -v r="$replicas" -v b="$(field "$replicas" 2)" -v t="$(field "$replicas" 1)" \
    'BEGIN { printf "| %d | %d | %d | %.0f |\n", r, b, t, (t > 0 ? b / (t / 1000) : 0) }'
done
