#!/usr/bin/env bash
# Builds pgcairn and runs `pgcairn demo`: a throwaway PostgreSQL cluster archiving its WAL
# into a fresh encrypted local repository, then `info`.
#
#   ./scripts/quickstart.sh          # as root on a fresh Debian 12 machine (installs PostgreSQL 15)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
    ./scripts/install-deps.sh
fi
cargo build --release --locked -p pgcairn
exec ./target/release/pgcairn demo "$@"
