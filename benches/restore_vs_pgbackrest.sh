#!/usr/bin/env bash
# Backup, restore and point-in-time recovery: pgcairn against pgBackRest on the same cluster.
#
#   benches/restore_vs_pgbackrest.sh [SCALE]      (pgbench scale, default 10; run as root or postgres)
#
# 1. A throwaway PostgreSQL 15 cluster (data checksums) is initialised with pgbench -i -s SCALE.
#    Its archive_command pushes every WAL file to BOTH tools (pgBackRest first, then pgcairn),
#    so both repositories hold the same WAL (local; S3=1: below). pgBackRest: compress-type=zst,
#    compress-level=3, process-max=2, archive-async=n (PGBR_ARCHIVE_ASYNC=1: y, which makes
#    its archive-push asynchronous and its archive-get prefetch), plus repo1-bundle=y (>= 2.39) and
#    repo1-block=y (block incremental: 2.45 with beta=y, >= 2.46) when the installed version has them.
#    pgcairn: its defaults (file:// repository made by `pgcairn init`, key file, zstd 3 for
#    blocks, XChaCha20-Poly1305), the release binary.
# 2. A full backup by each tool; then a 1 % churn (update of the first SCALE*1000 rows of
#    pgbench_accounts, contiguous) and an incremental by each (pgBackRest --type=incr, pgcairn
#    --type incr). Stored bytes of the incremental: pgBackRest, the size of its backup directory
#    in the repository; pgcairn, the growth of its repository outside the WAL (packs/, index/
#    and the backup manifests), with `stored_new` of `backup --output json` shown beside it.
# 3. Fingerprint F1 of the source right after the last incremental (count and sum of
#    pgbench_accounts.abalance, count and newest row of a marker table). Then a marker row is
#    inserted, fingerprint F2 taken and the time T recorded; after T another 1 % churn, a WAL
#    switch, and a wait until the archiver has pushed that segment to both (pg_stat_archiver;
#    then each tool's archive-get of it is checked).
# 4. Each tool restores its newest backup to the backup's consistency point (pgBackRest
#    --type=immediate, pgcairn --target immediate; both --target-action promote) into a fresh
#    empty directory: wall time and peak RSS of the restore command (/usr/bin/time %M: the
#    largest single process, pgBackRest's local workers included). The restored cluster is
#    started on its own port with archive_mode=off; once promoted, its fingerprint must equal F1.
# 5. Time to recover to T: each tool restores to --target-time T with promote into a fresh
#    directory, PostgreSQL is started and polled until pg_is_in_recovery() is false; restore +
#    start + WAL replay + promotion are timed as a whole. The fingerprint must equal F2, the
#    restore_command must call the tool that restored, archive_mode must be off.
#    The time is split into restore (the tool's command), start (until the server accepts
#    read-only connections, which in archive recovery is when it is consistent, so it includes
#    the replay of the backup's own WAL) and replay (the rest of the WAL to T, and the
#    promotion); "WAL replay" is start + replay, and its share of the time to recover is shown.
#    Where the server is ready is read from its own log (the millisecond timestamps of "ready to
#    accept read-only connections" and "ready to accept connections", log_timezone=UTC, the
#    same clock as the script's): `pg_ctl start -w` looks every 100 ms and the psql poll every
#    50 ms plus a process start, which added 0.1-0.2 s to either tool's time (the start phase
#    measured 0.12 s or 0.22 s, nothing between). The polled time is printed beside it.
#    restore_command: each tool's as its restore writes it. pgBackRest's fetches synchronously
#    (archive-async=n, its default; PGBR_ARCHIVE_ASYNC=1 for its asynchronous archive-get);
#    pgcairn's is `archive-get --prefetch` (prefetch through the spool, archiving unchanged).
#    After pgcairn's recovery its archive-get counters are printed (calls served from the
#    prefetch spool, fetched directly, and the seconds replay stood still waiting for WAL).
#    Every restore (steps 4 and 5) starts after a `sync`, untimed: the previous step's writes
#    and the removal of its multi-gigabyte data directory are flushed first, so neither tool
#    pays for the other's writeback (at scale 500 the second restore of a pair measured
#    1.7 s slower than the same restore alone).
# 6. The disk floor: dd writes as many bytes as pgcairn's restore put on disk into the same file
#    system and syncs them, through the page cache and with O_DIRECT; the faster is the floor.
#    Printed beside the restores (each tool's restore as a multiple of it, and the best restore
#    ratio any tool could reach against pgBackRest's), and as the time to recover pgcairn would
#    reach with its restore at the floor and its measured WAL replay: what bounds the two
#    restore targets on this machine, measured in the same round.
#
# ROUNDS (default 1) repeats 2-6 with fresh repositories (archiving is paused while they are
# recreated), alternating which tool goes first; times are the best of the rounds, peak RSS the
# largest, stored bytes from the last round. Ratios: pgBackRest time / pgcairn time (>1: pgcairn
# faster); stored bytes pgcairn / pgBackRest (<1: pgcairn smaller). The machine is shared and
# noisy: compare ratios from one run, not across runs.
#
# Exits non-zero if any restore fails or any fingerprint differs.
#
# FIRST_START_AB=1: pgcairn's time to recover is measured a second time per round with the
# restore's first-start block (recovery_init_sync_method = syncfs, see engine/src/first_start.rs)
# deleted before the start, as restores were before it existed; both are printed as a share of
# pgBackRest's time to recover.
#
# Environment: ROUNDS; S3; FIRST_START_AB; PGCAIRN_BIN (a pgcairn binary to use instead of building the release
# one with `cargo build --release --locked -p pgcairn`); PG_BINDIR (PostgreSQL 15's bin).
#
# S3=1: both repositories in the local S3 server (scripts/s3-local.sh: moto, in memory, one
# bucket, a prefix per tool and round). pgBackRest only speaks HTTPS to S3, and moto's own TLS
# mode is unusable (see ../shared/S3-LOCAL.md), so moto sits behind a socat TLS terminator
# with a certificate from a throwaway CA, and both tools go through it: pgBackRest without
# verifying it (repo1-storage-verify-tls=n), pgcairn verifying it against the CA (ca_file).
# socat forks a process per connection, which weighs on whichever tool opens more; S3_PLAIN=1
# lets pgcairn talk plain HTTP to moto instead (what runs before 2026-12-03 measured).
# Stored bytes are summed from the bucket listing (boto3 from moto's venv). moto is a Python
# server: its own cost weighs on both tools' timings.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${1:-10}
ROUNDS=${ROUNDS:-1}
S3=${S3:-0}
FIRST_START_AB=${FIRST_START_AB:-0}
. benches/lib.sh
[[ "$SCALE" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [SCALE]" >&2; exit 2; }

if [ "$(id -u)" = 0 ]; then ./scripts/install-deps.sh >/dev/null; fi
command -v pgbackrest >/dev/null || { echo "pgbackrest missing: run scripts/install-deps.sh as root" >&2; exit 2; }
SOCAT_PID=
stop_s3() {
    if [ "$S3" = 1 ]; then
        [ -n "$SOCAT_PID" ] && kill "$SOCAT_PID" 2>/dev/null
        ./scripts/s3-local.sh stop "$W/s3" >/dev/null 2>&1 || true
    fi
}
BENCH_CLEANUP_HOOK=stop_s3
bench_init bench
FP_SQL="select (select count(*) || '/' || sum(abalance) from pgbench_accounts) || '/' ||
               (select count(*) || '/' || coalesce(max(t)::text, '-') from marker)"

PGBR_VERSION=$(pgbackrest version | awk '{print $2}')
PGBR_EXTRA="" PGBR_OPTS="zst-3, process-max=2"
[ "${PGBR_ARCHIVE_ASYNC:-0}" = 1 ] && PGBR_OPTS="$PGBR_OPTS, archive-async=y"
if ver_ge "$PGBR_VERSION" 2.39; then PGBR_EXTRA+=$'repo1-bundle=y\n'; PGBR_OPTS+=", bundle"; fi
# Block incremental came in 2.45 as a beta feature (beta=y to allow it) and left beta in 2.46.
if ver_ge "$PGBR_VERSION" 2.46; then PGBR_EXTRA+=$'repo1-block=y\n'; PGBR_OPTS+=", block incremental"
elif ver_ge "$PGBR_VERSION" 2.45; then PGBR_EXTRA+=$'beta=y\nrepo1-block=y\n'; PGBR_OPTS+=", block incremental (beta)"; fi

PGBR=(pgbackrest --config="$W/pgbackrest.conf" --stanza=bench)
PGB=("$W/bin/pgcairn" --config "$W/pgcairn.toml")

echo "== pgBackRest $PGBR_VERSION ($PGBR_OPTS); $("$W/bin/pgcairn" --version); scale $SCALE, $ROUNDS round(s), in $W"
pg_init '' <<CONF
max_wal_size = '4GB'
checkpoint_timeout = '1h'
CONF
ARCHIVE_COMMAND="pgbackrest --config=$W/pgbackrest.conf --stanza=bench archive-push %p && $W/bin/pgcairn --config $W/pgcairn.toml archive-push %p"
if [ "$S3" = 1 ]; then
    mkdir -p "$W/s3"
    eval "$(./scripts/s3-local.sh start "$W/s3")"
    S3_PORT=${PGCAIRN_TEST_S3_ENDPOINT##*:}
    S3_BUCKET=$PGCAIRN_TEST_S3_BUCKET
    TLS_PORT=$(free_port)
    # A throwaway CA and a server certificate it signs (rustls refuses a self-signed
    # certificate that is its own CA).
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$W/ca.key" -out "$W/ca.crt" -days 2 \
        -subj /CN=pgcairn-bench-ca -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign >/dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -keyout "$W/tls.key" -out "$W/tls.csr" \
        -subj /CN=127.0.0.1 >/dev/null 2>&1
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
        > "$W/tls.ext"
    openssl x509 -req -in "$W/tls.csr" -CA "$W/ca.crt" -CAkey "$W/ca.key" -CAcreateserial \
        -out "$W/tls.crt" -days 2 -extfile "$W/tls.ext" >/dev/null 2>&1
    chmod 644 "$W/ca.crt"
    cat "$W/tls.key" "$W/tls.crt" > "$W/tls.pem"
    socat "OPENSSL-LISTEN:$TLS_PORT,bind=127.0.0.1,reuseaddr,fork,cert=$W/tls.pem,verify=0" "TCP:127.0.0.1:$S3_PORT" \
        2>"$W/socat.log" &
    SOCAT_PID=$!
    if [ "${S3_PLAIN:-0}" = 1 ]; then
        echo "   S3: moto at $PGCAIRN_TEST_S3_ENDPOINT (bucket $S3_BUCKET); TLS terminator for pgBackRest on port $TLS_PORT, pgcairn plain HTTP"
    else
        echo "   S3: moto at $PGCAIRN_TEST_S3_ENDPOINT (bucket $S3_BUCKET) behind a TLS terminator on port $TLS_PORT, for both tools"
    fi
fi
# Repository settings of round $1 (S3: a fresh prefix per round).
write_configs() {
    local repo
    if [ "$S3" = 1 ]; then
        repo="repo1-type=s3
repo1-path=/pgbr-r$1
repo1-s3-bucket=$S3_BUCKET
repo1-s3-endpoint=127.0.0.1
repo1-s3-region=us-east-1
repo1-s3-key=test
repo1-s3-key-secret=test
repo1-s3-uri-style=path
repo1-storage-port=$TLS_PORT
repo1-storage-verify-tls=n"
    else
        repo="repo1-path=$W/pgbr-repo"
    fi
    pgbr_conf "$repo" "${PGBR_EXTRA%$'\n'}"
    if [ "$S3" = 1 ]; then
        if [ "${S3_PLAIN:-0}" = 1 ]; then
            repo="endpoint = \"$PGCAIRN_TEST_S3_ENDPOINT\"
allow_http = true"
        else
            repo="endpoint = \"https://127.0.0.1:$TLS_PORT\"
ca_file = \"$W/ca.crt\""
        fi
        repo="url = \"s3://$S3_BUCKET/pgb-r$1\"
$repo
region = \"us-east-1\"
access_key_id = \"test\"
secret_access_key = \"test\""
    else
        repo="url = \"file://$W/pgb-repo\""
    fi
    cat > "$W/pgcairn.toml" <<CONF
[repo]
$repo
key_file = "$W/pgb.key"
[cluster]
name = "main"
pgdata = "$W/pg"
conninfo = "host=$W port=$PORT user=postgres dbname=postgres"
[archive]
spool_dir = "$W/pgb-spool"
CONF
    [ "$(id -u)" = 0 ] && chown postgres: "$W/pgbackrest.conf" "$W/pgcairn.toml"
    chmod 600 "$W/pgbackrest.conf" "$W/pgcairn.toml"
}
write_configs 1

pg_start
t0=$SECONDS
pgbench_init "$SCALE"
psql_pg "create table marker(t timestamptz)" >/dev/null
DB_BYTES=$(psql_pg "select pg_database_size('postgres')")
echo "   pgbench -i -s $SCALE: $((SECONDS - t0)) s, database $((DB_BYTES / 1048576)) MiB"

# Fresh, empty repositories for both tools. Archiving is paused (an empty archive_command:
# PostgreSQL keeps the WAL and pushes it once the command is back) while they are recreated.
fresh_repos() { # $1 = round
    psql_pg "alter system set archive_command = ''" >/dev/null
    psql_pg "select pg_reload_conf()" >/dev/null
    sleep 1   # let a push that was already running finish
    as_pg rm -rf "$W/pgbr-repo" "$W/pgbr-lock" "$W/pgbr-spool" "$W/pgb-repo" "$W/pgb.key" "$W/pgb-spool"
    write_configs "$1"
    as_pg "${PGBR[@]}" stanza-create >/dev/null
    as_pg "${PGB[@]}" init --key-file "$W/pgb.key" >/dev/null
    psql_pg "alter system set archive_command = '${ARCHIVE_COMMAND//\'/\'\'}'" >/dev/null
    psql_pg "select pg_reload_conf()" >/dev/null
}

# Switches WAL and waits until the archiver has pushed the switched segment (to both tools:
# the archive_command succeeds only when both have it); then checks each tool can get it.
archive_now() {
    local seg last i=0
    seg=$(psql_pg "select pg_walfile_name(pg_switch_wal())")
    while :; do
        last=$(psql_pg "select coalesce(last_archived_wal, '') from pg_stat_archiver")
        [[ "$last" =~ ^[0-9A-F]{24}$ && ! "$last" < "$seg" ]] && break
        i=$((i + 1))
        [ "$i" -lt 36000 ] || { echo "!! $seg not archived after an hour" >&2; tail -20 "$W/pg.log" >&2; exit 1; }
        sleep 0.1
    done
    as_pg "${PGBR[@]}" archive-get "$seg" "$W/check-pgbr-$seg" >/dev/null
    as_pg "${PGB[@]}" archive-get "$seg" "$W/check-pgb-$seg" >/dev/null
    cmp -s "$W/check-pgbr-$seg" "$W/check-pgb-$seg" || { echo "!! the archives' copies of $seg differ" >&2; exit 1; }
    as_pg rm -f "$W/check-pgbr-$seg" "$W/check-pgb-$seg"
}

churn() { psql_pg "update pgbench_accounts set abalance = abalance + 1 where aid <= $((SCALE * 1000))" >/dev/null; }

# Bytes stored under repository paths ("dir/"): du locally, the bucket listing on S3.
repo_bytes() { # $1 = pgbr|pgb, then paths inside that tool's repository
    local tool=$1 d dirs=(); shift
    if [ "$S3" = 1 ]; then
        local prefix=pgb-r$round/; [ "$tool" = pgbr ] && prefix=pgbr-r$round/
        /var/cache/pgcairn-test/venv/bin/python - "$PGCAIRN_TEST_S3_ENDPOINT" "$S3_BUCKET" "$prefix" "$@" <<'PY'
import sys, boto3
ep, bucket, prefix, paths = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
s3 = boto3.client("s3", endpoint_url=ep, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
total = 0
for p in paths:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + p):
        total += sum(o["Size"] for o in page.get("Contents", []))
print(total)
PY
        return
    fi
    local base="$W/pgb-repo"; [ "$tool" = pgbr ] && base="$W/pgbr-repo"
    for d in "$@"; do [ -e "$base/$d" ] && dirs+=("$base/$d"); done
    if [ "${#dirs[@]}" = 0 ]; then echo 0; else du -scb --apparent-size "${dirs[@]}" | tail -1 | cut -f1; fi
}
# pgcairn's repository bytes outside the WAL: packs, index and backup manifests.
pgb_repo_bytes() { repo_bytes pgb packs/ index/ clusters/main/backups/; }

backup() { # $1 = tool, $2 = full|incr; sets T_WALL, T_RSS; for incr also INCR_BYTES[$1]
    local before label
    if [ "$1" = pgbackrest ]; then
        timed "r$round-$1-$2" "${PGBR[@]}" --type="$2" backup
        if [ "$2" = incr ]; then
            label=$(as_pg "${PGBR[@]}" --output=json info | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["backup"][-1]["label"])')
            INCR_BYTES[$1]=$(repo_bytes pgbr "backup/bench/$label/")
        fi
    else
        before=$(pgb_repo_bytes)
        timed "r$round-$1-$2" "${PGB[@]}" --progress never backup --type "$2" --output json
        if [ "$2" = incr ]; then
            INCR_BYTES[$1]=$(( $(pgb_repo_bytes) - before ))
            PGB_STORED_NEW=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["stats"]["stored_new"])' "$W/r$round-$1-$2.log")
        fi
    fi
}

# Restores with $1 (tool) to $2 (imm: the newest backup's consistency point; pitr: time T)
# into a fresh directory, starts it on its own port with archive_mode=off and waits for the
# promotion. Sets T_WALL/T_RSS (the restore command), T_REC (restore + start + replay +
# promotion, s), T_STARTUP and T_REPLAY (s) and FP (the restored cluster's fingerprint).
recover() {
    local tool=$1 kind=$2 dir="$W/restored-$1-$2" port t0 t1 ts tr i=0 rc try
    port=$(free_port)
    as_pg rm -rf "$dir" "$dir.log"
    as_pg mkdir -m 700 "$dir"
    local cmd
    if [ "$tool" = pgbackrest ]; then
        cmd=("${PGBR[@]}" --pg1-path="$dir" --target-action=promote)
        if [ "$kind" = imm ]; then cmd+=(--type=immediate); else cmd+=(--type=time "--target=$T"); fi
        cmd+=(restore)
    else
        cmd=("${PGB[@]}" --progress never restore --pgdata "$dir" --target-action promote)
        if [ "$kind" = imm ]; then cmd+=(--target immediate); else cmd+=(--target-time "$T"); fi
    fi
    # Each recovery fetches its own WAL: none finds segments the previous one prefetched
    # (pgcairn's prefetch spool, pgBackRest's asynchronous archive-get queue). A prefetcher
    # still running exits when its directory goes; one writing a segment while rm walks the
    # directory makes rm fail, so it is tried again.
    for try in 1 2 3 4 5 6 7 8 9; do
        as_pg rm -rf "$W/pgb-spool/main/prefetch" "$W/pgbr-spool/archive" 2>/dev/null && break
        sleep 0.5
    done
    as_pg rm -rf "$W/pgb-spool/main/prefetch" "$W/pgbr-spool/archive"
    sync
    t0=$(now_ns)
    timed "r$round-$tool-$kind-restore" "${cmd[@]}"
    # Bytes the restore put on disk (allocated, holes not counted), for the disk floor.
    if [ "$kind" = imm ]; then RESTORED_BYTES[$tool]=$(du -s -B1 "$dir" | cut -f1); fi
    if [ "$tool" = pgcairn-fsync ]; then
        # As before restores wrote the first-start block: the first start fsyncs every file.
        as_pg sed -i '/^# pgcairn first-start settings (begin)/,/^# pgcairn first-start settings (end)/d' "$dir/postgresql.auto.conf"
    elif [ "$tool" = pgcairn ] && [ "$FIRST_START_AB" = 1 ]; then
        grep -q '^recovery_init_sync_method' "$dir/postgresql.auto.conf" \
            || { echo "!! pgcairn restore wrote no first-start block" >&2; exit 1; }
    fi
    ts=$(now_ns)
    RUNNING+=("$dir")
    if ! as_pg "$PGBIN/pg_ctl" -D "$dir" -l "$dir.log" -t 3600 -w \
        -o "-c port=$port -c archive_mode=off -c unix_socket_directories=$W -c log_timezone=UTC" start >/dev/null; then
        echo "!! the cluster restored by $tool ($kind) did not start" >&2; tail -30 "$dir.log" >&2; exit 1
    fi
    tr=$(now_ns)
    while [ "$(psql_at "$port" "select pg_is_in_recovery()" 2>/dev/null || echo t)" != f ]; do
        i=$((i + 1))
        [ "$i" -lt 36000 ] || { echo "!! the cluster restored by $tool ($kind) is still in recovery" >&2; tail -30 "$dir.log" >&2; exit 1; }
        as_pg "$PGBIN/pg_ctl" -D "$dir" status >/dev/null || { echo "!! the cluster restored by $tool ($kind) stopped" >&2; tail -30 "$dir.log" >&2; exit 1; }
        sleep 0.05
    done
    t1=$(now_ns)
    T_POLLED=$(python3 -c "print(($t1 - $t0) / 1e9)")
    # The server's own moments: consistent (read-only connections) and promoted (connections).
    local t_ro t_rw
    t_ro=$(log_moment "$dir.log" "database system is ready to accept read-only connections")
    t_rw=$(log_moment "$dir.log" "database system is ready to accept connections")
    # A session sees pg_is_in_recovery() false once the startup process has ended recovery,
    # a few milliseconds before the postmaster logs "ready to accept connections" (it does
    # so when the startup process has exited), so the logged moment may follow the poll's.
    [ -n "$t_ro" ] && [ -n "$t_rw" ] && [ "$t_rw" -le "$((t1 + 1000000000))" ] \
        || { echo "!! no ready lines in the log of the cluster restored by $tool ($kind)" >&2; tail -30 "$dir.log" >&2; exit 1; }
    T_REC=$(python3 -c "print(($t_rw - $t0) / 1e9)")
    T_STARTUP=$(python3 -c "print(($t_ro - $ts) / 1e9)")
    T_REPLAY=$(python3 -c "print(($t_rw - $t_ro) / 1e9)")
    # The end of recovery: from the target's "recovery stopping" to "ready to accept
    # connections" (the end-of-recovery checkpoint or record, and the promotion).
    local t_stop
    t_stop=$(log_moment "$dir.log" "" "recovery stopping")
    T_PROMOTE=$(python3 -c "print(($t_rw - ${t_stop:-$t_rw}) / 1e9)")
    END_CKPT=$(grep -o 'checkpoint complete:.*' "$dir.log" | head -1 | grep -o 'write=[0-9.]* s, sync=[0-9.]* s, total=[0-9.]* s' || true)
    FP=$(psql_at "$port" "$FP_SQL")
    # The restored cluster recovered through its own tool and does not archive.
    local rcmd am
    rcmd=$(psql_at "$port" "show restore_command")
    am=$(psql_at "$port" "show archive_mode")
    if [ "$tool" = pgbackrest ]; then [[ "$rcmd" == pgbackrest* && "$rcmd" != *"$W/bin/pgcairn"* ]]; else [[ "$rcmd" == *"$W/bin/pgcairn"* && "$rcmd" != *pgbackrest* ]]; fi \
        || { echo "!! restore_command of the cluster restored by $tool: $rcmd" >&2; exit 1; }
    [ "$am" = off ] || { echo "!! archive_mode of the cluster restored by $tool is $am" >&2; exit 1; }
    rc=0
    grep -q "recovery stopping\|recovery stopped\|redo done" "$dir.log" || rc=1
    as_pg "$PGBIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null
    [ "$rc" = 0 ] || { echo "!! no end of recovery in the log of the cluster restored by $tool ($kind)" >&2; exit 1; }
    as_pg rm -rf "$dir"
}

# The moment (ns since the epoch) of the last line of server log $1 that ends with $2 (and
# contains $3 if given), from its log_line_prefix's %m (PostgreSQL's default prefix; the server
# runs with log_timezone=UTC).
log_moment() {
    python3 - "$1" "$2" "${3:-}" <<'PY'
import sys, datetime
stamp = None
for line in open(sys.argv[1], errors="replace"):
    if line.rstrip("\n").endswith(sys.argv[2]) and sys.argv[3] in line:
        stamp = line[:23]
if stamp:
    t = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc)
    print(int(t.timestamp() * 1000) * 1000000)
PY
}

declare -A BEST INCR_BYTES RESTORED_BYTES
# The disk's floor for a restore on this machine, now: dd writing as many bytes as pgcairn's
# restore put on disk into the same file system, made durable (conv=fsync), once through the
# page cache and once with O_DIRECT; the faster of the two in FLOOR (s). No restore of these
# bytes can finish sooner, so it bounds both tools' restores, and through them the time to
# recover, in the same round and under the same load.
disk_floor() {
    local f="$W/disk-floor" mib=$(( (RESTORED_BYTES[pgcairn] + 1048575) / 1048576 )) t0 a b
    rm -f "$f"; sync
    t0=$(now_ns); dd if=/dev/zero of="$f" bs=1M count="$mib" conv=fsync status=none; a=$(secs "$t0" "$(now_ns)")
    rm -f "$f"; sync
    t0=$(now_ns); dd if=/dev/zero of="$f" bs=1M count="$mib" oflag=direct conv=fsync status=none; b=$(secs "$t0" "$(now_ns)")
    rm -f "$f"; sync
    FLOOR=$(min "$a" "$b")
    echo "   disk floor: $mib MiB written and synced by dd in $a s (page cache), $b s (O_DIRECT)"
}
FAILED=0
check_fp() { # $1 = what, $2 = expected, $3 = got
    if [ "$2" = "$3" ]; then echo "   $1: fingerprint $3 (as expected)"; else
        echo "!! $1: fingerprint $3, expected $2" >&2; FAILED=1; fi
}
keep() { # $1 = key, $2 = value, $3 = min|max
    BEST[$1]=$($3 "${BEST[$1]:-}" "$2")
}

for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then ORDER=(pgbackrest pgcairn); else ORDER=(pgcairn pgbackrest); fi
    echo "== round $round (${ORDER[0]} first)"
    fresh_repos "$round"
    archive_now
    for tool in "${ORDER[@]}"; do
        backup "$tool" full; keep "$tool-full" "$T_WALL" min
        echo "   $tool full backup: $T_WALL s"
    done
    churn
    for tool in "${ORDER[@]}"; do
        backup "$tool" incr; keep "$tool-incr" "$T_WALL" min
        echo "   $tool incremental: $T_WALL s, $((INCR_BYTES[$tool] / 1024)) KiB stored"
    done
    F1=$(psql_pg "$FP_SQL")
    psql_pg "insert into marker values (now())" >/dev/null
    F2=$(psql_pg "$FP_SQL")
    T=$(psql_pg "select clock_timestamp()")
    sleep 0.5
    churn
    F3=$(psql_pg "$FP_SQL")
    archive_now
    echo "   F1 (after the incrementals) $F1; F2 (at T = $T) $F2; now $F3"
    [ "$F1" != "$F2" ] && [ "$F2" != "$F3" ] || { echo "!! the fingerprints do not tell the points apart" >&2; exit 1; }

    declare -A FP_IMM=()
    for tool in "${ORDER[@]}"; do
        recover "$tool" imm
        keep "$tool-restore" "$T_WALL" min; keep "$tool-rss" "$T_RSS" max
        FP_IMM[$tool]=$FP
        echo "   $tool restore of its newest backup: $T_WALL s, peak RSS $((T_RSS / 1024)) MiB"
        check_fp "$tool restore to the backup's end" "$F1" "$FP"
    done
    if [ "${FP_IMM[pgbackrest]}" != "${FP_IMM[pgcairn]}" ]; then
        echo "!! the two tools' backups restore different data: pgBackRest ${FP_IMM[pgbackrest]}, pgcairn ${FP_IMM[pgcairn]}" >&2
        FAILED=1
    fi
    disk_floor; keep floor "$FLOOR" min
    PITR_TOOLS=("${ORDER[@]}")
    # A/B of the first-start block: pgcairn's recovery once more without it, next to the other two.
    # (last in odd rounds, first in even ones).
    if [ "$FIRST_START_AB" = 1 ]; then
        if [ $((round % 2)) = 1 ]; then PITR_TOOLS+=(pgcairn-fsync); else PITR_TOOLS=(pgcairn-fsync "${PITR_TOOLS[@]}"); fi
    fi
    for tool in "${PITR_TOOLS[@]}"; do
        recover "$tool" pitr
        keep "$tool-pitr" "$T_REC" min; keep "$tool-polled" "$T_POLLED" min
        WAL_REPLAY=$(python3 -c "print($T_STARTUP + $T_REPLAY)")
        keep "$tool-walreplay" "$WAL_REPLAY" min
        printf '   %s time to recover to T: %.2f s (restore %s s, start %.2f s, replay %.2f s: WAL replay %.0f %%; polled %.2f s)\n' \
            "$tool" "$T_REC" "$T_WALL" "$T_STARTUP" "$T_REPLAY" "$(python3 -c "print(100 * $WAL_REPLAY / $T_REC)")" "$T_POLLED"
        printf '   %s end of recovery (target reached to ready): %.2f s; end-of-recovery checkpoint: %s\n' \
            "$tool" "$T_PROMOTE" "${END_CKPT:-none}"
        check_fp "$tool recovery to T" "$F2" "$FP"
        if [ "$tool" = pgcairn ]; then
            # Did replay wait for WAL? archive-get's counters of this recovery (the spool was
            # emptied before it): a call served from the prefetch spool kept replay going.
            python3 - "$W/pgb-spool/main/prefetch" <<'PY'
import glob, json, sys
t = {}
for f in glob.glob(sys.argv[1] + "/*/get-stats.json"):
    for k, v in json.load(open(f)).items():
        t[k] = t.get(k, 0) + v
print(f"   pgcairn archive-get during that recovery: {t.get('calls', 0)} calls, {t.get('from_spool', 0)} from the prefetch spool, "
      f"{t.get('waited', 0)} waited for the prefetcher, {t.get('direct', 0)} fetched directly; replay waited for WAL "
      f"{t.get('wait_seconds', 0):.3f} s in all")
PY
        fi
    done
done

REPO_KIND=local; [ "$S3" = 1 ] && REPO_KIND="S3 (moto behind one TLS terminator for both)"; [ "$S3" = 1 ] && [ "${S3_PLAIN:-0}" = 1 ] && REPO_KIND="S3 (moto; pgBackRest through a TLS terminator, pgcairn plain HTTP)"
python3 - "$SCALE" "$DB_BYTES" "$ROUNDS" "$PGBR_VERSION" "$PGBR_OPTS" "$REPO_KIND" "$PGB_STORED_NEW" \
    "${BEST[pgcairn-full]}" "${BEST[pgbackrest-full]}" "${BEST[pgcairn-incr]}" "${BEST[pgbackrest-incr]}" \
    "${INCR_BYTES[pgcairn]}" "${INCR_BYTES[pgbackrest]}" "${BEST[pgcairn-restore]}" "${BEST[pgbackrest-restore]}" \
    "${BEST[pgcairn-rss]}" "${BEST[pgbackrest-rss]}" "${BEST[pgcairn-pitr]}" "${BEST[pgbackrest-pitr]}" \
    "${BEST[pgcairn-walreplay]}" "${BEST[pgbackrest-walreplay]}" "${BEST[floor]}" \
    "${BEST[pgcairn-polled]}" "${BEST[pgbackrest-polled]}" <<'PY'
import sys
scale, db, rounds, ver, opts, kind, stored_new = sys.argv[1:8]
v = [float(x) for x in sys.argv[8:]]
pf, bf, pi, bi, pb, bb, pr, br, prss, brss, pp, bp, pw, bw, floor, ppoll, bpoll = v
MiB = 2**20
print()
print(f"pgbench scale {scale} ({int(db)/MiB:.0f} MiB), best of {rounds} round(s), {kind} repositories; pgBackRest {ver} ({opts}), pgcairn defaults")
print(f"{'':32}{'pgcairn':>10}{'pgBackRest':>12}{'ratio':>9}")
def row(name, a, b, fmt, note=""):
    print(f"{name:32}{a:>10{fmt}}{b:>12{fmt}}{b/a if a else float('inf'):>8.2f}x{note}")
row("full backup s", pf, bf, ".2f", "  (pgBackRest / pgcairn: >1 means pgcairn faster)")
row("incremental backup s (1 % churn)", pi, bi, ".2f")
print(f"{'incremental stored MiB':32}{pb/MiB:>10.2f}{bb/MiB:>12.2f}{pb/bb if bb else float('inf'):>8.2f}x"
      f"  (pgcairn / pgBackRest: <1 means pgcairn smaller; pgcairn stored_new {int(stored_new)/MiB:.2f} MiB)")
row("restore s (backup's end)", pr, br, ".2f")
print(f"{'restore peak RSS MiB':32}{prss/1024:>10.1f}{brss/1024:>12.1f}")
row("time to recover to T s", pp, bp, ".2f", "  (restore + start + replay + promotion, to the server log's 'ready')")
row("  as polled s", ppoll, bpoll, ".2f", "  (pg_ctl start -w, then psql every 50 ms)")
row("  of which WAL replay s", pw, bw, ".2f", "  (start + replay; best of the rounds)")
print(f"{'  WAL replay share':32}{100*pw/pp:>9.0f}%{100*bw/bp:>11.0f}%")
print(f"{'disk floor s (dd, same bytes)':32}{floor:>10.2f}{'':12}"
      f"  restore at {pr/floor:.2f}x the floor (pgBackRest {br/floor:.2f}x); best possible restore ratio {br/floor:.2f}x")
print(f"{'':32}{'':22}  time to recover with the restore at the floor: {floor+pw:.2f} s, {(floor+pw)/bp:.2f} of pgBackRest's")
PY
if [ "$FIRST_START_AB" = 1 ]; then
    python3 - "${BEST[pgcairn-pitr]}" "${BEST[pgcairn-fsync-pitr]}" "${BEST[pgbackrest-pitr]}" <<'PY'
import sys
a, b, p = (float(x) for x in sys.argv[1:])
print(f"time to recover to T, first-start A/B (best of the rounds): with the block {a:.2f} s ({a/p:.2f} of pgBackRest's {p:.2f} s), "
      f"without it (first start fsyncs every file) {b:.2f} s ({b/p:.2f} of pgBackRest's)")
PY
fi
if [ "$FAILED" != 0 ]; then echo "!! a fingerprint differed (see above)" >&2; exit 1; fi
echo "all fingerprints matched"
