#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the root-needing tests with real containers, a real
# registry and real network namespaces, and a short run of each fuzz target. Needs root;
# never skips.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: the node tests create namespaces, cgroups and mounts" >&2; exit 1; }
scripts/install-deps.sh
cargo build --workspace --all-targets
log=$(mktemp)

set +e
cargo test --workspace 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# End-to-end: the real AWS CLI and boto3 against `gantry dev`.
e2elog=$(mktemp)
trap 'rm -f "$log" "$e2elog"' EXIT
(cd tests/e2e && ../../.venv/bin/python -m pytest -q -p no:cacheprovider) 2>&1 | tee "$e2elog"
e2e=${PIPESTATUS[0]}
# Fuzzing: ten seconds of each target from its corpus (scripts/fuzz.sh --runs N for long runs).
scripts/fuzz.sh --seconds "${FUZZ_SECONDS:-10}"
fuzz=$?
set -e
count() { { grep -Eo "[0-9]+ $2" <<<"$1" || true; } | awk '{s+=$1} END {print s+0}'; }
cargo_results=$(grep -E '^test result: ' "$log" || true)
pytest_summary=$(tail -n 1 "$e2elog")
passed=$(( $(count "$cargo_results" passed) + $(count "$pytest_summary" passed) ))
failed=$(( $(count "$cargo_results" failed) + $(count "$pytest_summary" failed) + $(count "$pytest_summary" error) ))
echo "cargo test: $(count "$cargo_results" passed) passed; e2e: ${pytest_summary}"
echo "${passed} passed, ${failed} failed"
echo "fuzzing: $([ "$fuzz" = 0 ] && echo "no failing input" || echo FAILED)"
[ "$status" = 0 ] && [ "$e2e" = 0 ] && [ "$fuzz" = 0 ]
