#!/usr/bin/env bash
# A profile-guided release build of gantry and gantry-shim (README, "Load balancer": what it gains).
#
# 1. builds them instrumented (target/pgo/generate),
# 2. trains them: the hot paths at volume, each driven by its benchmark (the load balancer:
#    HTTP one request at a time and loaded, HTTPS; task starts through the ECS API, one at a
#    time and in bursts; a cluster: a server on etcd, agents over mutual TLS), then the
#    traffic paths the benchmarks do not drive (HTTP/2, network load balancers, DNS) through
#    their end-to-end tests,
# 3. merges the profiles and builds with them (target/pgo/use/release/{gantry,gantry-shim}).
#
# Root (the training runs real tasks), after scripts/install-deps.sh. About twice as long as
# `cargo build --release` (here: 24 + 5 + 12 minutes). Code the training does not run is
# laid out as cold, so a path left out of step 2 gets slower: train what users run.
#
# Usage: sudo scripts/build-pgo.sh [--skip-generate]   (--skip-generate reuses step 1's build)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD/target/pgo
profdata="$(rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/bin/llvm-profdata"
[ -x "$profdata" ] || rustup component add llvm-tools
[ -x .venv/bin/python ] || { echo "run scripts/install-deps.sh first" >&2; exit 1; }

if [ "${1:-}" != "--skip-generate" ]; then
  RUSTFLAGS="-Cprofile-generate=$root/raw" \
    cargo build --release -p gantry -p gantry-shim --target-dir "$root/generate"
fi

rm -rf "$root/train"
export GANTRY_BINARY="$root/generate/release/gantry"
py=$PWD/.venv/bin/python
train() {  # train NAME COMMAND...: each part's profiles in a directory of their own
  mkdir -p "$root/train/$1"
  # %m: one file per binary, merged in place by every process that runs it (each shim too).
  LLVM_PROFILE_FILE="$root/train/$1/%m.profraw" "${@:2}"
  ls "$root/train/$1"/*.profraw >/dev/null  # none: the part did not run this build
}
train lb $py scripts/bench-lb.py --rounds 1 --seconds 3 --unloaded --tls
train start $py scripts/bench-api.py --tasks 30 --burst 100
train cluster $py scripts/bench-cluster.py --tasks 10 --burst 60 --rounds 1
train e2e bash -c "cd tests/e2e && $py -m pytest -q -p no:cacheprovider test_elbv2.py test_tls.py test_service_discovery.py"
unset GANTRY_BINARY

"$profdata" merge -o "$root/gantry.profdata" "$root"/train/*/*.profraw
RUSTFLAGS="-Cprofile-use=$root/gantry.profdata" \
  cargo build --release -p gantry -p gantry-shim --target-dir "$root/use"
echo "profile-guided build: $root/use/release/gantry"
