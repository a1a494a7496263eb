#!/usr/bin/env bash
# A cluster on one machine: three nats-server processes with JetStream (client ports
# 4231-4233) and one stead node owning every partition (replicas 3), its data in
# ./cluster-data, on http://127.0.0.1:8080. A second node started the same way (another node
# id and port, NATS already up) is a standby: it forwards requests to the owner and takes the
# partitions over once the first one stops (README, Cluster). Ctrl-C stops the node (and NATS, in the terminal that started it);
# NATS's store stays in ./cluster-data/nats-*. Needs nats-server (apt-get install nats-server).
# Usage: scripts/cluster-local.sh [node-id] [port]   (default: a 8080)
set -euo pipefail
cd "$(dirname "$0")/.."
NODE=${1:-a}
PORT=${2:-8080}
DATA=$PWD/cluster-data
mkdir -p "$DATA"
cargo build --release --bin stead >/dev/null
source scripts/nats-cluster.sh
# The first node starts NATS (and stops it at the end); later ones use it.
if ! (exec 3<>/dev/tcp/127.0.0.1/4231) 2>/dev/null; then
  trap 'stop_nats; wait 2>/dev/null || true' EXIT
  start_nats_cluster 4230 "$DATA"
fi
cat >"$DATA/stead-$NODE.toml" <<TOML
[storage]
partitions = 256

[cluster]
nats = ["nats://127.0.0.1:4231", "nats://127.0.0.1:4232", "nats://127.0.0.1:4233"]
node_id = "$NODE"
replicas = 3
TOML
"${CARGO_TARGET_DIR:-target}/release/stead" serve --listen "127.0.0.1:$PORT" \
  --data-dir "$DATA/node-$NODE" --config "$DATA/stead-$NODE.toml"
