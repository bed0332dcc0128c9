#!/usr/bin/env bash
# Sets up a fresh Debian machine and runs Gantry's node runtime: builds, imports a busybox
# image made from local files, and runs isolated tasks from it. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
scripts/install-deps.sh
cargo build --release --workspace
G=target/release/gantry
img=$(mktemp -d)
trap 'rm -rf "$img"' EXIT
python3 tests/fixtures/mkimage.py "$img" --name gantry-demo/busybox:latest >/dev/null
$G image load "$img/oci"
$G image ls
echo "--- a task with its own network namespace, 256 CPU units and 64 MiB:"
$G debug run --image gantry-demo/busybox:latest --cpu 256 --memory 64 -- \
  sh -c 'echo "hello from $(hostname) at $(ip -4 -o addr show eth0 | sed "s/.*inet \([0-9.]*\).*/\1/")"; id; ls /'
echo "--- exit codes pass through:"
$G debug run --image gantry-demo/busybox:latest -- sh -c 'exit 3' || echo "exit code $?"
