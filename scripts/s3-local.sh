#!/usr/bin/env bash
# A local S3-compatible server (moto) on loopback for tests. See ../shared/S3-LOCAL.md.
#
#   scripts/s3-local.sh start DIR    start moto_server on a free 127.0.0.1 port (or reuse the one
#                                    already running for DIR), create the test bucket, and print
#                                    on stdout:
#                                      export PGCAIRN_TEST_S3_ENDPOINT=http://127.0.0.1:PORT
#                                      export PGCAIRN_TEST_S3_BUCKET=pgcairn-test
#                                    usage: eval "$(scripts/s3-local.sh start DIR)"
#   scripts/s3-local.sh stop DIR     stop the server started for DIR (no-op if none)
#   scripts/s3-local.sh status DIR   exit 0 and print the exports if it is running, else exit 1
#
# DIR holds moto.pid, moto.port and moto.log. State is in memory only: it is gone on stop.
# Any credentials are accepted (e.g. test/test), region us-east-1; path-style URLs work.
# Diagnostics go to stderr; stdout carries only the export lines.
#
# Environment: PGCAIRN_CACHE (venv at $PGCAIRN_CACHE/venv, default /var/cache/pgcairn-test),
# S3_LOCAL_BUCKET (default pgcairn-test), S3_LOCAL_START_TIMEOUT (seconds, default 30).
set -euo pipefail

CACHE=${PGCAIRN_CACHE:-/var/cache/pgcairn-test}
VENV=$CACHE/venv
BUCKET=${S3_LOCAL_BUCKET:-pgcairn-test}
START_TIMEOUT=${S3_LOCAL_START_TIMEOUT:-30}

log() { printf 's3-local: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { echo "usage: $0 start|stop|status DIR" >&2; exit 2; }

# True if PID is alive and is a moto_server process.
is_moto() {
    local pid=$1
    [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/cmdline ]] \
        && tr '\0' ' ' </proc/"$pid"/cmdline 2>/dev/null | grep -q moto_server
}

answers() { curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$1/"; }

print_env() {
    echo "export PGCAIRN_TEST_S3_ENDPOINT=http://127.0.0.1:$1"
    echo "export PGCAIRN_TEST_S3_BUCKET=$BUCKET"
}

# Running server for DIR: prints its port, or fails.
running_port() {
    local dir=$1 pid port
    pid=$(cat "$dir/moto.pid" 2>/dev/null) || return 1
    port=$(cat "$dir/moto.port" 2>/dev/null) || return 1
    is_moto "$pid" && [[ $port =~ ^[0-9]+$ ]] || return 1
    echo "$port"
}

create_bucket() {
    local port=$1 code
    # 200 on creation; moto in us-east-1 also answers 200 if it exists already.
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -X PUT "http://127.0.0.1:$port/$BUCKET")
    [[ $code == 200 || $code == 409 ]] || die "creating bucket $BUCKET failed: HTTP $code"
}

stop() {
    local dir=$1 pid i
    pid=$(cat "$dir/moto.pid" 2>/dev/null) || pid=
    if [[ -n $pid ]] && is_moto "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            is_moto "$pid" || break
            sleep 0.1
        done
        if is_moto "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        log "stopped moto_server (pid $pid)"
    fi
    rm -f "$dir/moto.pid" "$dir/moto.port"
}

start() {
    local dir=$1 port pid attempt deadline
    [[ -x $VENV/bin/moto_server ]] || die "$VENV/bin/moto_server not found; run scripts/install-deps.sh"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)

    if port=$(running_port "$dir") && answers "$port"; then
        create_bucket "$port"
        print_env "$port"
        return 0
    fi
    stop "$dir" 2>/dev/null # clear a stale pid file

    # A port picked this way can be taken by someone else before moto binds it; retry then.
    for attempt in 1 2 3; do
        port=$("$VENV/bin/python" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
        # Detach stdio so that $(...) in the caller does not wait for the server.
        "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" </dev/null >>"$dir/moto.log" 2>&1 &
        pid=$!
        echo "$pid" >"$dir/moto.pid"
        echo "$port" >"$dir/moto.port"

        deadline=$((SECONDS + START_TIMEOUT))
        while ((SECONDS < deadline)); do
            if answers "$port"; then
                create_bucket "$port"
                log "moto_server pid $pid on 127.0.0.1:$port, bucket $BUCKET, log $dir/moto.log"
                print_env "$port"
                return 0
            fi
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        log "moto_server did not come up on port $port (attempt $attempt); log tail:"
        tail -n 20 "$dir/moto.log" >&2 || true
        stop "$dir" 2>/dev/null
    done
    die "could not start moto_server"
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
