#!/usr/bin/env bash
# Two pgcairn builds side by side on one cluster: backups, an incremental after uniform updates,
# and restores, in alternating order.
#
#   benches/ab_builds.sh OLD_BINARY NEW_BINARY [SCALE]   (pgbench scale, default 100; root or postgres)
#
# One PostgreSQL 15 cluster (data checksums) archives every WAL file to two file:// repositories,
# one per build (so a build never reads what the other wrote: their formats may differ). Then:
#   - three rounds of a full backup by each build, alternating: the first pair stores everything,
#     the next ones only read and hash (the data is already stored);
#   - pgbench -c 2 -j 2 -t TX (default 2000: random rows across the table), then an incremental
#     by each build: its time and the bytes its packs added;
#   - three rounds of a restore of each build's newest backup into an empty directory after a
#     `sync`, alternating, the new build first in odd rounds.
# Times are wall seconds of the command, with its CPU seconds (user + system). Use it to see what a change buys or costs (build the old
# tree with `git worktree add` and its own CARGO_TARGET_DIR); the machine's noise is as large as
# many effects, so look at every pair, not one.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?old binary}; NEW=${2:?new binary}; SCALE=${3:-100}; TX=${TX:-2000}
PGCAIRN_BIN=$NEW
source benches/lib.sh
bench_init ab
cp "$OLD" "$W/bin/old"; cp "$NEW" "$W/bin/new"; chmod 755 "$W/bin/old" "$W/bin/new"
[ "$(id -u)" = 0 ] && chown -R postgres: "$W"
for v in old new; do
    cat > "$W/$v.toml" <<CONF
[repo]
url = "file://$W/repo-$v"
key_file = "$W/key-$v"
[cluster]
name = "main"
pgdata = "$W/pg"
conninfo = "host=$W port=$PORT user=postgres dbname=postgres"
[archive]
spool_dir = "$W/spool-$v"
CONF
    [ "$(id -u)" = 0 ] && chown postgres: "$W/$v.toml"
    chmod 600 "$W/$v.toml"
    as_pg "$W/bin/$v" --config "$W/$v.toml" init >/dev/null
done
pg_init "$W/bin/old --config $W/old.toml archive-push %p && $W/bin/new --config $W/new.toml archive-push %p" </dev/null
pg_start
pgbench_init "$SCALE"
echo "== $("$W/bin/old" --version) against $("$W/bin/new" --version), pgbench scale $SCALE, in $W"
# Runs build $1 (old or new) with the rest as arguments; prints its wall seconds and its CPU
# seconds (user + system) in parentheses.
timed() {
    local v=$1 as=()
    shift
    [ "$(id -u)" = 0 ] && as=(runuser -u postgres --)
    /usr/bin/time -f '%e %U %S' -o "$W/time" "${as[@]}" "$W/bin/$v" --config "$W/$v.toml" \
        --progress never "$@" >/dev/null
    read -r wall user sys < <(tail -n 1 "$W/time")
    echo "$wall s ($(echo "$user + $sys" | bc) s CPU)"
}
for round in 1 2 3; do
    for v in old new; do
        sync
        echo "   full backup $v (round $round): $(timed "$v" backup --type full)"
    done
done
as_pg "$PGBIN/pgbench" -h "$W" -p "$PORT" -U postgres -c 2 -j 2 -t "$TX" postgres >/dev/null 2>&1
for v in old new; do
    before=$(du -sb "$W/repo-$v/packs" | cut -f1)
    t=$(timed "$v" backup --type incr)
    echo "   incremental $v: $t, packs +$(($(du -sb "$W/repo-$v/packs" | cut -f1) - before)) B"
done
for round in 1 2 3; do
    order="old new"; [ $((round % 2)) = 1 ] && order="new old"
    for v in $order; do
        rm -rf "$W/r"; sync
        echo "   restore $v (round $round): $(timed "$v" restore --pgdata "$W/r")"
    done
done
