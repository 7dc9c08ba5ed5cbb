#!/usr/bin/env bash
# archive-push: pgcairn against pgBackRest on the same real WAL segments.
#
#   benches/archive_push_vs_pgbackrest.sh [SEGMENTS]      (default 32; run as root or postgres)
#
# 1. A throwaway PostgreSQL 15 cluster produces real WAL (pgbench initialise + load); SEGMENTS
#    finished 16 MiB segments are kept in its pg_wal.
# 2. Sync: each tool archives every segment, one call per segment as archive_command does,
#    into a fresh local repository. pgBackRest: compress-type=zst, compress-level=3.
#    pgcairn: its defaults (zstd level 1 for WAL, XChaCha20-Poly1305, key file).
# 3. Async: all segments are marked .ready (PostgreSQL behind on archiving), then each tool's
#    archive-push is called for each segment in order, as PostgreSQL would, and the status
#    file is renamed to .done on success. pgBackRest: archive-async=y, process-max=2;
#    pgcairn: [archive] async = true (jobs default: min(4, cores)).
# 4. archive-get of every segment by each tool, one call per segment, checked byte for byte.
# 5. Stored bytes of the archive, and peak RSS of one sync archive-push call (/usr/bin/time).
#
# Every round uses fresh repositories; rounds alternate tools; the best of ROUNDS (default 2)
# is reported. Figures are ratios measured in one run: the machine is shared and noisy.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SEGMENTS=${1:-32}
ROUNDS=${ROUNDS:-2}
PGBIN=${PG_BINDIR:-/usr/lib/postgresql/15/bin}

if [ "$(id -u)" = 0 ]; then ./scripts/install-deps.sh >/dev/null; fi
command -v pgbackrest >/dev/null || { echo "pgbackrest missing: run scripts/install-deps.sh as root" >&2; exit 2; }
cargo build --release --locked -p pgcairn >/dev/null 2>&1 || cargo build --release --locked -p pgcairn

W=$(mktemp -d /tmp/pgcairn-bench.XXXXXX)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() { as_pg "$PGBIN/pg_ctl" -D "$W/pg" -m immediate stop >/dev/null 2>&1 || true; pkill -f "$W" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
mkdir -p "$W/bin"
cp target/release/pgcairn "$W/bin/pgcairn"
[ "$(id -u)" = 0 ] && chown -R postgres: "$W"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

echo "== producing real WAL (pgbench) in $W"
as_pg "$PGBIN/initdb" -D "$W/pg" --data-checksums -A trust -U postgres >/dev/null
cat >> "$W/pg/postgresql.conf" <<CONF
listen_addresses = ''
port = $PORT
unix_socket_directories = '$W'
wal_level = replica
archive_mode = on
archive_command = '/bin/true'
wal_keep_size = '4GB'
max_wal_size = '4GB'
checkpoint_timeout = '1h'
CONF
as_pg "$PGBIN/pg_ctl" -D "$W/pg" -l "$W/pg.log" -w start >/dev/null
psql_pg() { as_pg "$PGBIN/psql" -X -A -t -h "$W" -p "$PORT" -U postgres -d postgres -c "$1"; }
# Scale 50 initialises about 750 MB of tables (about 40 segments of WAL); then OLTP load.
as_pg "$PGBIN/pgbench" -h "$W" -p "$PORT" -U postgres -i -s 50 -q postgres >/dev/null 2>&1
as_pg "$PGBIN/pgbench" -h "$W" -p "$PORT" -U postgres -T 20 -c 2 postgres >/dev/null 2>&1
psql_pg "select pg_switch_wal()" >/dev/null
psql_pg "checkpoint" >/dev/null

cat > "$W/pgbackrest.conf" <<CONF
[global]
repo1-path=$W/pgbr-repo
compress-type=zst
compress-level=3
log-level-console=warn
log-level-file=off
lock-path=$W/pgbr-lock
spool-path=$W/pgbr-spool
process-max=2
start-fast=y

[bench]
pg1-path=$W/pg
pg1-port=$PORT
pg1-socket-path=$W
CONF
[ "$(id -u)" = 0 ] && chown postgres: "$W/pgbackrest.conf"
as_pg pgbackrest --config="$W/pgbackrest.conf" --stanza=bench stanza-create >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$W/pg" -m fast -w stop >/dev/null

mapfile -t SEGS < <(ls "$W/pg/pg_wal" | grep -E '^[0-9A-F]{24}$' | sort | head -n -1 | tail -n "$SEGMENTS")
[ "${#SEGS[@]}" -eq "$SEGMENTS" ] || { echo "only ${#SEGS[@]} segments produced" >&2; exit 1; }
echo "   ${#SEGS[@]} segments: ${SEGS[0]} .. ${SEGS[-1]}"
WAL_BYTES=$(( ${#SEGS[@]} * 16 * 1024 * 1024 ))

now_ns() { date +%s%N; }
reset_status() {
    as_pg find "$W/pg/pg_wal/archive_status" -type f -delete
    if [ "$1" = ready ]; then for s in "${SEGS[@]}"; do as_pg touch "$W/pg/pg_wal/archive_status/$s.ready"; done; fi
}
fresh_pgcairn() { # $1 = async true|false
    # A background pusher left from an async round still holds the previous repository's key.
    pkill -9 -f "$W/bin/pgcairn.*archive-push-daemon" 2>/dev/null || true
    while pgrep -f "$W/bin/pgcairn.*archive-push-daemon" >/dev/null; do sleep 0.1; done
    as_pg rm -rf "$W/pgb-repo" "$W/pgb-spool" "$W/pgb.key"
    cat > "$W/pgcairn.toml" <<CONF
[repo]
url = "file://$W/pgb-repo"
key_file = "$W/pgb.key"
[archive]
async = $1
spool_dir = "$W/pgb-spool"
CONF
    [ "$(id -u)" = 0 ] && chown postgres: "$W/pgcairn.toml"
    as_pg "$W/bin/pgcairn" --config "$W/pgcairn.toml" init --key-file "$W/pgb.key" >/dev/null
}
fresh_pgbackrest() { # $1 = async y|n
    as_pg rm -rf "$W/pgbr-repo/archive/bench/15-1" "$W/pgbr-spool" "$W/pgbr-lock"
    as_pg mkdir -p "$W/pgbr-repo/archive/bench/15-1"
    sed -i "s/^archive-async=.*//" "$W/pgbackrest.conf"
    echo "archive-async=$1" >> "$W/pgbackrest.conf"
}
push_all() { # $1 = tool; pushes every segment like PostgreSQL would; prints elapsed ns
    # One shell as the postgres user runs the loop, as PostgreSQL's archiver would (it calls
    # archive_command through sh -c and renames .ready to .done itself).
    local cmd
    if [ "$1" = pgcairn ]; then
        cmd="'$W/bin/pgcairn' --config '$W/pgcairn.toml' archive-push pg_wal/\$s"
    else
        cmd="pgbackrest --config='$W/pgbackrest.conf' --stanza=bench archive-push '$W/pg/pg_wal/'\$s"
    fi
    as_pg bash -c "
        cd '$W/pg'
        start=\$(date +%s%N)
        for s in ${SEGS[*]}; do
            sh -c \"$cmd\" || exit 1
            [ -e pg_wal/archive_status/\$s.ready ] && mv pg_wal/archive_status/\$s.ready pg_wal/archive_status/\$s.done
        done
        end=\$(date +%s%N)
        echo \$(( end - start ))
    "
}
min() { if [ -z "$1" ] || [ "$2" -lt "$1" ]; then echo "$2"; else echo "$1"; fi; }

best_pgb_sync= best_pgbr_sync= best_pgb_async= best_pgbr_async=
for round in $(seq 1 "$ROUNDS"); do
    echo "== round $round"
    fresh_pgbackrest n; reset_status none; t=$(push_all pgbackrest); best_pgbr_sync=$(min "$best_pgbr_sync" "$t")
    PGBR_BYTES=$(du -sb --apparent-size "$W/pgbr-repo/archive/bench/15-1" | cut -f1)
    fresh_pgcairn false; reset_status none; t=$(push_all pgcairn); best_pgb_sync=$(min "$best_pgb_sync" "$t")
    PGB_BYTES=$(du -sb --apparent-size "$W/pgb-repo/clusters" | cut -f1)
    fresh_pgbackrest y; reset_status ready; t=$(push_all pgbackrest); best_pgbr_async=$(min "$best_pgbr_async" "$t")
    fresh_pgcairn true; reset_status ready; t=$(push_all pgcairn); best_pgb_async=$(min "$best_pgb_async" "$t")
    sleep 1
done

# archive-get: after the last round both repositories hold every segment. Each tool restores
# them one call per segment into an empty directory, as restore_command does (sync mode for
# both; pgBackRest writes the file in place, pgcairn writes a temp file and renames it, neither
# fsyncs: PostgreSQL does when it keeps the file), and every restored file is compared with the
# original.
sed -i "s/^async = .*/async = false/" "$W/pgcairn.toml"
sed -i "s/^archive-async=.*//" "$W/pgbackrest.conf"
get_all() { # $1 = tool; prints elapsed ns
    local cmd out="$W/restored-$1"
    as_pg rm -rf "$out"; as_pg mkdir -p "$out"
    if [ "$1" = pgcairn ]; then
        cmd="'$W/bin/pgcairn' --config '$W/pgcairn.toml' archive-get \$s '$out/'\$s"
    else
        cmd="pgbackrest --config='$W/pgbackrest.conf' --stanza=bench archive-get \$s '$out/'\$s"
    fi
    as_pg bash -c "
        start=\$(date +%s%N)
        for s in ${SEGS[*]}; do sh -c \"$cmd\" || exit 1; done
        end=\$(date +%s%N)
        for s in ${SEGS[*]}; do cmp -s '$W/pg/pg_wal/'\$s '$out/'\$s || { echo \"\$s differs\" >&2; exit 1; }; done
        echo \$(( end - start ))
    "
}
best_pgb_get= best_pgbr_get=
for round in $(seq 1 "$ROUNDS"); do
    t=$(get_all pgbackrest); best_pgbr_get=$(min "$best_pgbr_get" "$t")
    t=$(get_all pgcairn); best_pgb_get=$(min "$best_pgb_get" "$t")
done

# Peak RSS of single sync calls (max over three segments).
fresh_pgcairn false; fresh_pgbackrest n; reset_status none
rss_pgb=0 rss_pgbr=0
for s in "${SEGS[@]:0:3}"; do
    r=$(cd "$W/pg" && as_pg /usr/bin/time -f %M "$W/bin/pgcairn" --config "$W/pgcairn.toml" archive-push "pg_wal/$s" 2>&1 >/dev/null | tail -1)
    [ "$r" -gt "$rss_pgb" ] && rss_pgb=$r
    r=$(cd "$W/pg" && as_pg /usr/bin/time -f %M pgbackrest --config="$W/pgbackrest.conf" --stanza=bench archive-push "$W/pg/pg_wal/$s" 2>&1 >/dev/null | tail -1)
    [ "$r" -gt "$rss_pgbr" ] && rss_pgbr=$r
done

n=${#SEGS[@]}
python3 - "$n" "$WAL_BYTES" "$best_pgb_sync" "$best_pgbr_sync" "$best_pgb_async" "$best_pgbr_async" "$best_pgb_get" "$best_pgbr_get" "$PGB_BYTES" "$PGBR_BYTES" "$rss_pgb" "$rss_pgbr" "$(pgbackrest version)" <<'PY'
import sys
n, wal, pgb_s, pgbr_s, pgb_a, pgbr_a, pgb_g, pgbr_g, pgb_b, pgbr_b, rss_pgb, rss_pgbr, ver = sys.argv[1:]
n, wal = int(n), int(wal)
ms = lambda ns: int(ns) / 1e6 / n
print()
print(f"archive-push of {n} real 16 MiB WAL segments ({wal/2**20:.0f} MiB), best of rounds; pgBackRest = {ver}")
print(f"{'':28}{'pgcairn':>12}{'pgBackRest':>12}{'ratio':>10}")
print(f"{'sync  ms per segment':28}{ms(pgb_s):>12.1f}{ms(pgbr_s):>12.1f}{ms(pgbr_s)/ms(pgb_s):>9.2f}x  (pgcairn throughput / pgBackRest)")
print(f"{'async ms per segment':28}{ms(pgb_a):>12.1f}{ms(pgbr_a):>12.1f}{ms(pgbr_a)/ms(pgb_a):>9.2f}x")
print(f"{'archive-get ms per segment':28}{ms(pgb_g):>12.1f}{ms(pgbr_g):>12.1f}{ms(pgbr_g)/ms(pgb_g):>9.2f}x  (neither fsyncs what PostgreSQL reads)")
print(f"{'stored MiB':28}{int(pgb_b)/2**20:>12.1f}{int(pgbr_b)/2**20:>12.1f}{int(pgb_b)/int(pgbr_b):>9.2f}x  (pgcairn bytes / pgBackRest; lower is better)")
print(f"{'peak RSS per call (MiB)':28}{int(rss_pgb)/1024:>12.1f}{int(rss_pgbr)/1024:>12.1f}")
PY
