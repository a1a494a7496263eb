# Sourced by the scripts that need NATS: start_nats_single PORT DIR and start_nats_cluster
# BASEPORT DIR start nats-server processes with JetStream on loopback (a cluster of three on
# client ports BASEPORT+1..3 and route ports BASEPORT+11..13), add their pids to NATS_PIDS, and
# return once they serve (the cluster: once it elected a metadata leader). stop_nats kills them.
NATS_PIDS=()
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
start_nats_single() { # port dir
  nats-server -js -a 127.0.0.1 -p "$1" -sd "$2/nats-single" >"$2/nats-single.log" 2>&1 &
  NATS_PIDS+=($!)
  wait_port "$1"
}
start_nats_cluster() { # baseport dir
  local base=$1 dir=$2 n m routes
  for n in 1 2 3; do
    routes=$(for m in 1 2 3; do if [ "$m" != "$n" ]; then printf 'nats://127.0.0.1:%s,' "$((base + 10 + m))"; fi; done)
    nats-server -js -a 127.0.0.1 -p "$((base + n))" -n "stead-$n" -sd "$dir/nats-$n" \
      --cluster_name stead --cluster "nats://127.0.0.1:$((base + 10 + n))" --routes "${routes%,}" \
      >"$dir/nats-$n.log" 2>&1 &
    NATS_PIDS+=($!)
  done
  for n in 1 2 3; do wait_port "$((base + n))"; done
  for _ in $(seq 150); do
    grep -q "JetStream cluster new metadata leader" "$dir"/nats-*.log 2>/dev/null && return 0
    sleep 0.2
  done
  echo "the NATS cluster elected no metadata leader" >&2; return 1
}
stop_nats() { for pid in "${NATS_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; NATS_PIDS=(); }
