#!/usr/bin/env bash
# A cluster on one machine: three nats-server processes with JetStream (client ports
# 4231-4233) and three stead nodes "a", "b", "c" on http://127.0.0.1:8080, :8081 and :8082
# (replicas 3, 256 partitions), each owning a third of the partitions and forwarding requests
# for the others' (README, Cluster); data and logs in ./cluster-data. Ctrl-C stops the nodes
# (SIGTERM: each gives its partitions up) and NATS; NATS's store stays in ./cluster-data/nats-*.
# With a node id and a port it starts that one node only, against the NATS already running
# (a fourth node gets a share of the partitions; Ctrl-C stops it and the others take them).
# Needs nats-server (apt-get install nats-server).
# Usage: scripts/cluster-local.sh [node-id port]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=$PWD/cluster-data
BIN=${CARGO_TARGET_DIR:-target}/release/stead
mkdir -p "$DATA"
cargo build --release --bin stead >/dev/null
source scripts/nats-cluster.sh

config() { # node
  cat >"$DATA/stead-$1.toml" <<TOML
[storage]
partitions = 256

[cluster]
nats = ["nats://127.0.0.1:4231", "nats://127.0.0.1:4232", "nats://127.0.0.1:4233"]
node_id = "$1"
replicas = 3
TOML
}

if [ $# -ge 2 ]; then
  config "$1"
  exec "$BIN" serve --listen "127.0.0.1:$2" --data-dir "$DATA/node-$1" --config "$DATA/stead-$1.toml"
fi

PIDS=()
stop_all() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  stop_nats
  wait 2>/dev/null || true
}
trap stop_all EXIT
trap 'exit 130' INT TERM
start_nats_cluster 4230 "$DATA"
# One after the other: the first creates the cluster's buckets and stream (three nodes
# creating them at once can time out while the NATS servers elect the new streams' leaders).
port=8080
for node in a b c; do
  config "$node"
  "$BIN" serve --listen "127.0.0.1:$port" --data-dir "$DATA/node-$node" \
    --config "$DATA/stead-$node.toml" >"$DATA/node-$node.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  echo "node $node on http://127.0.0.1:$port: $(curl -s "http://127.0.0.1:$port/healthz")"
  port=$((port + 1))
done
echo "three nodes serve (logs in $DATA/node-*.log); Ctrl-C stops them"
wait "${PIDS[@]}"
