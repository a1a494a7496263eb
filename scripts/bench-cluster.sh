#!/usr/bin/env bash
# What replication costs a write: `stead bench` (counter-hot and counter-spread over 1,000
# objects, 32 connections, closed loop) against one `stead serve --cores 1` (pinned to core 0)
# alone, as the one node of a cluster on one nats-server (replicas 1) and on three (replicas
# 3); through the second node of a two-node cluster (replicas 1: half the partitions are the
# first node's, so half the requests are forwarded); and through the first node of a
# three-node cluster on three NATS servers (replicas 3; two thirds forwarded). The extra nodes
# run `--cores 1` on core 1 with the bench; NATS runs unpinned on the same 2 cores. Each run
# gets fresh NATS stores and fresh nodes. Interleaved runs, medians. Needs nats-server.
# Usage: scripts/bench-cluster.sh [seconds] [runs]   (default: 5 3)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-5}
RUNS=${2:-3}
PORT=18088
WORK_NAME=bench-cluster
source scripts/bench-common.sh
source scripts/nats-cluster.sh
trap 'for pid in "${EXTRA_PIDS[@]}"; do kill "$pid" 2>/dev/null; done; stop_nats; cleanup' EXIT

EXTRA_PIDS=()
# Starts one more node of the cluster (`--cores 1`, pinned to core 1) on port $2 and waits
# until it serves its share of the partitions.
start_node() { # node port
  # A node of the previous run may still be finishing its stop on this port.
  for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null || break; sleep 0.1; done
  sed "s/node_id = \"bench\"/node_id = \"$1\"/" "$WORK/cluster.toml" >"$WORK/$1.toml"
  taskset -c 1 "$BIN" serve --listen "127.0.0.1:$2" --data-dir "$WORK/$1" --cores 1 \
    --config "$WORK/$1.toml" >"$WORK/$1.log" 2>&1 &
  EXTRA_PIDS+=($!)
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$2/healthz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "node $1 did not serve" >&2; cat "$WORK/$1.log" >&2; ss -ltnp >&2; exit 1
}
# Waits until the first node (port $PORT) serves exactly its share again ($1 partitions).
wait_share() { # partitions
  for _ in $(seq 600); do
    local served
    served=$(curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^stead_cluster_partitions_served/ { s += $2 } END { print s + 0 }')
    [ "$served" = "$1" ] && return 0
    sleep 0.05
  done
  echo "the first node did not settle at $1 partitions" >&2; exit 1
}

# Prints "rps p50_us p99_us" of one run.
measure() { # mode scenario
  local config=() nats target=$PORT pid
  # Runs in a subshell of its own ($(measure …)): what it starts stops with it on a failure.
  trap 'for pid in "${EXTRA_PIDS[@]}" ${SERVER_PID:-}; do kill "$pid" 2>/dev/null; done; stop_nats' EXIT
  rm -rf "$WORK"/nats-* "$WORK"/b "$WORK"/c
  case $1 in
    single) ;;
    r1|r1-two) start_nats_single 14322 "$WORK"; nats='"nats://127.0.0.1:14322"';;
    r3|r3-three) start_nats_cluster 14330 "$WORK"
        nats='"nats://127.0.0.1:14331", "nats://127.0.0.1:14332", "nats://127.0.0.1:14333"';;
  esac
  if [ "$1" != single ]; then
    local replicas=${1#r}
    replicas=${replicas%%-*}
    printf '[storage]\npartitions = 256\n\n[cluster]\nnats = [%s]\nnode_id = "bench"\nreplicas = %s\n' \
      "$nats" "$replicas" >"$WORK/cluster.toml"
    config=(--config "$WORK/cluster.toml")
  fi
  start_stead "${config[@]}"
  case $1 in
    # Through the second node: half the requests are forwarded to the first.
    r1-two) start_node b $((PORT + 1)); wait_share 128; target=$((PORT + 1));;
    # Through the first of three: two thirds are forwarded.
    r3-three) start_node b $((PORT + 2)); start_node c $((PORT + 3)); wait_share 86;;
  esac
  taskset -c 1 "$BIN" bench --url "http://127.0.0.1:$target" --scenario "$2" --objects 1000 \
    --connections 32 --duration "${SECONDS_PER_RUN}s" --warmup 1s --json "$WORK/run.json" >/dev/null
  for pid in "${EXTRA_PIDS[@]}"; do kill -TERM "$pid"; wait "$pid" || true; done
  EXTRA_PIDS=()
  stop_stead
  stop_nats
  wait 2>/dev/null || true
  python3 -c 'import json,sys; f=json.load(open(sys.argv[1])); l=f["latency_ms"]
assert f["errors"]["total"] == 0, f["errors"]
print(round(f["throughput_rps"]), round(l["p50"]*1000), round(l["p99"]*1000))' "$WORK/run.json"
}

declare -A RESULTS
for run in $(seq "$RUNS"); do
  for scenario in counter-hot counter-spread; do
    for mode in single r1 r3 r1-two r3-three; do
      RESULTS["$mode $scenario"]+="$(measure "$mode" "$scenario")"$'\n'
    done
  done
done
echo "Machine: $(nproc) cores, $(uname -sr); stead serve --cores 1 on core 0, stead bench on core 1,"
echo "nats-server unpinned; ${SECONDS_PER_RUN}s per run after 1s warm-up, medians of $RUNS interleaved runs."
echo
echo "| scenario | node | req/s | p50 ms | p99 ms | req/s / alone |"
echo "|---|---|---:|---:|---:|---:|"
for scenario in counter-hot counter-spread; do
  base=$(field "single $scenario" 1)
  for mode in single r1 r3 r1-two r3-three; do
    case $mode in single) name="alone";; r1) name="cluster of 1, 1 NATS, replicas 1";;
      r3) name="cluster of 1, 3 NATS, replicas 3";;
      r1-two) name="cluster of 2, 1 NATS, replicas 1, through the second (1/2 forwarded)";;
      r3-three) name="cluster of 3, 3 NATS, replicas 3, through the first (2/3 forwarded)";; esac
    awk -v s="$scenario" -v n="$name" -v r="$(field "$mode $scenario" 1)" -v m="$(field "$mode $scenario" 2)" \
      -v p="$(field "$mode $scenario" 3)" -v b="$base" \
      'BEGIN { printf "| %s | %s | %d | %.2f | %.2f | %.2f |\n", s, n, r, m / 1000, p / 1000, (b > 0 ? r / b : 0) }'
  done
done
