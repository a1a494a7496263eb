#!/usr/bin/env bash
# Runs scripts/cluster-probe (see its src/main.rs) against one nats-server with JetStream (R=1)
# and a cluster of three on loopback (R=3), each with a fresh store directory, then stops them.
# Needs nats-server (apt-get install nats-server). Usage: scripts/cluster-probe.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --manifest-path scripts/cluster-probe/Cargo.toml >/dev/null
PROBE=scripts/cluster-probe/target/release/cluster-probe
WORK=$(mktemp -d -p "$PWD" cluster-probe.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

nats-server -js -a 127.0.0.1 -p 14222 -sd "$WORK/single" >"$WORK/single.log" 2>&1 &
PIDS+=($!)
wait_port 14222
"$PROBE" nats://127.0.0.1:14222 1 "$WORK"

for n in 1 2 3; do
  routes=$(for m in 1 2 3; do if [ "$m" != "$n" ]; then printf 'nats://127.0.0.1:1525%s,' "$m"; fi; done)
  nats-server -js -a 127.0.0.1 -p "1524$n" -n "probe-$n" -sd "$WORK/n$n" --cluster_name probe \
    --cluster "nats://127.0.0.1:1525$n" --routes "${routes%,}" >"$WORK/n$n.log" 2>&1 &
  PIDS+=($!)
done
for n in 1 2 3; do wait_port "1524$n"; done
# JetStream needs its meta group elected before a stream can be made.
for _ in $(seq 100); do grep -q "JetStream cluster new metadata leader\|is the new leader\|Self is new JetStream cluster metadata leader" "$WORK"/n*.log && break; sleep 0.2; done
sleep 1
"$PROBE" nats://127.0.0.1:15241,nats://127.0.0.1:15242,nats://127.0.0.1:15243 3 "$WORK"
