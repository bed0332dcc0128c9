#!/usr/bin/env bash
# Sets up a fresh Debian machine and runs Gantry in its embedded single-machine mode
# (`gantry dev`): installs what it needs, builds it, imports a busybox image made from local
# files, and serves the ECS and CloudWatch Logs APIs on 127.0.0.1:4566 until Ctrl-C. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
scripts/install-deps.sh
cargo build --release --workspace
G=$PWD/target/release/gantry
img=$(mktemp -d)
trap 'rm -rf "$img"' EXIT
python3 tests/fixtures/mkimage.py "$img" --name gantry-demo/busybox:latest >/dev/null
$G image load "$img/oci"
cat <<MSG

Gantry is starting. In another terminal, try:
  $PWD/.venv/bin/aws --profile gantry ecs list-clusters
  $G run gantry-demo/busybox:latest -- sh -c 'echo hello from \$(hostname); ip -4 addr show eth0'
  $G run -d gantry-demo/busybox:latest -- sh -c 'while :; do date; sleep 1; done'
  $G ps
  $G logs -f TASK_ID          # and: $G stop TASK_ID

MSG
exec $G dev
