#!/usr/bin/env bash
# What an incremental backup stores: pgcairn against pgBackRest's block incremental, same cluster.
#
#   benches/incremental_size_vs_pgbackrest.sh [SCALE]   (pgbench scale, default 50; root or postgres)
#
# A throwaway PostgreSQL 15 cluster (data checksums) archives every WAL file to both tools
# (pgBackRest: zst-3, process-max=2, repo1-bundle=y and repo1-block=y: block incremental, a beta
# feature in 2.45 and allowed there with beta=y; pgcairn: its defaults, file:// repositories).
# After pgbench -i -s SCALE and a full backup by each, three changes, each followed by an
# incremental backup by each tool:
#   idle        nothing changed (a checkpoint only): the fixed cost of one more backup;
#   contiguous  update of the first SCALE*1000 rows of pgbench_accounts (1 %, contiguous);
#   uniform     pgbench -c 2 -j 2 -t TX (default 2000; random rows across the whole table).
# Stored bytes of each incremental: pgBackRest, its backup directory (bundles, block maps, the
# manifest and its copy); pgcairn, the growth of the repository outside the WAL, split into new
# packs, index segments and the backup's manifest and catalog objects. Ratio pgcairn / pgBackRest:
# below 1 means pgcairn stores less.
#
# Environment: TX; BLOCK_SIZE (pgcairn's [backup] block_size, default its own); PGCAIRN_BIN (default: the release build); PG_BINDIR; KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${1:-50}
TX=${TX:-2000}
[[ "$SCALE" =~ ^[1-9][0-9]*$ && "$TX" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [SCALE]" >&2; exit 2; }
. benches/lib.sh

if [ "$(id -u)" = 0 ]; then ./scripts/install-deps.sh >/dev/null; fi
command -v pgbackrest >/dev/null || { echo "pgbackrest missing: run scripts/install-deps.sh as root" >&2; exit 2; }
bench_init incr

PGBR_VERSION=$(pgbackrest version | awk '{print $2}')
if ver_ge "$PGBR_VERSION" 2.46; then BLOCK=$'repo1-bundle=y\nrepo1-block=y'
elif ver_ge "$PGBR_VERSION" 2.45; then BLOCK=$'beta=y\nrepo1-bundle=y\nrepo1-block=y'
else echo "pgBackRest $PGBR_VERSION has no block incremental (2.45 and later)" >&2; exit 2; fi
PGBR=(pgbackrest --config="$W/pgbackrest.conf" --stanza=bench)
PGB=("$W/bin/pgcairn" --config "$W/pgcairn.toml")
pgbr_conf "repo1-path=$W/pgbr-repo" "$BLOCK"
cat > "$W/pgcairn.toml" <<CONF
[repo]
url = "file://$W/pgb-repo"
key_file = "$W/pgb.key"
[cluster]
name = "main"
pgdata = "$W/pg"
conninfo = "host=$W port=$PORT user=postgres dbname=postgres"
[archive]
spool_dir = "$W/pgb-spool"
CONF
if [ -n "${BLOCK_SIZE:-}" ]; then printf '[backup]\nblock_size = "%s"\n' "$BLOCK_SIZE" >> "$W/pgcairn.toml"; fi
[ "$(id -u)" = 0 ] && chown postgres: "$W/pgbackrest.conf" "$W/pgcairn.toml"
chmod 600 "$W/pgbackrest.conf" "$W/pgcairn.toml"

echo "== pgBackRest $PGBR_VERSION (zst-3, bundle, block incremental); $("$W/bin/pgcairn" --version), block size ${BLOCK_SIZE:-default}; scale $SCALE; in $W"
pg_init "pgbackrest --config=$W/pgbackrest.conf --stanza=bench archive-push %p && $W/bin/pgcairn --config $W/pgcairn.toml archive-push %p" <<CONF
max_wal_size = '4GB'
checkpoint_timeout = '1h'
CONF
as_pg "${PGB[@]}" init --key-file "$W/pgb.key" >/dev/null
pg_start
as_pg "${PGBR[@]}" stanza-create >/dev/null
pgbench_init "$SCALE"
echo "   database $(( $(psql_pg "select pg_database_size('postgres')") / 1048576 )) MiB"

bytes() { # bytes under the given paths (those that exist)
    local d dirs=()
    for d in "$@"; do [ -e "$d" ] && dirs+=("$d"); done
    if [ "${#dirs[@]}" = 0 ]; then echo 0; else du -scb --apparent-size "${dirs[@]}" | tail -1 | cut -f1; fi
}
R="$W/pgb-repo"
pgb_parts() { echo "$(bytes "$R/packs") $(bytes "$R/index") $(bytes "$R/clusters/main/backups")"; }

backup_both() { # $1 = label, $2 = full|incr; sets PGBR_BYTES and PGB_{PACKS,INDEX,MANIFEST}
    local label pb0 pi0 pm0 pb1 pi1 pm1
    timed "$1-pgbr" "${PGBR[@]}" --type="$2" backup
    label=$(as_pg "${PGBR[@]}" --output=json info | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["backup"][-1]["label"])')
    PGBR_BYTES=$(bytes "$W/pgbr-repo/backup/bench/$label")
    read -r pb0 pi0 pm0 < <(pgb_parts)
    timed "$1-pgb" "${PGB[@]}" --progress never backup --type "$2" --output json
    read -r pb1 pi1 pm1 < <(pgb_parts)
    PGB_BLOCKS=$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))["stats"]; print(s["blocks_new"], s["bytes_new"])' "$W/$1-pgb.log")
    PGB_PACKS=$((pb1 - pb0)) PGB_INDEX=$((pi1 - pi0)) PGB_MANIFEST=$((pm1 - pm0))
}

RESULTS=()
measure() { # $1 = label
    backup_both "$1" incr
    RESULTS+=("$1 $PGB_PACKS $PGB_INDEX $PGB_MANIFEST $PGBR_BYTES")
    printf '   %-11s pgcairn %8d B (packs %d, index %d, manifest %d; new blocks and their bytes: %s); pgBackRest %8d B\n' "$1" \
        $((PGB_PACKS + PGB_INDEX + PGB_MANIFEST)) "$PGB_PACKS" "$PGB_INDEX" "$PGB_MANIFEST" "$PGB_BLOCKS" "$PGBR_BYTES"
}

backup_both full full
echo "   full        pgcairn $((PGB_PACKS + PGB_INDEX + PGB_MANIFEST)) B (manifest $PGB_MANIFEST); pgBackRest $PGBR_BYTES B"
psql_pg "checkpoint" >/dev/null
measure idle
psql_pg "update pgbench_accounts set abalance = abalance + 1 where aid <= $((SCALE * 1000))" >/dev/null
psql_pg "checkpoint" >/dev/null
measure contiguous
as_pg "$PGBIN/pgbench" -h "$W" -p "$PORT" -U postgres -c 2 -j 2 -t "$TX" -n postgres >"$W/pgbench.log" 2>&1 \
    || { tail -20 "$W/pgbench.log" >&2; exit 1; }
psql_pg "checkpoint" >/dev/null
measure uniform

python3 - "$SCALE" "$TX" "${RESULTS[@]}" <<'PY'
import sys
scale, tx, rows = sys.argv[1], sys.argv[2], sys.argv[3:]
KiB = 1024
print()
print(f"incremental stored, pgbench scale {scale} (uniform: {tx} transactions per client)")
print(f"{'change':12}{'pgcairn KiB':>13}{'packs':>9}{'index':>8}{'manifest':>10}{'pgBackRest KiB':>16}{'ratio':>8}")
for r in rows:
    name, packs, index, man, br = r.split()
    packs, index, man, br = int(packs), int(index), int(man), int(br)
    total = packs + index + man
    print(f"{name:12}{total/KiB:>13.0f}{packs/KiB:>9.0f}{index/KiB:>8.0f}{man/KiB:>10.0f}{br/KiB:>16.0f}{total/br if br else float('inf'):>7.2f}x")
print("ratio: pgcairn / pgBackRest (<1: pgcairn stores less)")
PY
