#!/usr/bin/env bash
# `stead bench --spawn` over every available scenario: each run starts its own server on the
# cores the load generator leaves free (on 2 cores: server on core 0, generator on core 1),
# measures, and stops it. Prints a Markdown section with the command beside each figure.
#
# Usage: scripts/bench-stead.sh [seconds] [runs]   (medians over the runs)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
RUNS=${2:-3}
CONNECTIONS=32
OBJECTS=10000
OPEN_LOOP_RATE=2000
BIN=${CARGO_TARGET_DIR:-target}/release/stead
cargo build --release --bin stead >/dev/null
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# name, then the scenario's own flags; the common flags are added here.
CASES=(
  "hello|--scenario hello"
  "counter-hot|--scenario counter-hot"
  "counter-spread|--scenario counter-spread --objects $OBJECTS"
  "counter-read|--scenario counter-read"
  "ratelimit|--scenario ratelimit --objects $OBJECTS"
  "counter-spread, open loop|--scenario counter-spread --objects $OBJECTS --rate $OPEN_LOOP_RATE"
)
COMMON="--spawn --connections $CONNECTIONS --duration ${SECONDS_PER_RUN}s --warmup 1s"

echo "Machine: $(nproc) cores, $(uname -sr). Each row: \`stead bench $COMMON <flags>\`, median of $RUNS runs,"
echo "each against a fresh server. Latency is from the intended send time in the open-loop row (no"
echo "coordinated omission), from the actual send otherwise. \`hello\` is GET /healthz: the floor of"
echo "the HTTP stack, no object. Every write is answered after its durable write returned."
echo
echo "| scenario | flags | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
for entry in "${CASES[@]}"; do
  name=${entry%%|*}
  flags=${entry#*|}
  files=()
  for run in $(seq "$RUNS"); do
    file="$WORK/$(echo "$name" | tr -c 'a-z0-9\n' '-')-$run.json"
    # A run past --max-error-rate exits 1 and still writes its figures: the table shows them.
    # shellcheck disable=SC2086
    "$BIN" bench $COMMON $flags --json "$file" >"$WORK/last.log" 2>&1 || [ -s "$file" ] || {
      echo "stead bench $COMMON $flags failed:" >&2; cat "$WORK/last.log" >&2; exit 1; }
    files+=("$file")
  done
  python3 - "$name" "$flags" "${files[@]}" <<'PY'
import json, statistics, sys
name, flags, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
runs = [json.load(open(path)) for path in paths]
med = lambda values: statistics.median(values)
lat = lambda key: med([run["latency_ms"][key] for run in runs])
errors = sum(run["errors"]["total"] for run in runs)
print(f"| {name} | `{flags}` | {med([run['throughput_rps'] for run in runs]):.0f} | "
      f"{lat('p50'):.3f} | {lat('p90'):.3f} | {lat('p99'):.3f} | {lat('p999'):.3f} | "
      f"{lat('max'):.3f} | {errors} |")
PY
done
