#!/usr/bin/env bash
# Task start-to-exit benchmark: Gantry vs `crun run` of an equivalent bundle, interleaved in
# one process (release build, cached image, warm namespace pool). Needs root.
#   RUNS=100 scripts/bench.sh
# With `burst`: bursts of long-running tasks started a few at a time, Gantry's node runtime
# against `crun run --detach` (`gantry debug bench-burst --help` for the options).
#   scripts/bench.sh burst [--tasks 300] [--parallel 3] [--rounds 2]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-100}
scripts/install-deps.sh
cargo build --release --workspace
work=$(mktemp -d /var/tmp/gantry-bench.XXXXXX)
args=(--data-dir "$work/data" --run-dir "$work/run" --bridge gbench0 --subnet 10.216.0.0/22)  # room for a burst of 1,000
cleanup() {
  target/release/gantry "${args[@]}" debug sweep --all >/dev/null || true
  umount "$work/run/netns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
python3 tests/fixtures/mkimage.py "$work/img" >/dev/null
target/release/gantry "${args[@]}" image load "$work/img/oci" >/dev/null
if [ "${1:-}" = burst ]; then
  shift
  target/release/gantry "${args[@]}" debug bench-burst --image gantry-test/busybox:latest "$@"
else
  target/release/gantry "${args[@]}" debug bench --image gantry-test/busybox:latest --runs "$RUNS" -- /bin/true
fi
