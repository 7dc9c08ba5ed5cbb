#!/usr/bin/env bash
# What a backup interval buys: WAL replay time against the amount of WAL since the backup.
#
#   benches/backup_interval_replay.sh [SCALE] [UNIT]   (pgbench scale, default 10; UNIT pgbench
#                                                       transactions per client in one load unit,
#                                                       default 3000; run as root or postgres)
#
# 1. A throwaway PostgreSQL 15 cluster (data checksums, PostgreSQL's default checkpoint
#    settings) archives to a pgcairn repository (file://, archive.async = true, so archive-get
#    prefetches) and is initialised with pgbench -i -s SCALE. A full backup, one load unit
#    (pgbench -c 2 -j 2 -t UNIT), then an incremental backup B: its time and stored bytes are
#    what one more backup per interval costs.
# 2. After B, MAX(MULTIPLES) load units run back to back; after unit k for every k in MULTIPLES
#    (default "1 4 16") a restore point u<k> is created and the WAL written since B recorded.
# 3. For each k: `pgcairn restore --backup B --target-name u<k> --target-action promote` into a
#    fresh directory; PostgreSQL is started (pg_ctl start -w: until it accepts connections,
#    which during archive recovery is when it is consistent) and polled until it has left
#    recovery. Phases: restore (the pgcairn command), start (to the first connection: replay of
#    the backup's own WAL), replay (the rest of the WAL to u<k> and the promotion). Also the
#    archive-get counters of the prefetch spool for that recovery (calls, and how many had
#    to wait for their segment), and the fingerprint (count and sum of abalance), which must
#    equal the one taken at u<k>.
#
# COMPARE_OPTS="-c name=value ...[; -c name=value ...]": each recovery is run again with each
# of these sets of settings on the server's command line (they outrank postgresql.auto.conf),
# to compare replay with and without them. archive-get runs with PGCAIRN_LOG=info, so its
# lines in the server log also count segments served from the spool and fetched directly
# (for binaries without the spool's counters). ALT_BIN=path: each recovery is also run with
# that pgcairn binary (restore and archive-get; same repository format), to compare two builds
# on the same data in one run. Environment: MULTIPLES; PGCAIRN_BIN (default target/release/pgcairn, built if
# missing); PG_BINDIR (PostgreSQL 15's bin); KEEP=1 keeps the work directory.
#
# Exits non-zero if a recovery fails or a fingerprint differs.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${1:-10}
UNIT=${2:-3000}
MULTIPLES=${MULTIPLES:-"1 4 16"}
. benches/lib.sh
COMPARE_OPTS=${COMPARE_OPTS:-}
[[ "$SCALE" =~ ^[1-9][0-9]*$ && "$UNIT" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [SCALE] [UNIT]" >&2; exit 2; }

bench_init interval
FP_SQL="select count(*) || '/' || sum(abalance) from pgbench_accounts"
PGB=("$W/bin/pgcairn" --config "$W/pgcairn.toml")
# The prefetch area of the recoveries into $W/restored (archive-get's working directory, as
# the kernel resolves it) from this repository:
# <spool>/<cluster>/prefetch/<16 hex of SHA-256(url "\ndatadir=" data directory)>.
PREFETCH="$W/spool/main/prefetch/$(printf '%s\ndatadir=%s' "file://$W/repo" "$(realpath -m "$W/restored")" | sha256sum | cut -c1-16)"
STATS="$PREFETCH/get-stats.json"

cat > "$W/pgcairn.toml" <<CONF
[repo]
url = "file://$W/repo"
key_file = "$W/repo.key"
[cluster]
name = "main"
pgdata = "$W/pg"
conninfo = "host=$W port=$PORT user=postgres dbname=postgres"
[archive]
async = true
spool_dir = "$W/spool"
CONF
[ "$(id -u)" = 0 ] && chown postgres: "$W/pgcairn.toml"
chmod 600 "$W/pgcairn.toml"

echo "== $("$W/bin/pgcairn" --version); scale $SCALE, load unit pgbench -c 2 -j 2 -t $UNIT, multiples $MULTIPLES; $(nproc) cores; in $W"
pg_init "$W/bin/pgcairn --config $W/pgcairn.toml archive-push %p" </dev/null
as_pg "${PGB[@]}" init --key-file "$W/repo.key" >/dev/null
pg_start
pgbench_init "$SCALE"
echo "   database $(( $(psql_pg "select pg_database_size('postgres')") / 1048576 )) MiB"

load() { as_pg "$PGBIN/pgbench" -h "$W" -p "$PORT" -U postgres -c 2 -j 2 -t "$UNIT" -n postgres >>"$W/pgbench.log" 2>&1 \
    || { tail -20 "$W/pgbench.log" >&2; exit 1; }; }
backup() { # $1 = type; prints "seconds stored_new id"
    local t0 t1
    t0=$(now_ns)
    as_pg "${PGB[@]}" --progress never backup --type "$1" --output json >"$W/backup-$1.json"
    t1=$(now_ns)
    python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(sys.argv[2], j["stats"]["stored_new"], j["id"])' \
        "$W/backup-$1.json" "$(secs "$t0" "$t1")"
}
read -r FULL_S FULL_STORED _ < <(backup full)
echo "   full backup: $FULL_S s, $((FULL_STORED / 1048576)) MiB stored"
L0=$(psql_pg "select pg_current_wal_lsn()")
load
UNIT_WAL=$(psql_pg "select pg_wal_lsn_diff(pg_current_wal_lsn(), '$L0')")
read -r INCR_S INCR_STORED BACKUP < <(backup incr)
echo "   one load unit wrote $((UNIT_WAL / 1048576)) MiB of WAL; the incremental after it: $INCR_S s, $((INCR_STORED / 1048576)) MiB stored (backup $BACKUP)"
LB=$(psql_pg "select pg_current_wal_lsn()")

MAXK=0; for k in $MULTIPLES; do [ "$k" -gt "$MAXK" ] && MAXK=$k; done
declare -A WAL FPK
for k in $(seq 1 "$MAXK"); do
    load
    if [[ " $MULTIPLES " == *" $k "* ]]; then
        FPK[$k]=$(psql_pg "$FP_SQL")
        psql_pg "select pg_create_restore_point('u$k')" >/dev/null
        WAL[$k]=$(psql_pg "select pg_wal_lsn_diff(pg_current_wal_lsn(), '$LB')")
        echo "   after $k unit(s): $((WAL[$k] / 1048576)) MiB of WAL since the backup, fingerprint ${FPK[$k]}"
    fi
done
SEG=$(psql_pg "select pg_walfile_name(pg_switch_wal())")
i=0
until [[ "$(psql_pg "select coalesce(last_archived_wal, '') from pg_stat_archiver")" > "$SEG" || \
         "$(psql_pg "select coalesce(last_archived_wal, '') from pg_stat_archiver")" == "$SEG" ]]; do
    i=$((i + 1)); [ "$i" -lt 6000 ] || { echo "!! $SEG not archived" >&2; exit 1; }; sleep 0.1
done
as_pg "$PGBIN/pg_ctl" -D "$W/pg" -m fast -w stop >/dev/null
RUNNING=()

stat_json() { if [ -f "$STATS" ]; then cat "$STATS"; else echo '{}'; fi; }
FAILED=0
ROWS=()
recover() { # $1 = k, $2 = variant label, $3.. = extra server options
    local k=$1 label=$2 dir="$W/restored" port t0 t1 t2 t3 i=0 before after fp
    shift 2
    port=$(free_port)
    as_pg rm -rf "$dir" "$dir.log"
    as_pg mkdir -m 700 "$dir"
    before=$(stat_json)
    t0=$(now_ns)
    as_pg "${PGB[@]}" --progress never restore --pgdata "$dir" --backup "$BACKUP" --target-name "u$k" \
        --target-action promote >"$W/restore.log" 2>&1 || { cat "$W/restore.log" >&2; exit 1; }
    t1=$(now_ns)
    RUNNING=("$dir")
    as_pg env PGCAIRN_LOG=info "$PGBIN/pg_ctl" -D "$dir" -l "$dir.log" -t 3600 -w \
        -o "-c port=$port -c archive_mode=off -c unix_socket_directories=$W $*" start >/dev/null \
        || { echo "!! u$k: the restored cluster did not start" >&2; tail -30 "$dir.log" >&2; exit 1; }
    t2=$(now_ns)
    while [ "$(psql_at "$port" "select pg_is_in_recovery()" 2>/dev/null || echo t)" != f ]; do
        i=$((i + 1))
        [ "$i" -lt 72000 ] || { echo "!! u$k: still in recovery" >&2; tail -30 "$dir.log" >&2; exit 1; }
        as_pg "$PGBIN/pg_ctl" -D "$dir" status >/dev/null || { echo "!! u$k: the server stopped" >&2; tail -30 "$dir.log" >&2; exit 1; }
        sleep 0.02
    done
    t3=$(now_ns)
    fp=$(psql_at "$port" "$FP_SQL")
    as_pg "$PGBIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null
    RUNNING=()
    # The prefetcher exits archive.idle_exit after the last request; the next recovery must
    # start its own (with its own binary), not find this one still running.
    local lock="$PREFETCH/prefetcher.lock" j=0
    while [ -f "$lock" ] && ! flock -n "$lock" true; do
        j=$((j + 1)); [ "$j" -lt 600 ] || { echo "!! the prefetcher did not exit" >&2; exit 1; }; sleep 0.1
    done
    after=$(stat_json)
    local spool_lines direct_lines
    # archive-get's own lines (INFO; PostgreSQL's are LOG).
    spool_lines=$(grep -a INFO "$dir.log" | grep -c "restored from the prefetch spool" || true)
    direct_lines=$(grep -a INFO "$dir.log" | grep -caP " restored(?! from the prefetch spool)" || true)
    if [ "$fp" != "${FPK[$k]}" ]; then echo "!! u$k ($label): fingerprint $fp, expected ${FPK[$k]}" >&2; FAILED=1; fi
    ROWS+=("$(python3 - "$k" "${WAL[$k]}" "$label" "$t0" "$t1" "$t2" "$t3" "$before" "$after" "$spool_lines" "$direct_lines" <<'PY'
import json, sys
k, wal, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t0, t1, t2, t3 = (int(x) for x in sys.argv[4:8])
b, a = json.loads(sys.argv[8]), json.loads(sys.argv[9])
spool_lines, direct_lines = int(sys.argv[10]), int(sys.argv[11])
d = lambda f: a.get(f, 0) - b.get(f, 0)
restore, start, replay, total = (t1 - t0) / 1e9, (t2 - t1) / 1e9, (t3 - t2) / 1e9, (t3 - t0) / 1e9
calls = d("calls") - d("absent")
waits = f"{d('waited') + d('direct')} ({d('wait_seconds'):.2f} s)" if "calls" in a else "n/a"
print(f"| {k}x | {wal / 2**20:.0f} | {label} | {restore:.2f} | {start:.2f} | {replay:.2f} | {total:.2f} | "
      f"{100 * (start + replay) / total:.0f} % | {spool_lines + direct_lines} ({direct_lines} direct) | {waits} |")
PY
)")
    as_pg rm -rf "$dir"
}
use_bin() { as_pg cp "$1" "$W/bin/pgcairn.new" && as_pg mv "$W/bin/pgcairn.new" "$W/bin/pgcairn"; }
for k in $MULTIPLES; do
    recover "$k" "as restored"
    if [ -n "${ALT_BIN:-}" ]; then
        use_bin "$ALT_BIN"; recover "$k" "as restored, ALT_BIN"; use_bin "$BIN"
    fi
    if [ -n "$COMPARE_OPTS" ]; then
        IFS=';' read -ra VARIANTS <<<"$COMPARE_OPTS"
        for v in "${VARIANTS[@]}"; do
            v=$(echo "$v" | xargs)
            # shellcheck disable=SC2086
            recover "$k" "${v//-c /}" $v
        done
    fi
done

echo
echo "pgbench scale $SCALE, load unit pgbench -c 2 -j 2 -t $UNIT ($((UNIT_WAL / 1048576)) MiB of WAL); incremental backup after one unit: $INCR_S s, $((INCR_STORED / 1048576)) MiB stored"
echo
echo "| WAL since backup (units) | WAL MiB | server settings | restore s | start s | replay s | time to recover s | start + replay share | segments fetched (log) | replay waited (spool counters) |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
exit "$FAILED"
