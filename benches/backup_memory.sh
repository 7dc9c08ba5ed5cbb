#!/usr/bin/env bash
# Peak memory of backup and restore against database size.
#
#   benches/backup_memory.sh [SCALE...]      (default: 50 500; run as root or postgres)
#
# For each pgbench SCALE, on a fresh throwaway PostgreSQL 15 cluster (data checksums, WAL
# archived by pgcairn archive-push into a fresh local encrypted repository):
# 1. pgbench -i -s SCALE, then `pgcairn backup --type full`;
# 2. pgbench -T 10 -c 2, then `pgcairn backup` (incr, the default);
# 3. `pgcairn restore --pgdata` into a new directory (latest backup, the incr).
# Each command runs under /usr/bin/time: wall seconds and peak RSS (%M). The peak RSS growth
# between scales, divided by the growth in 64 KiB blocks of the database, is the per-block
# memory cost of whatever the process keeps for every block (manifest, block maps, ...).
#
# Scale 500 is about 7.5 GB of tables, twice on disk during the restore, plus the repository
# and WAL; each scale's directory is removed before the next. Timings are noisy on a shared
# machine; peak RSS is not.
#
# Environment: PGCAIRN_BIN (default target/release/pgcairn, snapshotted once so every scale
# runs the same binary), BACKUP_JOBS (passes --jobs to both backups), CMD_TIMEOUT (seconds per
# pgcairn command, default 1800: a hang is reported as a failure of that scale, and the
# remaining scales still run).
set -euo pipefail
cd "$(dirname "$0")/.."
SCALES=("$@")
[ "${#SCALES[@]}" -gt 0 ] || SCALES=(50 500)
PGBIN=${PG_BINDIR:-/usr/lib/postgresql/15/bin}

CMD_TIMEOUT=${CMD_TIMEOUT:-1800}
BACKUP_JOBS=${BACKUP_JOBS:-}
BIN=${PGCAIRN_BIN:-target/release/pgcairn}
[ -x "$BIN" ] || [ -n "${PGCAIRN_BIN:-}" ] || cargo build --release --locked -p pgcairn

W=
RESULTS=$(mktemp /tmp/pgcairn-bench-results.XXXXXX)
SNAPSHOT=$(mktemp /tmp/pgcairn-bench-bin.XXXXXX)
cp "$BIN" "$SNAPSHOT"
chmod 755 "$SNAPSHOT"
echo "== $("$SNAPSHOT" --version), binary $BIN (md5 $(md5sum < "$SNAPSHOT" | cut -c1-12))${BACKUP_JOBS:+, backup --jobs $BACKUP_JOBS}"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
stop_scale() {
    [ -n "$W" ] || return 0
    as_pg "$PGBIN/pg_ctl" -D "$W/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$W"
    W=
}
cleanup() { stop_scale; rm -f "$RESULTS" "$SNAPSHOT"; }
trap cleanup EXIT

# Runs "$@" as postgres under /usr/bin/time (and timeout); output to $W/$label.log;
# sets T_WALL (s), T_RSS (KiB). On failure prints why and returns 1.
timed() {
    local label=$1; shift
    local rc=0
    as_pg /usr/bin/time -f '%e %M' -o "$W/$label.time" timeout -k 30 "$CMD_TIMEOUT" "$@" \
        >"$W/$label.log" 2>&1 || rc=$?
    if [ "$rc" != 0 ]; then
        if [ "$rc" = 124 ]; then
            echo "!! $label: no exit after ${CMD_TIMEOUT} s (hung?), killed: $*" >&2
        else
            echo "!! $label failed (exit $rc): $*" >&2
        fi
        sed 's/^/   | /' "$W/$label.log" >&2
        return 1
    fi
    read -r T_WALL T_RSS < <(tail -1 "$W/$label.time")
}

run_scale() { # $1 = pgbench scale
    local scale=$1
    W=$(mktemp -d /tmp/pgcairn-bench.XXXXXX)
    mkdir -p "$W/bin"
    cp "$SNAPSHOT" "$W/bin/pgcairn"
    chmod 755 "$W/bin/pgcairn"
    [ "$(id -u)" = 0 ] && chown -R postgres: "$W"
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

    echo "== scale $scale in $W (port $port)"
    as_pg "$PGBIN/initdb" -D "$W/pg" --data-checksums -A trust -U postgres >/dev/null
    cat >> "$W/pg/postgresql.conf" <<CONF
listen_addresses = ''
port = $port
unix_socket_directories = '$W'
wal_level = replica
archive_mode = on
archive_command = '''$W/bin/pgcairn'' --config ''$W/pgcairn.toml'' archive-push %p'
max_wal_size = '4GB'
checkpoint_timeout = '30min'
CONF
    cat > "$W/pgcairn.toml" <<CONF
[repo]
url = "file://$W/repo"
key_file = "$W/repo.key"
[cluster]
name = "main"
pgdata = "$W/pg"
conninfo = "host=$W port=$port user=postgres dbname=postgres"
[archive]
spool_dir = "$W/spool"
CONF
    [ "$(id -u)" = 0 ] && chown postgres: "$W/pgcairn.toml"
    local pgb=("$W/bin/pgcairn" --config "$W/pgcairn.toml")
    as_pg "${pgb[@]}" init --key-file "$W/repo.key" >/dev/null
    as_pg "$PGBIN/pg_ctl" -D "$W/pg" -l "$W/pg.log" -w start >/dev/null
    psql_pg() { as_pg "$PGBIN/psql" -X -A -t -h "$W" -p "$port" -U postgres -d postgres -c "$1"; }

    local t0=$SECONDS
    as_pg "$PGBIN/pgbench" -h "$W" -p "$port" -U postgres -i -s "$scale" -q postgres >"$W/pgbench-init.log" 2>&1 \
        || { cat "$W/pgbench-init.log" >&2; exit 1; }
    local db_bytes
    db_bytes=$(psql_pg "select pg_database_size('postgres')")
    echo "   pgbench -i -s $scale: $((SECONDS - t0)) s; database $(( db_bytes / 1048576 )) MiB ($(( db_bytes / 65536 )) blocks of 64 KiB)"

    local jobs=()
    [ -n "$BACKUP_JOBS" ] && jobs=(--jobs "$BACKUP_JOBS")
    fail() { echo "$scale $db_bytes FAIL $1" >> "$RESULTS"; FAILED=1; stop_scale; }
    timed full "${pgb[@]}" --progress never backup --type full "${jobs[@]}" || { fail full; return 0; }
    local full_wall=$T_WALL full_rss=$T_RSS
    echo "   backup full: ${full_wall} s, peak RSS $(( full_rss / 1024 )) MiB"

    as_pg "$PGBIN/pgbench" -h "$W" -p "$port" -U postgres -T 10 -c 2 postgres >"$W/pgbench-run.log" 2>&1 \
        || { cat "$W/pgbench-run.log" >&2; exit 1; }
    timed incr "${pgb[@]}" --progress never backup "${jobs[@]}" || { fail incr; return 0; }
    local incr_wall=$T_WALL incr_rss=$T_RSS
    echo "   backup incr: ${incr_wall} s, peak RSS $(( incr_rss / 1024 )) MiB"

    local repo_bytes
    repo_bytes=$(du -sb "$W/repo" | cut -f1)
    # Stop PostgreSQL before restoring: only the repository is read, and it frees memory.
    as_pg "$PGBIN/pg_ctl" -D "$W/pg" -m fast -w stop >/dev/null
    timed restore "${pgb[@]}" --progress never restore --pgdata "$W/restored" || { fail restore; return 0; }
    local restore_wall=$T_WALL restore_rss=$T_RSS
    echo "   restore:     ${restore_wall} s, peak RSS $(( restore_rss / 1024 )) MiB"

    echo "$scale $db_bytes $repo_bytes $full_wall $full_rss $incr_wall $incr_rss $restore_wall $restore_rss" >> "$RESULTS"
    python3 - "$db_bytes" "$full_wall" <<'PY'
import sys
size, wall = int(sys.argv[1]), float(sys.argv[2])
print(f"   full backup throughput: {size / 2**20 / max(wall, 0.01):.0f} MB/s")
PY
    stop_scale
}

FAILED=0
for s in "${SCALES[@]}"; do run_scale "$s"; done

python3 - "$RESULTS" <<'PY'
import sys
lines = [l.split() for l in open(sys.argv[1]) if l.strip()]
rows = [l for l in lines if l[2] != "FAIL"]
MiB = 2**20
print()
print("pgcairn peak RSS (MiB) and wall time (s) against database size")
print(f"{'scale':>6}{'db MiB':>9}{'blocks':>9}{'repo MiB':>10}"
      f"{'full s':>8}{'full MB/s':>10}{'full RSS':>9}{'incr s':>8}{'incr RSS':>9}{'rest s':>8}{'rest RSS':>9}")
for scale, db, repo, fw, fr, iw, ir, rw, rr in rows:
    db, repo = int(db), int(repo)
    fw, iw, rw = float(fw), float(iw), float(rw)
    print(f"{scale:>6}{db/MiB:>9.0f}{db//65536:>9}{repo/MiB:>10.0f}"
          f"{fw:>8.1f}{db/MiB/max(fw,0.01):>10.0f}{int(fr)/1024:>9.1f}"
          f"{iw:>8.1f}{int(ir)/1024:>9.1f}{rw:>8.1f}{int(rr)/1024:>9.1f}")
for scale, db, _, what in (l for l in lines if l[2] == "FAIL"):
    print(f"{scale:>6}{int(db)/MiB:>9.0f}{int(db)//65536:>9}   FAILED at: {what}")
if len(rows) >= 2:
    a, b = rows[0], rows[-1]
    dblocks = int(b[1]) // 65536 - int(a[1]) // 65536
    if dblocks:
        print()
        print(f"peak RSS growth per 64 KiB block of database, scale {a[0]} -> {b[0]} ({dblocks} blocks):")
        for name, i in (("backup full", 4), ("backup incr", 6), ("restore", 8)):
            d = (int(b[i]) - int(a[i])) * 1024
            print(f"   {name:12} {d/MiB:+8.1f} MiB  = {d/dblocks:8.1f} bytes per block")
PY
exit "$FAILED"
