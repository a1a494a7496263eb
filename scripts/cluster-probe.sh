#!/usr/bin/env bash
# Runs scripts/cluster-probe (see its src/main.rs) against one nats-server with JetStream (R=1)
# and a cluster of three on loopback (R=3), each with a fresh store directory, then stops them.
# Needs nats-server (apt-get install nats-server). Usage: scripts/cluster-probe.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --manifest-path scripts/cluster-probe/Cargo.toml >/dev/null
PROBE=scripts/cluster-probe/target/release/cluster-probe
WORK=$(mktemp -d -p "$PWD" cluster-probe.XXXXXX)
source scripts/nats-cluster.sh
trap 'stop_nats; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
start_nats_single 14222 "$WORK"
"$PROBE" nats://127.0.0.1:14222 1 "$WORK"
start_nats_cluster 15240 "$WORK"
sleep 1
"$PROBE" nats://127.0.0.1:15241,nats://127.0.0.1:15242,nats://127.0.0.1:15243 3 "$WORK"
