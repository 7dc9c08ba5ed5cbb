#!/usr/bin/env bash
# Commit throughput and latency with pgcairn wal-receive as the synchronous standby.
#
#   benches/wal_receive_sync.sh [SECONDS]     (default 20 per mode; run as root or postgres)
#
# One throwaway PostgreSQL 15 cluster (pgbench scale 10) and pgbench -N (the simple-update
# script, one commit per transaction) with CLIENTS (default 4) clients for SECONDS in each mode:
#   async       archive_command = pgcairn archive-push only: no synchronous standby (RPO up to
#               a segment);
#   pgcairn     the same, plus `pgcairn wal-receive` as the only synchronous standby: each
#               commit waits until its WAL is durable in the repository (RPO = 0);
#   receivewal  `pg_receivewal --synchronous` into a local directory as the only synchronous
#               standby (RPO = 0 to a local disk only; the reference point).
# On file:// always, and on S3 when PGCAIRN_TEST_S3_ENDPOINT and PGCAIRN_TEST_S3_BUCKET are set
# (scripts/s3-local.sh start DIR prints them). Printed: TPS and average latency per mode, and
# each mode's TPS as a ratio of async's. The machine is shared and noisy: compare ratios from
# one run, not absolute figures across runs. The binary measured is PGCAIRN_BIN, else the
# release build.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_MODE=${1:-20}
CLIENTS=${CLIENTS:-4}
# shellcheck source=benches/lib.sh
. benches/lib.sh

bench_init walrecv-bench
# Background receivers run as postgres; runuser does not pass SIGTERM on, so each writes the
# pid of the process itself (exec keeps it) to $W/receiver.pid.
bg_pg() { # $@ = command
    as_pg sh -c 'echo $$ >"$0"; exec "$@"' "$W/receiver.pid" "$@" &
    RECV_WAIT=$!
}
RECV_WAIT=
stop_receivers() {
    if [ -s "$W/receiver.pid" ]; then kill -TERM "$(cat "$W/receiver.pid")" 2>/dev/null || true; fi
    if [ -n "$RECV_WAIT" ]; then wait "$RECV_WAIT" 2>/dev/null || true; fi
    rm -f "$W/receiver.pid"
    RECV_WAIT=
}
BENCH_CLEANUP_HOOK=stop_receivers

repo_config() { # $1 = file|s3 ; writes $W/pgcairn-$1.toml and prints its path
    local cfg="$W/pgcairn-$1.toml"
    {
        echo "[repo]"
        if [ "$1" = s3 ]; then
            echo "url = \"s3://$PGCAIRN_TEST_S3_BUCKET/walrecv-bench-$$\""
            echo "endpoint = \"$PGCAIRN_TEST_S3_ENDPOINT\""
            echo "allow_http = true"
            echo "access_key_id = \"test\""
            echo "secret_access_key = \"test\""
        else
            echo "url = \"file://$W/repo-file\""
        fi
        echo "key_file = \"$W/repo-$1.key\""
        echo "[cluster]"
        echo "conninfo = \"host=$W port=$PORT user=postgres\""
        echo "[wal_receive]"
        echo "status_file = \"$W/status-$1.json\""
    } >"$cfg"
    chmod 600 "$cfg"
    [ "$(id -u)" = 0 ] && chown postgres: "$cfg"
    as_pg "$W/bin/pgcairn" --config "$cfg" init --key-file "$W/repo-$1.key" >/dev/null
    echo "$cfg"
}

set_sync() { # $1 = synchronous_standby_names
    psql_pg "alter system set synchronous_standby_names = '$1'" >/dev/null
    psql_pg "select pg_reload_conf()" >/dev/null
}

wait_sync() { # $1 = application_name
    for _ in $(seq 1 300); do
        [ "$(psql_pg "select sync_state from pg_stat_replication where application_name = '$1'")" = sync ] && return 0
        sleep 0.1
    done
    echo "!! $1 never became the synchronous standby" >&2
    exit 1
}

run_pgbench() { # $1 = label ; sets TPS and LAT (ms)
    as_pg "$PGBIN/pgbench" -h "$W" -p "$PORT" -U postgres -N -c "$CLIENTS" -j 2 -T "$SECONDS_PER_MODE" postgres \
        >"$W/$1.pgbench" 2>&1 || { cat "$W/$1.pgbench" >&2; exit 1; }
    TPS=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$W/$1.pgbench" | head -1)
    LAT=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$W/$1.pgbench")
}

backends=(file)
if [ -n "${PGCAIRN_TEST_S3_ENDPOINT:-}" ] && [ -n "${PGCAIRN_TEST_S3_BUCKET:-}" ]; then backends+=(s3); fi

echo "== cluster in $W ($CLIENTS clients, ${SECONDS_PER_MODE}s per mode)"
pg_init '/bin/true' <<CONF
max_wal_size = '1GB'
CONF
pg_start
pgbench_init 10

printf '%-8s %-11s %10s %12s %8s\n' backend mode tps latency_ms ratio
for b in "${backends[@]}"; do
    cfg=$(repo_config "$b")
    psql_pg "alter system set archive_command = '$W/bin/pgcairn --config $cfg archive-push %p'" >/dev/null
    set_sync ''
stop_receivers
    run_pgbench "$b-async"
    base=$TPS
    [ "$b" = file ] && file_base=$TPS
    printf '%-8s %-11s %10s %12s %8s\n' "$b" async "$TPS" "$LAT" 1.00

    bg_pg "$W/bin/pgcairn" --config "$cfg" --log-level warn wal-receive --create-slot 2>"$W/$b-receiver.log"
    set_sync pgcairn
    wait_sync pgcairn
    run_pgbench "$b-pgcairn"
    printf '%-8s %-11s %10s %12s %8s\n' "$b" pgcairn "$TPS" "$LAT" "$(python3 -c "print(f'{$TPS / $base:.2f}')")"
    set_sync ''
stop_receivers
    stop_receivers
    psql_pg "select pg_drop_replication_slot('pgcairn')" >/dev/null 2>&1 || true
done

mkdir -p "$W/receivewal"
[ "$(id -u)" = 0 ] && chown postgres: "$W/receivewal"
bg_pg "$PGBIN/pg_receivewal" -D "$W/receivewal" --synchronous \
    -d "host=$W port=$PORT user=postgres application_name=receivewal" 2>"$W/receivewal.log"
set_sync receivewal
wait_sync receivewal
run_pgbench receivewal
printf '%-8s %-11s %10s %12s %8s\n' local receivewal "$TPS" "$LAT" "$(python3 -c "print(f'{$TPS / $file_base:.2f}')")"
set_sync ''
stop_receivers
