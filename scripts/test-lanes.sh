#!/usr/bin/env bash
# Runs every test of the workspace in lanes side by side (scripts/test.sh calls it once its
# test binaries are built).
#
#   ./scripts/test-lanes.sh [THREADS]    # PGCAIRN_TEST_LANES=1 runs one binary at a time
#
# Why: cargo runs test binaries one after another, and an end-to-end binary spends much of its
# time waiting on PostgreSQL, the object stores and the clock (keys.rs waits minutes for
# writers to follow a key rotation, with the processor 20 % busy). Two lanes each take the next
# binary from one queue, heaviest first, so a waiting binary no longer holds up the rest; each
# binary runs THREADS tests at once (default 2), as before.
#
# The queue is read from `cargo metadata`, so a new test file is run without being listed
# here: the unit tests (`--lib --bins`), the doc tests, then every integration test target,
# those that took longest here first. Every invocation names `--workspace` so that features
# resolve as in the build (`-p` alone would rebuild dependencies). A binary's output is printed
# whole when it ends; the run fails if any binary failed, and says which.
set -euo pipefail
cd "$(dirname "$0")/.."

threads=${1:-2}
lanes=${PGCAIRN_TEST_LANES:-2}
work=$(mktemp -d /tmp/pgcairn-lanes.XXXXXX)
trap 'rm -rf "$work"' EXIT
queue=$work/queue
lock=$work/lock

# Seconds each binary took here (2026-12-07, two test threads): the long ones start first.
declare -A took=([unit]=111 [keys]=228 [wal_failures]=75 [backup_restore]=60 [drill]=57
    [ha]=51 [gc_stress]=49 [expire]=46 [wal_receive]=40 [pitr]=35 [wal_archive]=34
    [versions]=33 [restore_hostile]=20 [backup_failures]=19 [selective_restore]=17)

targets=$(cargo metadata --format-version 1 --no-deps --locked | python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    for t in p["targets"]:
        if "test" in t["kind"]:
            print(t["name"])')
[ -n "$targets" ] || { echo "no test targets found by cargo metadata" >&2; exit 1; }
for name in unit doc $targets; do
    echo "${took[$name]:-0} $name"
done | sort -k1,1rn -s | awk '{print $2}' >"$queue"

# Takes the first line of the queue (empty when none is left).
take() {
    flock "$lock" sh -c 'head -n 1 "$1"; sed -i 1d "$1"' _ "$queue"
}

lane() {
    local next out rc started
    while next=$(take) && [ -n "$next" ]; do
        out=$work/$next.log
        started=$(date +%s)
        case $next in
            unit) set -- --lib --bins ;;
            doc) set -- --doc ;;
            *) set -- --test "$next" ;;
        esac
        rc=0
        cargo test --workspace --locked --no-fail-fast "$@" -- --test-threads "$threads" \
            >"$out" 2>&1 || rc=$?
        {
            flock 9
            cat "$out"
            printf '=== %s: exit %s in %ss\n' "$next" "$rc" "$(( $(date +%s) - started ))"
            [ "$rc" = 0 ] || echo "$next" >>"$work/failed"
        } 9>>"$lock"
    done
}

pids=()
for _ in $(seq "$lanes"); do
    lane &
    pids+=("$!")
done
for pid in "${pids[@]}"; do
    wait "$pid"
done
if [ -s "$work/failed" ]; then
    echo "FAILED: $(tr '\n' ' ' <"$work/failed")" >&2
    exit 1
fi
echo "every test binary passed"
