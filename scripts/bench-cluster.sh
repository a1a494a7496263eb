#!/usr/bin/env bash
# What replication costs a write: `stead bench` (counter-hot and counter-spread over 1,000
# objects, 32 connections, closed loop) against one `stead serve --cores 1` (pinned to core 0)
# alone, in a cluster on one nats-server (replicas 1), and on three (replicas 3); and through a
# standby (a second node, `--cores 1` on core 1, which forwards every request to the owner) in
# the replicas-1 cluster. NATS runs unpinned on the same 2 cores, the bench on core 1; each run
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
trap 'stop_nats; cleanup' EXIT

# Prints "rps p50_us p99_us" of one run.
measure() { # mode scenario
  local config=() nats target=$PORT standby_pid=
  rm -rf "$WORK"/nats-* "$WORK/standby"
  case $1 in
    single) ;;
    r1|r1-forwarded) start_nats_single 14322 "$WORK"; nats='"nats://127.0.0.1:14322"';;
    r3) start_nats_cluster 14330 "$WORK"
        nats='"nats://127.0.0.1:14331", "nats://127.0.0.1:14332", "nats://127.0.0.1:14333"';;
  esac
  if [ "$1" != single ]; then
    local replicas=${1#r}
    replicas=${replicas%-forwarded}
    printf '[storage]\npartitions = 256\n\n[cluster]\nnats = [%s]\nnode_id = "bench"\nreplicas = %s\n' \
      "$nats" "$replicas" >"$WORK/cluster.toml"
    config=(--config "$WORK/cluster.toml")
  fi
  start_stead "${config[@]}"
  if [ "$1" = r1-forwarded ]; then
    sed 's/node_id = "bench"/node_id = "standby"/' "$WORK/cluster.toml" >"$WORK/standby.toml"
    target=$((PORT + 1))
    taskset -c 1 "$BIN" serve --listen "127.0.0.1:$target" --data-dir "$WORK/standby" --cores 1 \
      --config "$WORK/standby.toml" >"$WORK/standby.log" 2>&1 &
    standby_pid=$!
    # Serving through the standby once it knows the owner.
    for _ in $(seq 200); do
      curl -sf "http://127.0.0.1:$target/objects/counter/warm/value" >/dev/null 2>&1 && break
      sleep 0.05
    done
  fi
  taskset -c 1 "$BIN" bench --url "http://127.0.0.1:$target" --scenario "$2" --objects 1000 \
    --connections 32 --duration "${SECONDS_PER_RUN}s" --warmup 1s --json "$WORK/run.json" >/dev/null
  if [ -n "$standby_pid" ]; then kill -TERM "$standby_pid"; wait "$standby_pid" || true; fi
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
    for mode in single r1 r3 r1-forwarded; do
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
  for mode in single r1 r3 r1-forwarded; do
    case $mode in single) name="alone";; r1) name="cluster, 1 NATS, replicas 1";; r3) name="cluster, 3 NATS, replicas 3";;
      r1-forwarded) name="cluster, 1 NATS, replicas 1, through a standby";; esac
    awk -v s="$scenario" -v n="$name" -v r="$(field "$mode $scenario" 1)" -v m="$(field "$mode $scenario" 2)" \
      -v p="$(field "$mode $scenario" 3)" -v b="$base" \
      'BEGIN { printf "| %s | %s | %d | %.2f | %.2f | %.2f |\n", s, n, r, m / 1000, p / 1000, (b > 0 ? r / b : 0) }'
  done
done
