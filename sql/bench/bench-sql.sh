#!/usr/bin/env bash
# make bench-sql: reservations on one hot drop, side by side in one run, 64 clients, synchronous_commit on.
#   (a) the replaced system's statement pattern on plain tables
#   (b) SELECT dropstock.reserve_item(...)
#   (c) the ceiling: a transaction that only inserts one row
#   (d) reserve_item with the background worker publishing every 100 ms vs. with it idle
#   (e) 100,000 holds falling due at once: seconds until their stock is back, buyers of another drop busy
#   (f) reserve_items: 16 buyers per call, 16 clients (holds per second)
# Prints a Markdown table with the ratios, then checks the stock invariant of the drops used.
set -euo pipefail
cd "$(dirname "$0")"
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
DATABASE_URL=${DATABASE_URL:?DATABASE_URL is not set (make bench-sql sets it)}
CLIENTS=${BENCH_CLIENTS:-64}
SECONDS_EACH=${BENCH_SECONDS:-10}
PER_CLIENT=${BENCH_BUYERS_PER_CLIENT:-4000}
# The targets printed beside the ratios: issue-level defaults; `make bench` asks for the drop-scale ones.
TARGET_BA=${BENCH_SQL_TARGET_BA:-4}
TARGET_BC=${BENCH_SQL_TARGET_BC:-0.4}
BATCH_CLIENTS=16
BATCH_PER_CLIENT=60000
psql() { "$PG_BIN/psql" "$DATABASE_URL" -X -q -v ON_ERROR_STOP=1 "$@"; }

echo "bench-sql: preparing buyers and fixtures (the first run creates about a million buyers)" >&2
psql -v clients="$CLIENTS" -v per_client="$PER_CLIENT" -v batch_clients="$BATCH_CLIENTS" \
     -v batch_per_client="$BATCH_PER_CLIENT" -f setup.sql
# Holds of an hour, so that no bench hold falls due while (e) measures the sweep.
new_drop() {
    psql -tAc "SELECT id FROM dropstock.create_drop('bench hot drop', 1, 100000000, now() - interval '1 minute', 3600)"
}
drops=()

# run NAME SCRIPT: prints the tps pgbench measured on a fresh drop (so every buyer is new to it), after
# checking that no client failed.
run() {
    echo "bench-sql: $1 (${RUN_CLIENTS:-$CLIENTS} clients, ${SECONDS_EACH}s)" >&2
    local out drop
    drop=$(new_drop)
    echo "$drop" >> "$drops_file"
    out=$("$PG_BIN/pgbench" -n -M prepared -c "${RUN_CLIENTS:-$CLIENTS}" -j 2 -T "$SECONDS_EACH" -D n=0 -D drop="$drop" \
          -f "$2" "$DATABASE_URL" 2>&1) || { echo "$out" >&2; exit 1; }
    if grep -q "aborted" <<<"$out"; then echo "$out" >&2; echo "bench-sql: clients failed in $1" >&2; exit 1; fi
    grep -oP 'tps = \K[0-9.]+(?= \(without)' <<<"$out"
}

drops_file=$(mktemp)
legacy=$(run "replaced pattern" legacy.sql)
reserve=$(run "reserve_item" reserve.sql)
ceiling=$(run "one-insert ceiling" ceiling.sql)

batch=$(RUN_CLIENTS=$BATCH_CLIENTS run "reserve_items, 16 buyers a call" reserve_batch.sql)

# (d) The worker idles when its tick is a minute long; runs alternate so drift hits both alike.
set_tick() { psql -c "ALTER SYSTEM SET dropstock.tick_ms = $1" -c "SELECT pg_reload_conf()" >/dev/null; sleep 0.3; }
trap 'set_tick 100' EXIT
publishing=0; idle=0; half=$((SECONDS_EACH / 2 > 0 ? SECONDS_EACH / 2 : 1))
for round in 1 2; do
    set_tick 100;   publishing=$(awk -v x="$publishing" -v y="$(SECONDS_EACH=$half run "reserve_item, worker publishing ($round/2)" reserve.sql)" 'BEGIN{print x+y/2}')
    set_tick 60000; idle=$(awk -v x="$idle" -v y="$(SECONDS_EACH=$half run "reserve_item, worker idle ($round/2)" reserve.sql)" 'BEGIN{print x+y/2}')
done
set_tick 100

# (e) The sweep: 100,000 holds due at one instant, while 8 clients keep reserving another drop.
echo "bench-sql: 100,000 holds falling due at once" >&2
read -r sweep_drop due_at < <(psql -tA -F ' ' -v due_in=3 -f sweep-setup.sql | tail -n 1)
busy=$(new_drop)
echo "$busy" >> "$drops_file"
"$PG_BIN/pgbench" -n -M prepared -c 8 -j 2 -T 8 -R 2000 -D n=0 -D drop="$busy" -f reserve.sql "$DATABASE_URL" \
    > "${TMPDIR:-/tmp}/dropstock-bench-busy.log" 2>&1 &
busy_pid=$!
sweep=$(psql -tAc "DO \$\$ BEGIN
    WHILE (SELECT available_stock FROM dropstock.drop_status('$sweep_drop')) < 100000 LOOP
        IF clock_timestamp() > '$due_at'::timestamptz + interval '30 seconds' THEN
            RAISE EXCEPTION 'the sweep did not finish within 30 seconds';
        END IF;
        PERFORM pg_sleep(0.01);
    END LOOP; END \$\$;
    SELECT round(extract(epoch FROM clock_timestamp() - '$due_at'::timestamptz)::numeric, 2)")
wait "$busy_pid" || { cat "${TMPDIR:-/tmp}/dropstock-bench-busy.log" >&2; exit 1; }
busy_tps=$(grep -oP 'tps = \K[0-9.]+(?= \(without)' "${TMPDIR:-/tmp}/dropstock-bench-busy.log")

psql -tAc "SELECT CASE WHEN bool_and(available_stock + held_stock + sold_stock = total_stock
                         AND held_stock = (SELECT count(*) FROM dropstock.reservations r
                                            WHERE r.drop_id = s.id AND r.status = 'reserved'))
                       THEN 'ok' ELSE 'BROKEN' END
             FROM unnest(array_remove(string_to_array('$sweep_drop $(tr '\n' ' ' < "$drops_file")', ' '), '')::uuid[]) AS d(id),
                  LATERAL dropstock.drop_status(d.id) s" | {
    read -r verdict
    echo "bench-sql: stock invariant after the run: $verdict" >&2
    [ "$verdict" = ok ]
}

# End the bench drops, so the worker stops looking at them and their holds are swept within the hour.
psql -c "UPDATE dropstock.drops SET ends_at = now() WHERE name LIKE 'bench %' AND ends_at IS NULL" >/dev/null

awk -v a="$legacy" -v b="$reserve" -v c="$ceiling" -v n="$CLIENTS" -v p="$publishing" -v i="$idle" \
    -v s="$sweep" -v t="$busy_tps" -v f="$batch" -v tba="$TARGET_BA" -v tbc="$TARGET_BC" 'BEGIN {
    printf "| %-58s | %10s |\n", "pattern (" n " clients, one hot drop, synchronous_commit on)", "tps"
    printf "| %-58s | %10s |\n", "----------------------------------------------------------", "---------:"
    printf "| %-58s | %10.0f |\n", "(a) replaced system: BEGIN; SELECT FOR UPDATE; UPDATE; INSERT; COMMIT", a
    printf "| %-58s | %10.0f |\n", "(b) SELECT dropstock.reserve_item(drop, buyer)", b
    printf "| %-58s | %10.0f |\n", "(c) ceiling: a transaction that inserts one row", c
    printf "| %-58s | %9.2fx |\n", "b / a (target >= " tba "x)", b / a
    printf "| %-58s | %9.2fx |\n", "b / c (target >= " tbc "x)", b / c
    printf "| %-58s | %10.0f |\n", "(d) reserve_item, worker publishing every 100 ms", p
    printf "| %-58s | %10.0f |\n", "(d) reserve_item, worker idle", i
    printf "| %-58s | %9.2fx |\n", "publishing / idle (target >= 0.9x)", p / i
    printf "| %-58s | %9ss |\n", "(e) 100,000 holds due at once: all stock back after (target <= 3 s)", s
    printf "| %-58s | %10.0f |\n", "(e) meanwhile, reserve_item on another drop (8 clients, 2000/s offered)", t
    printf "| %-58s | %10.0f |\n", "(f) reserve_items, 16 buyers a call, 16 clients: holds/s", f * 16
    printf "| %-58s | %9.2fx |\n", "f / c: holds per second vs. the one-insert ceiling", f * 16 / c
}'
