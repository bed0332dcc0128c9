#!/bin/bash
# Fuzzes the parsers that read what clients and registries send (SigV4, the JSON and Query
# decoders, IAM policies, image layers) with cargo-fuzz (libFuzzer, AddressSanitizer, the
# nightly toolchain). Each target starts from its corpus in fuzz/corpus/TARGET (seeds in
# fuzz/seeds/TARGET are copied in) and reports its executions.
#
#   scripts/fuzz.sh                      # a short run of every target (CI: 20 s each)
#   scripts/fuzz.sh --runs 10000000      # a long run: ten million executions each
#   scripts/fuzz.sh --seconds 600 policy # one target, ten minutes
#   scripts/fuzz.sh --runs 5000000 --jobs 2 unpack  # two processes of five million, one corpus
#
# A crash, leak, timeout or out-of-memory leaves its input in fuzz/artifacts/TARGET/ and fails
# the script: fix it and add the input as a regression test next to the code it broke.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
limit="-max_total_time=20"
jobs=1
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) limit="-runs=$2"; shift 2 ;;
        --seconds) limit="-max_total_time=$2"; shift 2 ;;
        --jobs) jobs="$2"; shift 2 ;;
        *) break ;;
    esac
done
targets="${*:-sigv4 decode policy unpack}"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
# How many inputs a target's failures have left (crashes, leaks, timeouts, out-of-memory);
# a slow-unit-* file is a report of an input that ran past 10 s, which a paused or busy
# machine also produces, not a failure.
inputs_left() {
    { find "artifacts/$1" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) \
        2>/dev/null || true; } | wc -l
}
for t in $targets; do
    mkdir -p "corpus/$t"
    [ -d "seeds/$t" ] && cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
    echo "== fuzzing $t ($limit, $jobs process(es))"
    log="$(mktemp)"
    status=0
    parallel=()
    # Each job is a process of its own, logging to fuzz-JOB.log here (the parent prints them).
    if [ "$jobs" -gt 1 ]; then parallel=(-jobs="$jobs" -workers="$jobs"); fi
    rm -f fuzz-*.log
    crashes_before="$(inputs_left "$t")"
    cargo +nightly fuzz run "$t" "corpus/$t" -- "$limit" -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 "${parallel[@]}" >"$log" 2>&1 || status=$?
    rm -f fuzz-*.log
    grep -E "^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)|ERROR|panicked|SUMMARY|Test unit written" "$log" || true
    # Jobs report a crash by the input they leave, not always by the parent's status.
    if [ "$(inputs_left "$t")" != "$crashes_before" ]; then status=1; fi
    if [ "$status" != 0 ]; then
        tail -n 40 "$log" >&2
        echo "fuzz target $t failed (status $status): a crash leaves its input in fuzz/artifacts/$t" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
done
