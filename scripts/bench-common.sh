# Shared by the benchmark scripts that run `stead serve` (and Redis) on this machine: source it
# after setting PORT (and REDIS_PORT where Redis runs) and WORK_NAME. It builds stead, makes a
# work directory, and stops whatever is left running on exit.
# Server pinned to core 0; loopback only; every server gets a fresh data directory.

BIN=${CARGO_TARGET_DIR:-target}/release/stead
cargo build --release --bin stead >/dev/null
WORK=$(mktemp -d -p "$PWD" "$WORK_NAME.XXXXXX")
cleanup() {
  [ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null || true
  [ -n "${REDIS_PID:-}" ] && kill "$REDIS_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# BENCH_WAIT_QUIET=1: before each server starts, wait until no cargo or compiler runs on the
# machine (a shared machine's builds otherwise land in some samples and not others).
wait_quiet() {
  [ "${BENCH_WAIT_QUIET:-0}" = 1 ] || return 0
  local name
  for name in cargo rustc clippy-driver cc1 cc1plus ld; do
    while pgrep -x "$name" >/dev/null; do sleep 2; done
  done
}

start_stead() { # extra args...: one core, pinned to core 0
  start_stead_with "taskset -c 0" 1 "$@"
}
start_stead_with() { # pin-command ("" for none) cores extra args...
  local pin=$1 cores=$2
  shift 2
  wait_quiet
  rm -rf "$WORK/data"
  # shellcheck disable=SC2086 # the pin command is words
  $pin "$BIN" serve --listen 127.0.0.1:$PORT --data-dir "$WORK/data" --cores "$cores" "$@" \
    >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "stead did not start" >&2; cat "$WORK/server.log" >&2; exit 1
}
stop_stead() { kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || true; SERVER_PID=; }

# Redis 7 answering only after fsync, with scripts/ratelimit.lua loaded as $SHA.
start_redis() {
  wait_quiet
  rm -rf "$WORK/redis"; mkdir -p "$WORK/redis"
  taskset -c 0 redis-server --port $REDIS_PORT --bind 127.0.0.1 --dir "$WORK/redis" --save '' \
    --appendonly yes --appendfsync always --daemonize no >"$WORK/redis.log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 100); do redis-cli -p $REDIS_PORT ping >/dev/null 2>&1 && break; sleep 0.1; done
  SHA=$(redis-cli -p $REDIS_PORT SCRIPT LOAD "$(cat scripts/ratelimit.lua)")
}
stop_redis() { kill -TERM "$REDIS_PID"; wait "$REDIS_PID" || true; REDIS_PID=; }

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# The median of field number $2 over the runs kept in RESULTS[$1] (one run per line), for the
# scripts that collect their runs in an associative array RESULTS.
field() { printf '%s' "${RESULTS["$1"]}" | awk -v f="$2" 'NF {print $f}' | median; }
