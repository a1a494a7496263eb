#!/usr/bin/env bash
# A cluster on one machine: three nats-server processes with JetStream (client ports
# 4231-4233) and one stead node owning every partition (replicas 3), its data in
# ./cluster-data, on http://127.0.0.1:8080. Start a second node with another --node-id (see
# README, Cluster) to take the partitions over. Ctrl-C stops everything; NATS's store stays in
# ./cluster-data/nats-*. Needs nats-server (apt-get install nats-server).
# Usage: scripts/cluster-local.sh [node-id]   (default: a)
set -euo pipefail
cd "$(dirname "$0")/.."
NODE=${1:-a}
DATA=$PWD/cluster-data
mkdir -p "$DATA"
cargo build --release --bin stead >/dev/null
source scripts/nats-cluster.sh
trap 'stop_nats; wait 2>/dev/null || true' EXIT
start_nats_cluster 4230 "$DATA"
cat >"$DATA/stead.toml" <<TOML
[storage]
partitions = 256

[cluster]
nats = ["nats://127.0.0.1:4231", "nats://127.0.0.1:4232", "nats://127.0.0.1:4233"]
node_id = "$NODE"
replicas = 3
TOML
"${CARGO_TARGET_DIR:-target}/release/stead" serve --listen 127.0.0.1:8080 \
  --data-dir "$DATA/node-$NODE" --config "$DATA/stead.toml"
