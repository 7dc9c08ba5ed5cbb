#!/usr/bin/env bash
# Time and peak memory of gc (and info, which does gc's mark) on repositories of many backups.
#
#   benches/gc_scale.sh [SCALE...]      (default: 20 100; run as root or postgres)
#
# For each pgbench SCALE, on a fresh throwaway PostgreSQL 15 cluster (data checksums, WAL
# archived by pgcairn archive-push into a fresh local encrypted repository):
# 1. pgbench -i -s SCALE;
# 2. BACKUPS rounds (default 8) of: `pgbench -c 2 -N -t SCALE*TX_PER_SCALE` (simple updates
#    spread over all of pgbench_accounts: most 64 KiB blocks change every round), then
#    `pgcairn backup`: full for rounds 1, 5, 9, ..., incr otherwise;
# 3. PostgreSQL stopped; `[retention] full = 1` added to the config and `pgcairn expire`: the
#    backups before the newest full one go, so most of the oldest packs are garbage and the
#    ones the newest full deduplicated against are partly live (repack candidates);
# 4. `pgcairn info --output json` (its space summary does gc's mark), then
#    `pgcairn gc --grace 0s --output json` (mark, repack, condemn, sweep), then the same gc
#    again (a no-op: its cost is the mark; if it still had work to do, e.g. a sweep the first
#    run left, a third gc is the no-op), then info again, then `pgcairn verify --read-data`
#    (every retained block still indexed, readable and intact after gc).
# Each pgcairn command of step 4 runs under /usr/bin/time: wall seconds and peak RSS (%M).
# The peak RSS growth of the no-op gc between the first and last scale, divided by the growth
# in index entries (and in distinct referenced blocks), is the per-block memory cost of the
# mark (index entries grouped by pack, the referenced-block map). The first gc's peak includes
# the repack's buffers (a source pack and the pack being filled, ~32 MiB each).
#
# Scale 100 is about 1.5 GB of tables; with the defaults its repository reaches about 1 GB
# (630 MiB of packs, half of it garbage after expire). Each scale's directory is removed before
# the next. Timings are noisy on a shared machine; peak RSS much less so. With the defaults the
# whole run takes 3 to 5 minutes on 2 cores, mostly pgbench and the backups.
#
# Environment: PGCAIRN_BIN (default target/release/pgcairn, snapshotted once so every scale
# runs the same binary), BACKUPS (default 8), TX_PER_SCALE (pgbench transactions per client per
# round, times the scale; default 200), CMD_TIMEOUT (seconds per pgcairn command, default
# 1800: a hang is reported as a failure of that scale, and the remaining scales still run),
# GC_MEMORY (MiB for gc's mark, `gc --index-memory`; default gc's own: 0 puts the mark's index
# entries and referenced blocks on local disk, to measure that mode's time and memory).
set -euo pipefail
cd "$(dirname "$0")/.."
SCALES=("$@")
[ "${#SCALES[@]}" -gt 0 ] || SCALES=(20 100)
PGBIN=${PG_BINDIR:-/usr/lib/postgresql/15/bin}

CMD_TIMEOUT=${CMD_TIMEOUT:-1800}
BACKUPS=${BACKUPS:-8}
TX_PER_SCALE=${TX_PER_SCALE:-200}
BIN=${PGCAIRN_BIN:-target/release/pgcairn}
[ -x "$BIN" ] || [ -n "${PGCAIRN_BIN:-}" ] || cargo build --release --locked -p pgcairn

W=
RESULTS=$(mktemp /tmp/pgcairn-bench-results.XXXXXX)
SNAPSHOT=$(mktemp /tmp/pgcairn-bench-bin.XXXXXX)
cp "$BIN" "$SNAPSHOT"
chmod 755 "$SNAPSHOT"
echo "== $("$SNAPSHOT" --version), binary $BIN (md5 $(md5sum < "$SNAPSHOT" | cut -c1-12)); $BACKUPS backups per scale, pgbench -t SCALE*$TX_PER_SCALE per client"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
stop_scale() {
    [ -n "$W" ] || return 0
    as_pg "$PGBIN/pg_ctl" -D "$W/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$W"
    W=
}
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() { stop_scale; rm -f "$RESULTS" "$SNAPSHOT"; }
trap cleanup EXIT

# Runs "$@" as postgres under /usr/bin/time (and timeout); stdout to $W/$label.out, stderr to
# $W/$label.err; sets T_WALL (s), T_RSS (KiB). On failure prints why and returns 1.
timed() {
    local label=$1; shift
    local rc=0
    as_pg /usr/bin/time -f '%e %M' -o "$W/$label.time" timeout -k 30 "$CMD_TIMEOUT" "$@" \
        >"$W/$label.out" 2>"$W/$label.err" || rc=$?
    if [ "$rc" != 0 ]; then
        if [ "$rc" = 124 ]; then
            echo "!! $label: no exit after ${CMD_TIMEOUT} s (hung?), killed: $*" >&2
        else
            echo "!! $label failed (exit $rc): $*" >&2
        fi
        cat "$W/$label.out" "$W/$label.err" | sed 's/^/   | /' >&2
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
    # synchronous_commit = off only speeds up pgbench; what changes between backups is the same.
    cat >> "$W/pg/postgresql.conf" <<CONF
listen_addresses = ''
port = $port
unix_socket_directories = '$W'
wal_level = replica
archive_mode = on
archive_command = '''$W/bin/pgcairn'' --config ''$W/pgcairn.toml'' archive-push %p'
max_wal_size = '4GB'
checkpoint_timeout = '30min'
synchronous_commit = off
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
    pgbench_pg() { as_pg "$PGBIN/pgbench" -h "$W" -p "$port" -U postgres "$@" postgres; }
    fail() { echo "{\"scale\": $scale, \"fail\": \"$1\"}" >> "$RESULTS"; FAILED=1; stop_scale; }

    local t0=$SECONDS
    pgbench_pg -i -s "$scale" -q >"$W/pgbench-init.log" 2>&1 \
        || { cat "$W/pgbench-init.log" >&2; exit 1; }
    local db_init
    db_init=$(psql_pg "select pg_database_size('postgres')")
    echo "   pgbench -i -s $scale: $((SECONDS - t0)) s; database $(( db_init / 1048576 )) MiB ($(( db_init / 65536 )) blocks of 64 KiB)"

    local tx=$(( scale * TX_PER_SCALE )) i type round_s load_s=0 backup_s=0 backup_list=""
    for ((i = 0; i < BACKUPS; i++)); do
        t0=$SECONDS
        pgbench_pg -c 2 -N -t "$tx" >"$W/pgbench-run.log" 2>&1 \
            || { cat "$W/pgbench-run.log" >&2; exit 1; }
        round_s=$(( SECONDS - t0 ))
        load_s=$(( load_s + round_s ))
        if (( i % 4 == 0 )); then type=full; else type=incr; fi
        timed "backup$i" "${pgb[@]}" --progress never backup --type "$type" || { fail "backup $((i + 1)) ($type)"; return 0; }
        backup_s=$(python3 -c "print(round($backup_s + $T_WALL, 1))")
        backup_list+="${type:0:1}"
        echo "   round $((i + 1))/$BACKUPS: pgbench -N -c 2 -t $tx ${round_s} s ($(grep -o 'tps = [0-9]*' "$W/pgbench-run.log" | head -1)), backup --type $type ${T_WALL} s, peak RSS $(( T_RSS / 1024 )) MiB"
    done
    local db_bytes repo_before
    db_bytes=$(psql_pg "select pg_database_size('postgres')")
    repo_before=$(du -sb "$W/repo" | cut -f1)
    # Only the repository matters from here on; stopping PostgreSQL frees memory and makes sure
    # no archive-push runs alongside gc.
    as_pg "$PGBIN/pg_ctl" -D "$W/pg" -m fast -w stop >/dev/null
    echo "   $BACKUPS backups ($backup_list): pgbench ${load_s} s, backups ${backup_s} s; database now $(( db_bytes / 1048576 )) MiB, repository $(( repo_before / 1048576 )) MiB"

    printf '[retention]\nfull = 1\n' >> "$W/pgcairn.toml"
    timed expire "${pgb[@]}" expire || { fail expire; return 0; }
    local expire_wall=$T_WALL expired
    expired=$(grep -c '^EXPIRED ' "$W/expire.out" || true)
    echo "   expire: ${expire_wall} s, $expired backups expired; $(grep -c '^REMOVED WAL' "$W/expire.out" || true) WAL ranges removed"

    local label
    for label in info1 gc1 gc2 gc3 info2 verify; do
        # A third gc only if the second one still changed something.
        if [ "$label" = gc3 ] && python3 -c 'import json, sys; j = json.load(open(sys.argv[1]))
sys.exit(1 if j["repacked"] or j["condemned"] or j["swept"] or j["reprieved"] else 0)' "$W/gc2.out"; then
            continue
        fi
        case $label in
            info*) timed "$label" "${pgb[@]}" info --output json || { fail "$label"; return 0; } ;;
            gc*) timed "$label" "${pgb[@]}" gc --grace 0s ${GC_MEMORY:+--index-memory "$GC_MEMORY"} --output json || { fail "$label"; return 0; } ;;
            verify) timed "$label" "${pgb[@]}" --progress never verify --read-data || { fail "verify after gc"; return 0; } ;;
        esac
        echo "$T_WALL $T_RSS" > "$W/$label.measure"
        echo "   $label: ${T_WALL} s, peak RSS $(( T_RSS / 1024 )) MiB"
    done
    local repo_after
    repo_after=$(du -sb "$W/repo" | cut -f1)

    python3 - "$W" "$scale" "$db_init" "$db_bytes" "$repo_before" "$repo_after" "$BACKUPS" \
        "$backup_list" "$backup_s" "$expired" "$expire_wall" >> "$RESULTS" <<'PY'
import json, sys
w, scale, db_init, db, repo_before, repo_after, backups, kinds, backup_s, expired, expire_s = sys.argv[1:]
r = {"scale": int(scale), "db_init": int(db_init), "db": int(db), "repo_before": int(repo_before),
     "repo_after": int(repo_after), "backups": int(backups), "kinds": kinds,
     "backup_s": float(backup_s), "expired": int(expired), "expire_s": float(expire_s)}
for label in ("info1", "gc1", "gc2", "gc3", "info2", "verify"):
    try:
        f = open(f"{w}/{label}.measure")
    except FileNotFoundError:
        continue
    wall, rss = f.read().split()
    r[label] = {"wall": float(wall), "rss": int(rss)}
    if label != "verify":
        r[label]["json"] = json.load(open(f"{w}/{label}.out"))
print(json.dumps(r))
PY
    stop_scale
}

FAILED=0
for s in "${SCALES[@]}"; do run_scale "$s"; done

python3 - "$RESULTS" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = [l for l in lines if "fail" not in l]
MiB = 2**20
def gc_cols(j):
    return (f"{j['manifests']:>6}{j['index_entries']:>9}{j['referenced_blocks']:>9}"
            f"{j['objects_listed']:>8}{j['bytes_read']/MiB:>8.1f}"
            f"{j['packs']:>6}{j['space']['packs']:>6}{len(j['repacked']):>6}{j['repack_copied_bytes']/MiB:>8.1f}"
            f"{len(j['condemned']):>6}{len(j['swept']):>6}{j['reclaimed_bytes']/MiB:>9.1f}{j['pending_bytes']/MiB:>8.1f}"
            f"{j['waiting_for_backups']:>5}")
def noop(r):
    return "gc3" if "gc3" in r else "gc2"
for r in rows:
    print()
    print(f"scale {r['scale']}: database {r['db_init']/MiB:.0f} -> {r['db']/MiB:.0f} MiB "
          f"({r['db']//65536} blocks of 64 KiB); {r['backups']} backups ({r['kinds']}) in {r['backup_s']:.0f} s; "
          f"expire: {r['expired']} expired in {r['expire_s']:.1f} s; "
          f"repository {r['repo_before']/MiB:.0f} MiB before gc, {r['repo_after']/MiB:.0f} MiB after")
    print(f"{'':13}{'wall s':>7}{'RSS MiB':>8}{'manif':>6}{'idx ent':>9}{'ref blk':>9}{'listed':>8}{'rd MiB':>8}"
          f"{'packs':>6}{'after':>6}{'repck':>6}{'cp MiB':>8}{'condm':>6}{'swept':>6}{'recl MiB':>9}{'pend':>8}{'wait':>5}")
    gcs = [("gc1", "gc"), ("gc2", "gc (2nd)"), ("gc3", "gc (3rd)")] if "gc3" in r else [("gc1", "gc"), ("gc2", "gc (no-op)")]
    for label, name in gcs:
        m = r[label]
        print(f"{name:13}{m['wall']:>7.2f}{m['rss']/1024:>8.1f}" + gc_cols(m["json"]))
    for label, name in (("info1", "info before"), ("info2", "info after")):
        m = r[label]
        s = m["json"]["repository"]["space"]
        print(f"{name:13}{m['wall']:>7.2f}{m['rss']/1024:>8.1f}   space: {s['packs']} packs, {s['pack_bytes']/MiB:.1f} MiB, "
              f"{s['referenced_bytes']/MiB:.1f} MiB referenced, {s['reclaimable_bytes']/MiB:.1f} MiB reclaimable")
    m = r["verify"]
    print(f"{'verify --read-data':13} {m['wall']:.2f} s, peak RSS {m['rss']/1024:.1f} MiB (clean)")
    runs = [r[label]["json"] for label, _ in gcs]
    predicted = r["info1"]["json"]["repository"]["space"]["reclaimable_bytes"]
    reclaimed = sum(j["reclaimed_bytes"] for j in runs)
    copied = sum(j["repack_copied_bytes"] for j in runs)
    print(f"info before gc said {predicted/MiB:.1f} MiB reclaimable; the gc runs deleted {reclaimed/MiB:.1f} MiB "
          f"and the repack wrote {copied/MiB:.1f} MiB (net {(reclaimed - copied)/MiB:.1f} MiB)")
    g1, g2 = runs[0], runs[1]
    if g1["condemned"] and not g1["swept"]:
        print(f"note: gc --grace 0s condemned {len(g1['condemned'])} packs but swept none of them in the same run "
              f"({g1['pending_bytes']/MiB:.1f} MiB pending, {g1['waiting_for_backups']} waiting for backups)")
    if "gc3" in r:
        print(f"note: the second gc was not a no-op: {len(g2['repacked'])} repacked, {len(g2['condemned'])} condemned, "
              f"{len(g2['swept'])} swept ({g2['reclaimed_bytes']/MiB:.1f} MiB); the third is the no-op")
for l in lines:
    if "fail" in l:
        print(f"\nscale {l['scale']}: FAILED at: {l['fail']}")
if len(rows) >= 2:
    a, b = rows[0], rows[-1]
    print()
    print(f"peak RSS growth, scale {a['scale']} -> {b['scale']}:")
    # info's space summary reads the same index and manifests as gc's mark: its counts are those
    # of the gc that read the same repository (before gc: the first gc's; after: the no-op's).
    for la, lb, counts, name in (("gc1", "gc1", "gc1", "gc"), (noop(a), noop(b), None, "gc (no-op)"),
                                 ("info1", "info1", "gc1", "info before gc"), ("info2", "info2", None, "info after gc")):
        ja = a[counts or noop(a)]["json"]
        jb = b[counts or noop(b)]["json"]
        d = (b[lb]["rss"] - a[la]["rss"]) * 1024
        de = jb["index_entries"] - ja["index_entries"]
        dr = jb["referenced_blocks"] - ja["referenced_blocks"]
        per_e = f"{d/de:8.1f} bytes per index entry" if de else "(no growth in index entries)"
        per_r = f"{d/dr:8.1f} per referenced block" if dr else "(no growth in referenced blocks)"
        print(f"   {name:15} {d/MiB:+7.1f} MiB over {de:+8} index entries, {dr:+8} referenced blocks: {per_e}, {per_r}")
PY
exit "$FAILED"
