#!/usr/bin/env bash
# The one test command: installs what the tests need, then runs every test.
#
#   ./scripts/test.sh            # as root on a fresh Debian 12 machine, or as a developer
#
# Steps: dependencies (scripts/install-deps.sh), formatting and clippy gates, a local
# S3-compatible server (scripts/s3-local.sh) and the Azure Blob emulator Azurite
# (scripts/cloud-emulators.sh) on loopback, then every test of the workspace, in two lanes
# (scripts/test-lanes.sh): unit tests, the storage conformance suite (memory, file, S3,
# Azure) and end-to-end tests against real PostgreSQL 15 clusters, plus one end-to-end test
# for each of 13, 14, 16, 17 and 18. S3, Azure and every PostgreSQL major are required here
# (PGCAIRN_REQUIRE_S3=1, PGCAIRN_REQUIRE_AZURE=1, PGCAIRN_REQUIRE_PG_MAJORS=1): a missing one
# fails the run instead of silently skipping.
# (No GCS emulator runs: see scripts/cloud-emulators.sh.)
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s)
step() { printf '\n=== %s (%ss)\n' "$*" "$(( $(date +%s) - started ))"; }

step "dependencies"
if [ "$(id -u)" = 0 ]; then
    ./scripts/install-deps.sh
else
    echo "not root: assuming dependencies are installed (run scripts/install-deps.sh as root once)"
fi

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --all-targets --locked

step "Debian package"
# Builds the release binary and the .deb (man pages, completions, units, conffile), then checks
# it: file list, man pages render, completions parse, and as root dpkg -i / verify / purge.
deb=$(./scripts/package.sh | tail -n 1)
./scripts/check-package.sh "$deb"

step "local S3 and Azure servers"
S3_DIR=$(mktemp -d /tmp/pgcairn-s3.XXXXXX)
CLOUD_DIR=$(mktemp -d /tmp/pgcairn-cloud.XXXXXX)
cleanup() {
    ./scripts/s3-local.sh stop "$S3_DIR" >/dev/null 2>&1 || true
    ./scripts/cloud-emulators.sh stop "$CLOUD_DIR" >/dev/null 2>&1 || true
    rm -rf "$S3_DIR" "$CLOUD_DIR"
}
trap cleanup EXIT
eval "$(./scripts/s3-local.sh start "$S3_DIR")"
export PGCAIRN_TEST_S3_ENDPOINT PGCAIRN_TEST_S3_BUCKET
export PGCAIRN_REQUIRE_S3=1
eval "$(./scripts/cloud-emulators.sh start "$CLOUD_DIR")"
export PGCAIRN_TEST_AZURE_ENDPOINT PGCAIRN_TEST_AZURE_CONTAINER
export PGCAIRN_REQUIRE_AZURE=1
# Every PostgreSQL major (13 to 18, tests/tests/versions.rs) is required too: a missing one
# fails instead of being skipped.
export PGCAIRN_REQUIRE_PG_MAJORS=1

step "tests"
# End-to-end tests run the release binary the package holds (PGCAIRN_BIN): it is what ships,
# and it makes backup and restore scenarios several times faster than the debug build.
export PGCAIRN_BIN=${PGCAIRN_BIN:-$PWD/target/release/pgcairn}
# Every test binary was built by the build step above; they run in two lanes side by side,
# each binary two tests at a time (scripts/test-lanes.sh: end-to-end binaries spend much of
# their time waiting on PostgreSQL and the clock, and one that waits no longer holds up the
# rest).
./scripts/test-lanes.sh "${PGCAIRN_TEST_THREADS:-2}"

step "done"
