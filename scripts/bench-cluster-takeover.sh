#!/usr/bin/env bash
# How long a node's partitions go unserved when it dies or is stopped: one nats-server, node
# "a" (`--cores 1`, 256 partitions) takes N increments, node "b" joins and gets half the
# partitions, then "a" is killed with SIGKILL (it dies: its node key must expire first) or
# stopped with SIGTERM (it gives its key up once its cores stopped), and the time until "b"
# serves all 256 partitions (its /metrics) is taken, for each lease_ms. Medians of
# interleaved runs. Needs nats-server.
# Usage: scripts/bench-cluster-takeover.sh [increments] [runs] [lease_ms...]
#        (default: 20000 3 2000 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${1:-20000}
RUNS=${2:-3}
LEASES=("${@:3}")
[ ${#LEASES[@]} -eq 0 ] && LEASES=(2000 10000)
PORT=18092
STANDBY_PORT=18093
WORK_NAME=bench-cluster-takeover
source scripts/bench-common.sh
source scripts/nats-cluster.sh
STANDBY_PID=
trap '[ -n "$STANDBY_PID" ] && kill "$STANDBY_PID" 2>/dev/null; stop_nats; cleanup' EXIT

served_by() { # port: the partitions the node serves now
  curl -s "http://127.0.0.1:$1/metrics" | awk '/^stead_cluster_partitions_served/ { s += $2 } END { print s + 0 }'
}

measure() { # lease_ms signal; prints the takeover in ms
  rm -rf "$WORK"/nats-* "$WORK/b"
  start_nats_single 14522 "$WORK"
  for node in a b; do
    printf '[storage]\npartitions = 256\n\n[cluster]\nnats = ["nats://127.0.0.1:14522"]\nnode_id = "%s"\nreplicas = 1\nlease_ms = %s\n' \
      "$node" "$1" >"$WORK/$node.toml"
  done
  start_stead --config "$WORK/a.toml"
  "$BIN" bench --url "http://127.0.0.1:$PORT" --scenario counter-spread --objects 1000 \
    --connections 16 --requests "$REQUESTS" >/dev/null
  "$BIN" serve --listen "127.0.0.1:$STANDBY_PORT" --data-dir "$WORK/b" --cores 1 \
    --config "$WORK/b.toml" >"$WORK/b.log" 2>&1 &
  STANDBY_PID=$!
  # b serves its half.
  until curl -sf "http://127.0.0.1:$STANDBY_PORT/healthz" >/dev/null 2>&1; do sleep 0.02; done
  local killed=$(date +%s%N)
  kill "-$2" "$SERVER_PID"
  until [ "$(served_by "$STANDBY_PORT")" = 256 ]; do sleep 0.02; done
  local served=$(date +%s%N)
  wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=
  kill -TERM "$STANDBY_PID"; wait "$STANDBY_PID" 2>/dev/null || true; STANDBY_PID=
  stop_nats
  wait 2>/dev/null || true
  echo $(( (served - killed) / 1000000 ))
}

declare -A RESULTS
for run in $(seq "$RUNS"); do
  for lease in "${LEASES[@]}"; do
    for signal in KILL TERM; do
      RESULTS[$lease-$signal]+="$(measure "$lease" "$signal")"$'\n'
    done
  done
done
echo "Machine: $(nproc) cores, $(uname -sr); $REQUESTS increments over 1,000 counters before the"
echo "node's SIGKILL or SIGTERM; medians of $RUNS runs."
echo
echo "| lease_ms | a killed (SIGKILL) → b serves every partition, ms | a stopped (SIGTERM) → b serves every partition, ms |"
echo "|---:|---:|---:|"
for lease in "${LEASES[@]}"; do
  kill_ms=$(printf '%s' "${RESULTS[$lease-KILL]}" | awk 'NF' | median)
  term_ms=$(printf '%s' "${RESULTS[$lease-TERM]}" | awk 'NF' | median)
  echo "| $lease | $kill_ms | $term_ms |"
done
