#!/usr/bin/env bash
# Builds the Debian package of pgcairn with cargo-deb (from crates.io, installed on first use
# into ${PGCAIRN_CACHE:-/var/cache/pgcairn-test}/tools so reruns reuse it).
#
#   ./scripts/package.sh            # prints the path of the .deb on its last line
#
# The package holds /usr/bin/pgcairn, a man page for the command and every subcommand and the
# bash, zsh and fish completions (all generated from the clap definitions by the binary being
# packaged, so they cannot drift from --help), the systemd services and timers (installed, not
# enabled), an example /etc/pgcairn/pgcairn.toml (conffile, 0640, group postgres) and the cron
# example under /usr/share/doc/pgcairn/examples.
#
# Environment:
#   PGCAIRN_CACHE               where cargo-deb is installed (default /var/cache/pgcairn-test)
#   PGCAIRN_CARGO_DEB_VERSION   cargo-deb version spec (default ^3)
#   PGCAIRN_BUILD_COMMIT        the commit `pgcairn --version` names (default: git rev-parse)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'package: %s\n' "$*" >&2; }

CACHE=${PGCAIRN_CACHE:-/var/cache/pgcairn-test}
TOOLS=$CACHE/tools
CARGO_DEB_VERSION=${PGCAIRN_CARGO_DEB_VERSION:-^3}

cargo_deb=$(command -v cargo-deb || true)
if [[ -z "$cargo_deb" ]]; then
    cargo_deb=$TOOLS/bin/cargo-deb
    if [[ ! -x "$cargo_deb" ]]; then
        log "installing cargo-deb $CARGO_DEB_VERSION into $TOOLS"
        mkdir -p "$TOOLS"
        cargo install --locked --quiet --version "$CARGO_DEB_VERSION" --root "$TOOLS" cargo-deb
    fi
fi

log "building the release binary"
cargo build --release --locked -p pgcairn
bin=target/release/pgcairn

out=target/package
rm -rf "$out"
mkdir -p "$out/man" "$out/completions"
log "generating man pages and completions from $bin"
"$bin" manpages "$out/man"
gzip -9n "$out"/man/*.1
"$bin" completions bash >"$out/completions/pgcairn"
"$bin" completions zsh >"$out/completions/_pgcairn"
"$bin" completions fish >"$out/completions/pgcairn.fish"

log "assembling the package"
deb=$("$cargo_deb" --no-build --locked -p pgcairn --output target/debian 2>&1 | tail -n 1)
[[ -f "$deb" ]] || { log "cargo-deb did not report a package: $deb"; exit 1; }
log "built $deb"
echo "$deb"
