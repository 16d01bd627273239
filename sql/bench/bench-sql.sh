#!/usr/bin/env bash
# make bench-sql: reservations on one hot drop, side by side in one run, 64 clients, synchronous_commit on.
#   (a) the replaced system's statement pattern on plain tables
#   (b) SELECT dropstock.reserve_item(...)
#   (c) the ceiling: a transaction that only inserts one row
# Prints a Markdown table with the ratios b/a and b/c, then checks the stock invariant of the drop used.
set -euo pipefail
cd "$(dirname "$0")"
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
DATABASE_URL=${DATABASE_URL:?DATABASE_URL is not set (make bench-sql sets it)}
CLIENTS=${BENCH_CLIENTS:-64}
SECONDS_EACH=${BENCH_SECONDS:-10}
PER_CLIENT=${BENCH_BUYERS_PER_CLIENT:-4000}
psql() { "$PG_BIN/psql" "$DATABASE_URL" -X -q -v ON_ERROR_STOP=1 "$@"; }

echo "bench-sql: preparing $((CLIENTS * PER_CLIENT)) buyers and the fixtures" >&2
psql -v clients="$CLIENTS" -v per_client="$PER_CLIENT" -f setup.sql
drop=$(psql -tAc "SELECT id FROM dropstock.create_drop('bench hot drop', 1, 100000000, now() - interval '1 minute')")

# run NAME SCRIPT: prints the tps pgbench measured, after checking no client failed.
run() {
    echo "bench-sql: $1 ($CLIENTS clients, ${SECONDS_EACH}s)" >&2
    local out
    out=$("$PG_BIN/pgbench" -n -M prepared -c "$CLIENTS" -j 2 -T "$SECONDS_EACH" -D n=0 -D drop="$drop" \
          -f "$2" "$DATABASE_URL" 2>&1) || { echo "$out" >&2; exit 1; }
    if grep -q "aborted" <<<"$out"; then echo "$out" >&2; echo "bench-sql: clients failed in $1" >&2; exit 1; fi
    grep -oP 'tps = \K[0-9.]+(?= \(without)' <<<"$out"
}

legacy=$(run "replaced pattern" legacy.sql)
reserve=$(run "reserve_item" reserve.sql)
ceiling=$(run "one-insert ceiling" ceiling.sql)

psql -tAc "SELECT CASE WHEN available_stock + held_stock + sold_stock = total_stock
                         AND held_stock = (SELECT count(*) FROM dropstock.reservations
                                            WHERE drop_id = '$drop' AND status = 'reserved')
                       THEN 'ok' ELSE 'BROKEN' END FROM dropstock.drop_status('$drop')" | {
    read -r verdict
    echo "bench-sql: stock invariant after the run: $verdict" >&2
    [ "$verdict" = ok ]
}

awk -v a="$legacy" -v b="$reserve" -v c="$ceiling" -v n="$CLIENTS" 'BEGIN {
    printf "| %-58s | %10s |\n", "pattern (" n " clients, one hot drop, synchronous_commit on)", "tps"
    printf "| %-58s | %10s |\n", "----------------------------------------------------------", "---------:"
    printf "| %-58s | %10.0f |\n", "(a) replaced system: BEGIN; SELECT FOR UPDATE; UPDATE; INSERT; COMMIT", a
    printf "| %-58s | %10.0f |\n", "(b) SELECT dropstock.reserve_item(drop, buyer)", b
    printf "| %-58s | %10.0f |\n", "(c) ceiling: a transaction that inserts one row", c
    printf "| %-58s | %9.2fx |\n", "b / a (target >= 4x)", b / a
    printf "| %-58s | %9.2fx |\n", "b / c (target >= 0.4x)", b / c
}'
