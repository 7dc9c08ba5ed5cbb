# Shared setup for the benchmark scripts (sourced, not run): a work directory cleaned up on exit,
# commands run as the postgres OS user, a throwaway PostgreSQL cluster on a private socket, and
# timing helpers. Each script keeps its own measurement; what is here is only how every one of
# them gets a cluster and runs things, so that a fix to it (a port race, a cleanup that leaves a
# server behind) is made once.
#
# Before sourcing: `set -euo pipefail`, `cd` to the repository root. After: call bench_init.

PGBIN=${PG_BINDIR:-/usr/lib/postgresql/15/bin}

# Runs "$@" as postgres when the script runs as root (PostgreSQL refuses to run as root).
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ns() { date +%s%N; }
secs() { python3 -c "print(f'{($2 - $1) / 1e9:.2f}')"; }
min() { python3 -c 'import sys; v=[float(x) for x in sys.argv[1:] if x]; print(min(v))' "$@"; }
max() { python3 -c 'import sys; v=[float(x) for x in sys.argv[1:] if x]; print(max(v))' "$@"; }
# True when version $1 >= $2 (sort -V order).
ver_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }

# The pgcairn binary to measure: PGCAIRN_BIN, else the release build (built if missing).
bench_binary() {
    BIN=${PGCAIRN_BIN:-target/release/pgcairn}
    if [ -z "${PGCAIRN_BIN:-}" ]; then
        cargo build --release --locked -p pgcairn >/dev/null 2>&1 || cargo build --release --locked -p pgcairn
    fi
}

# Creates the work directory W (prefix $1) with a copy of the binary at $W/bin/pgcairn, owned by
# postgres, and a trap that stops every server in RUNNING and removes W (KEEP=1 keeps it).
# BENCH_CLEANUP_HOOK, if set, names a function run first.
RUNNING=()
bench_init() { # $1 = name for the work directory
    bench_binary
    W=$(mktemp -d "/tmp/pgcairn-$1.XXXXXX")
    RUNNING=("$W/pg")
    trap bench_cleanup EXIT
    mkdir -p "$W/bin"
    cp "$BIN" "$W/bin/pgcairn"
    chmod 755 "$W/bin/pgcairn"
    [ "$(id -u)" = 0 ] && chown -R postgres: "$W"
    PORT=$(free_port)
}
bench_cleanup() {
    if [ -n "${BENCH_CLEANUP_HOOK:-}" ]; then "$BENCH_CLEANUP_HOOK" || true; fi
    local d
    for d in "${RUNNING[@]}"; do as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true; done
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $W"; else rm -rf "$W"; fi
}

psql_at() { as_pg "$PGBIN/psql" -X -A -t -q -h "$W" -p "$1" -U postgres -d postgres -v ON_ERROR_STOP=1 -c "$2"; }
psql_pg() { psql_at "$PORT" "$1"; }

# initdb of $W/pg (data checksums, trust on the private socket) listening on PORT only there,
# with WAL archiving through $1 (an archive_command; '' pauses archiving) and any extra
# postgresql.conf lines on stdin.
pg_init() { # $1 = archive_command
    as_pg "$PGBIN/initdb" -D "$W/pg" --data-checksums -A trust -U postgres >/dev/null
    {
        cat <<CONF
listen_addresses = ''
port = $PORT
unix_socket_directories = '$W'
wal_level = replica
archive_mode = on
archive_command = '${1//\'/\'\'}'
CONF
        cat
    } >> "$W/pg/postgresql.conf"
}
pg_start() { as_pg "$PGBIN/pg_ctl" -D "$W/pg" -l "$W/pg.log" -w start >/dev/null; }

# pgbench -i -s $1 into the postgres database; prints nothing, fails loudly.
pgbench_init() {
    as_pg "$PGBIN/pgbench" -h "$W" -p "$PORT" -U postgres -i -s "$1" -q postgres >"$W/pgbench-init.log" 2>&1 \
        || { cat "$W/pgbench-init.log" >&2; exit 1; }
}

# Runs "$@" as postgres under /usr/bin/time, output to $W/$label.log and .err; sets T_WALL (s)
# and T_RSS (KiB). Exits the script, showing the output, if the command fails.
timed() {
    local label=$1; shift
    if ! as_pg /usr/bin/time -f '%e %M' -o "$W/$label.time" "$@" >"$W/$label.log" 2>"$W/$label.err"; then
        echo "!! $label failed: $*" >&2
        cat "$W/$label.log" "$W/$label.err" | sed 's/^/   | /' >&2
        exit 1
    fi
    read -r T_WALL T_RSS < <(tail -1 "$W/$label.time")
}

# Writes $W/pgbackrest.conf for stanza "bench" on $W/pg, the settings both pgBackRest
# benchmarks compare with: zst-3, process-max=2, synchronous archiving. $1: the repository
# lines (repo1-path=..., or the S3 ones); $2: extra [global] lines (bundle, block incremental).
pgbr_conf() {
    cat > "$W/pgbackrest.conf" <<CONF
[global]
$1
repo1-retention-full=100
${2:+$2
}compress-type=zst
compress-level=3
log-level-console=warn
log-level-file=off
lock-path=$W/pgbr-lock
spool-path=$W/pgbr-spool
process-max=2
start-fast=y
archive-async=$([ "${PGBR_ARCHIVE_ASYNC:-0}" = 1 ] && echo y || echo n)

[bench]
pg1-path=$W/pg
pg1-port=$PORT
pg1-socket-path=$W
CONF
}
