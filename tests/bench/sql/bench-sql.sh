#!/usr/bin/env bash
# make bench-sql: reservations on one hot drop, side by side in one run, 64 clients, synchronous_commit on.
#   (g) cold start: reserve_item right after CREATE EXTENSION and a bulk load of buyers, vs. after ANALYZE
#   (a) the replaced system's statement pattern on plain tables
#   (b) SELECT dropstock.reserve_item(...)
#   (c) the ceiling: a transaction that only inserts one row
#   (d) reserve_item with the background worker publishing (a 100 ms tick, and woken by commits at most
#       every 50 ms) vs. with it idle
#   (e) 100,000 holds falling due at once: seconds until their stock is back, buyers of another drop busy
#   (f) reserve_items: 16 buyers per call, 16 clients (holds per second)
#   (h) day two: reserve_item on a new drop after a million short holds came and went, vs. after VACUUM ANALYZE
#   (i) a quiet tick: one worker tick's cost with 10,000 open drops holding units and nothing changing
#   (j) sizes: reserve_item of one hot size of a 10-size drop, and of 2 units of it, vs. a one-stock drop
#   (k) the line: 100,000 buyers waiting, 10,000 holds falling due at once: seconds until the worker has
#       offered all 10,000 units to the first 10,000 in line; reserve_item on another drop meanwhile vs. alone
#       (BENCH_SQL_ONLY=k runs this row alone)
# (g) recreates the extension in this cluster, so it runs first and everything else builds on that install.
# Prints a Markdown table with the ratios, then checks the stock invariant of the drops used.
set -euo pipefail
cd "$(dirname "$0")"
here=$PWD
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
DATABASE_URL=${DATABASE_URL:?DATABASE_URL is not set (make bench-sql sets it)}
CLIENTS=${BENCH_CLIENTS:-64}
SECONDS_EACH=${BENCH_SQL_SECONDS:-${BENCH_SECONDS:-10}}
PER_CLIENT=${BENCH_BUYERS_PER_CLIENT:-4000}
# The targets printed beside the ratios: issue-level defaults; `make bench` asks for the drop-scale ones.
TARGET_BA=${BENCH_SQL_TARGET_BA:-4}
TARGET_BC=${BENCH_SQL_TARGET_BC:-0.4}
TARGET_PUBLISHING=${BENCH_SQL_TARGET_PUBLISHING:-0.9}
BATCH_CLIENTS=16
BATCH_PER_CLIENT=60000
# (g): buyers registered in one statement right after the install; the first seconds reported apart.
COLD_BUYERS=${BENCH_COLD_BUYERS:-400000}
COLD_EARLY=${BENCH_COLD_EARLY_SECONDS:-3}
# (h): short holds made by reserve_items batches; each churn client draws on its BATCH_PER_CLIENT buyers.
DAY2_HOLDS=${BENCH_DAY2_HOLDS:-1000000}
DAY2_CLIENTS=${BENCH_DAY2_CLIENTS:-4}
DAY2_BATCH=${BENCH_DAY2_BATCH:-500}
DAY2_SWEEP_DEADLINE=${BENCH_DAY2_SWEEP_SECONDS:-180}
# (i)
QUIET_DROPS=${BENCH_QUIET_DROPS:-10000}
QUIET_TICKS=${BENCH_QUIET_TICKS:-50}
# (k)
LINE_WAITING=${BENCH_LINE_WAITING:-100000}
LINE_HOLDS=${BENCH_LINE_HOLDS:-10000}
LINE_CLIENTS=8
LINE_SECONDS=5
psql() { "$PG_BIN/psql" "$DATABASE_URL" -X -q -v ON_ERROR_STOP=1 "$@"; }
if [ "$DAY2_CLIENTS" -gt "$BATCH_CLIENTS" ] || [ "$DAY2_BATCH" -gt "$BATCH_PER_CLIENT" ]; then
    echo "bench-sql: BENCH_DAY2_CLIENTS <= $BATCH_CLIENTS and BENCH_DAY2_BATCH <= $BATCH_PER_CLIENT (the buyers setup.sql makes)" >&2
    exit 1
fi
tmp=$(mktemp -d)
drops_file=$tmp/drops

# Which SQL the figures below come from: the extension script installed when the run began.
script_file=$(ls "$("$PG_BIN/pg_config" --sharedir)"/extension/dropstock--*.sql 2>/dev/null | head -n 1 || true)
if [ -n "$script_file" ]; then
    echo "bench-sql: extension script $(basename "$script_file"), md5 $(md5sum < "$script_file" | cut -c1-12), installed $(date -r "$script_file" '+%F %T')" >&2
fi

# (d) and (i) idle the worker: a minute-long tick, and commits that do not wake it (with only the long
# tick, every commit would still wake it, and it would publish every 50 ms under load as it normally
# does). worker_normal puts both back, always.
worker_settings() {
    psql -c "ALTER SYSTEM SET dropstock.tick_ms = $1" -c "ALTER SYSTEM SET dropstock.wake_on_commit = $2" \
         -c "SELECT pg_reload_conf()" >/dev/null
    sleep 0.3  # the reload reaches the worker and the postmaster asynchronously
}
worker_idle() { worker_settings 60000 off; }
worker_normal() { worker_settings 100 on; }
trap 'worker_normal; rm -rf "$tmp"' EXIT
worker_normal  # whatever an earlier run or a person left

# Holds of an hour, so that no bench hold falls due while (e) measures the sweep.
new_drop() {
    psql -tAc "SELECT id FROM dropstock.create_drop('bench hot drop', 1, 100000000, now() - interval '1 minute', 3600)"
}

# (j) The same stock as new_drop's, in 10 sizes of 10,000,000; two units a buyer, so quantity 2 is allowed.
new_sized_drop() {
    psql -tAc "SELECT id FROM dropstock.create_drop('bench sized drop', 1, NULL, now() - interval '1 minute', 3600, 2,
                      NULL, (SELECT jsonb_object_agg('US ' || s, 10000000) FROM generate_series(4, 13) AS s))"
}

# add_half SUM VALUE: SUM + VALUE / 2, for the rows measured in two runs (mirrored orders) and averaged.
add_half() { awk -v x="$1" -v y="$2" 'BEGIN{print x+y/2}'; }

# run NAME SCRIPT: prints the tps pgbench measured on a fresh drop (so every buyer is new to it), after
# checking that no client failed. pgbench's whole report is left in $tmp/last-run.log.
run() {
    echo "bench-sql: $1 (${RUN_CLIENTS:-$CLIENTS} clients, ${SECONDS_EACH}s)" >&2
    local out drop
    drop=$(${NEW_DROP:-new_drop})
    echo "$drop" >> "$drops_file"
    out=$("$PG_BIN/pgbench" -n -M prepared -c "${RUN_CLIENTS:-$CLIENTS}" -j 2 -T "$SECONDS_EACH" -D n=0 -D drop="$drop" \
          ${RUN_ARGS:-} -f "$2" "$DATABASE_URL" 2>&1) || { echo "$out" >&2; exit 1; }
    echo "$out" > "$tmp/last-run.log"
    if grep -q "aborted" <<<"$out"; then echo "$out" >&2; echo "bench-sql: clients failed in $1" >&2; exit 1; fi
    grep -oP 'tps = \K[0-9.]+(?= \(without)' <<<"$out"
}

# (k) The line: LINE_WAITING buyers wait on a drop whose LINE_HOLDS holds all fall due at one instant; the
# worker (tick 100 ms, its batch size) ends them and offers each unit to the next buyer in line. Measured
# from the instant they fall due until the last offer is committed (as seen by polling every 10 ms).
# Meanwhile LINE_CLIENTS clients reserve another drop as fast as they can, from a second before the holds
# fall due; the same clients on a fresh drop with nothing falling due, just before, are the comparison.
line_row() {
    line_alone=$(RUN_CLIENTS=$LINE_CLIENTS SECONDS_EACH=$LINE_SECONDS run "(k) reserve_item, another drop, nothing falling due" reserve.sql)
    echo "bench-sql: (k) $LINE_WAITING buyers joining the line of a drop whose $LINE_HOLDS holds fall due at once" >&2
    local holds
    read -r holds line_drop line_due < <(psql -tA -F ' ' -v holders="$LINE_HOLDS" -v waiting="$LINE_WAITING" -v due_in=1 \
                                           -f line-setup.sql | tail -n 1)
    [ "$holds" = "$LINE_HOLDS" ] || { echo "bench-sql: (k) $holds holds set to fall due, not $LINE_HOLDS" >&2; exit 1; }
    echo "$line_drop" >> "$drops_file"
    local busy
    busy=$(new_drop)
    echo "$busy" >> "$drops_file"
    psql -tAc "SELECT pg_sleep(extract(epoch FROM '$line_due'::timestamptz - interval '1 second' - clock_timestamp()))" >/dev/null
    echo "bench-sql: (k) reserve_item, another drop, while the line is served ($LINE_CLIENTS clients, ${LINE_SECONDS}s)" >&2
    "$PG_BIN/pgbench" -n -M prepared -c "$LINE_CLIENTS" -j 2 -T "$LINE_SECONDS" -P 1 -D n=0 -D drop="$busy" -f reserve.sql \
        "$DATABASE_URL" > "$tmp/line-busy.log" 2>&1 &
    local busy_pid=$!
    # The poll looks at one buyer, the last of the first LINE_HOLDS in line: the worker serves the line in
    # order, a batch per transaction, so their offer commits with the last batch. (Counting the drop's
    # offers instead read up to 20,000 rows a poll, 100 times a second: a load of its own on the machine,
    # which the comparison run did not carry.) The check below then looks at every one of them.
    line_served=$(psql -tAc "DO \$\$ BEGIN
        WHILE NOT EXISTS (SELECT FROM dropstock.reservations r
                           WHERE r.drop_id = '$line_drop' AND r.user_id = md5('bench-line-' || 2 * $LINE_HOLDS)::uuid
                             AND r.status = 'reserved' AND r.offered) LOOP
            IF clock_timestamp() > '$line_due'::timestamptz + interval '60 seconds' THEN
                RAISE EXCEPTION 'the line was not served within 60 seconds';
            END IF;
            PERFORM pg_sleep(0.01);
        END LOOP; END \$\$;
        SELECT round(extract(epoch FROM clock_timestamp() - '$line_due'::timestamptz)::numeric, 2)")
    wait "$busy_pid" || { cat "$tmp/line-busy.log" >&2; exit 1; }
    if grep -q "aborted" "$tmp/line-busy.log"; then cat "$tmp/line-busy.log" >&2; exit 1; fi
    grep '^progress:' "$tmp/line-busy.log" | sed 's/^/bench-sql:   line /' >&2
    line_busy=$(grep -oP 'tps = \K[0-9.]+(?= \(without)' "$tmp/line-busy.log")
    # The offers went to the first LINE_HOLDS in line, one each, and the rest still wait.
    # One index probe per buyer for their live hold (the offers last the drop's hour): any plan that
    # compared each of the drop's holds with the 10,000 ids took a minute and a half.
    psql -tAc "SELECT (SELECT count(*)
                         FROM generate_series($LINE_HOLDS + 1, 2 * $LINE_HOLDS) AS k,
                              LATERAL (SELECT FROM dropstock.reservations r
                                        WHERE r.drop_id = '$line_drop' AND r.user_id = md5('bench-line-' || k)::uuid
                                          AND r.status = 'reserved' AND r.offered LIMIT 1) offer)
                    || ' ' || dropstock.waitlist_length('$line_drop')" | {
        read -r first_in_line waiting
        echo "bench-sql: (k) offers to the first $LINE_HOLDS in line: $first_in_line; still waiting: $waiting" >&2
        [ "$first_in_line" = "$LINE_HOLDS" ] && [ "$waiting" = $((LINE_WAITING - LINE_HOLDS)) ]
    }
    # What a join costs at the end of that line: 100 more buyers join one after another (one statement).
    line_join_ms=$(psql -tAc "WITH j AS MATERIALIZED (
                                  SELECT count(dropstock.join_waitlist('$line_drop', md5('bench-line-' || k)::uuid)) AS n
                                    FROM generate_series($LINE_HOLDS + $LINE_WAITING + 1, $LINE_HOLDS + $LINE_WAITING + 100) AS k)
                              SELECT round((extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000 / n)::numeric, 2) FROM j")
    echo "bench-sql: (k) join_waitlist behind $((LINE_WAITING - LINE_HOLDS)) waiting: $line_join_ms ms a join" >&2
}

if [ "${BENCH_SQL_ONLY:-}" = k ]; then
    # Row (k) alone: the buyers reserve.sql names for its clients, then the row.
    psql -v clients="$LINE_CLIENTS" -v per_client="$PER_CLIENT" -v batch_clients=0 -v batch_per_client=0 -f setup.sql
    line_row
    awk -v n="$LINE_WAITING" -v h="$LINE_HOLDS" -v c="$LINE_CLIENTS" -v s="$line_served" -v b="$line_busy" -v a="$line_alone" -v j="$line_join_ms" 'BEGIN {
        printf "| %-58s | %10s |\n", "pattern (synchronous_commit on)", "result"
        printf "| %-58s | %10s |\n", "----------------------------------------------------------", "---------:"
        printf "| %-58s | %9ss |\n", "(k) " n " waiting, " h " holds due at once: all offers made after (target <= 3 s)", s
        printf "| %-58s | %10.0f |\n", "(k) meanwhile, reserve_item on another drop (" c " clients)", b
        printf "| %-58s | %10.0f |\n", "(k) the same clients with nothing falling due", a
        printf "| %-58s | %9.2fx |\n", "meanwhile / nothing due (target >= 0.8x)", b / a
        printf "| %-58s | %8.2fms |\n", "(k) join_waitlist behind " n - h " waiting, one join", j
    }'
    exit 0
fi

# (g) Cold start: what the first buyers meet right after an install, when the tables were empty and had
# no statistics at the moment each connection's plpgsql cached its plans. Fresh pgbench connections on
# a fresh drop; the buyers are the ones reserve.sql names (client_id * 100000 + n).
echo "bench-sql: (g) cold start: recreating the extension, registering $COLD_BUYERS buyers in one statement" >&2
psql -c "SET client_min_messages = warning" -c "DROP EXTENSION IF EXISTS dropstock CASCADE" -c "CREATE EXTENSION dropstock" \
     -c "INSERT INTO dropstock.users (id, username)
         SELECT md5('bench-' || k)::uuid, 'bench-' || k
           FROM generate_series(0, $CLIENTS - 1) AS c, generate_series(1, $COLD_BUYERS / $CLIENTS) AS n,
                LATERAL (SELECT c * 100000 + n AS k) AS key"
cold=$(RUN_ARGS="-P 1" run "(g) reserve_item right after the install, cold" reserve.sql)
# pgbench's per-second progress: the first seconds are what a drop opening right after an install meets.
cold_early=$(grep -oP '^progress: [0-9.]+ s, \K[0-9.]+(?= tps)' "$tmp/last-run.log" | head -n "$COLD_EARLY" |
             awk '{ s += $1; n++ } END { printf "%.0f", n ? s / n : 0 }')
grep '^progress:' "$tmp/last-run.log" | sed 's/^/bench-sql:   cold /' >&2
psql -c "ANALYZE"
warm=$(run "(g) reserve_item after ANALYZE, warm" reserve.sql)

echo "bench-sql: preparing buyers and fixtures (about a million buyers)" >&2
psql -v clients="$CLIENTS" -v per_client="$PER_CLIENT" -v batch_clients="$BATCH_CLIENTS" \
     -v batch_per_client="$BATCH_PER_CLIENT" -f setup.sql

# (a), (b) and (c) in the order a, b, c, c, b, a, each run full length, so that a steady drift of the
# machine's speed hits all three alike (run once each in a row, b/c read 0.25x and 0.21x in two runs of
# `make bench` an hour apart on one build, on a host whose ceiling moved from 22,800/s to 16,000/s).
legacy=0; reserve=0; ceiling=0
for order in "legacy reserve ceiling" "ceiling reserve legacy"; do
    for kind in $order; do
        case $kind in
            legacy) legacy=$(add_half "$legacy" "$(run "replaced pattern" legacy.sql)") ;;
            reserve) reserve=$(add_half "$reserve" "$(run "reserve_item" reserve.sql)") ;;
            ceiling) ceiling=$(add_half "$ceiling" "$(run "one-insert ceiling" ceiling.sql)") ;;
        esac
    done
done

batch=$(RUN_CLIENTS=$BATCH_CLIENTS run "reserve_items, 16 buyers a call" reserve_batch.sql)

# (d) The worker publishing as it normally does, against idled (worker_idle); in the order publishing,
# idle, idle, publishing, so that a steady drift hits both alike, each run as long as the other rows' runs
# (in half-length runs the ratio swung from 0.87x to 1.02x over five runs).
publishing=0; idle=0
for order in "publishing idle" "idle publishing"; do
    for mode in $order; do
        if [ "$mode" = publishing ]; then
            worker_normal; publishing=$(add_half "$publishing" "$(run "reserve_item, worker publishing" reserve.sql)")
        else
            worker_idle;   idle=$(add_half "$idle" "$(run "reserve_item, worker idle" reserve.sql)")
        fi
    done
done
worker_normal

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

# What autovacuum is doing now (the queries of its workers), for the tick log.
vacuums_running() {
    psql -tAc "SELECT coalesce(string_agg(query, '; '), 'none') FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
}

# tick_ms [SCRIPT]: the average cost of one idle worker tick (tick.sql: sweep, then feed; tick-full.sql: the
# full sweep and feed look the worker runs every 30 s), QUIET_TICKS of them in one session, with the worker itself idled
# so that only this session does the work.
tick_ms() {
    worker_idle
    local out vacuums
    vacuums=$(vacuums_running)
    out=$(cd "$tmp" && rm -f pgbench_log.* && "$PG_BIN/pgbench" -n -M prepared -r -l -c 1 -t "$QUIET_TICKS" \
          -f "$here/${1:-tick.sql}" "$DATABASE_URL" 2>&1) || { echo "$out" >&2; exit 1; }
    worker_normal
    # Where the time went: each statement's average, then every tick in order (ms).
    grep -E '^ +[0-9.]+ +[0-9]+ +SELECT' <<<"$out" | sed 's/^ */bench-sql:   tick statement, ms: /' >&2
    echo "bench-sql:   ticks, ms: $(awk '{ printf "%.2f ", $3 / 1000 }' "$tmp"/pgbench_log.*)" >&2
    echo "bench-sql:   autovacuum when the ticks began: $vacuums; when they ended: $(vacuums_running)" >&2
    grep -oP 'latency average = \K[0-9.]+' <<<"$out"
}

# (h) Day two: a million short holds on other drops come and go the way real ones do (made by buyers,
# swept by the worker), leaving real dead rows and dead index entries; then a new hot drop opens.
day2_range=$(( BATCH_PER_CLIENT / DAY2_BATCH * DAY2_BATCH ))
day2_calls=$(( (DAY2_HOLDS + DAY2_CLIENTS * DAY2_BATCH - 1) / (DAY2_CLIENTS * DAY2_BATCH) ))
day2_laps=$(( (day2_calls * DAY2_BATCH + day2_range - 1) / day2_range ))
day2_drops=$(( DAY2_CLIENTS * day2_laps ))
echo "bench-sql: (h) day two: $((day2_calls * DAY2_CLIENTS * DAY2_BATCH)) holds of 1 s on $day2_drops other drops ($DAY2_CLIENTS clients, $DAY2_BATCH buyers a call)" >&2
churn_drops=$(psql -tAc "SELECT string_agg(id::text, ' ') FROM (SELECT (dropstock.create_drop('bench churn drop', 1, 100000000,
                         now() - interval '1 minute', 1)).id FROM generate_series(1, $day2_drops)) AS d")
tr ' ' '\n' <<<"$churn_drops" >> "$drops_file"
autovacuums() {
    psql -tAc "SELECT autovacuum_count || ' autovacuum(s), ' || autoanalyze_count || ' autoanalyze(s)'
                 FROM pg_stat_user_tables WHERE relid = 'dropstock.reservations'::regclass"
}
av_before=$(autovacuums)
"$PG_BIN/pgbench" -n -M prepared -c "$DAY2_CLIENTS" -j 2 -t "$day2_calls" -P 10 -D n=0 -D batch="$DAY2_BATCH" \
    -D range="$day2_range" -D laps="$day2_laps" -D drops="$churn_drops" -f churn.sql "$DATABASE_URL" \
    > "$tmp/churn.log" 2>&1 || { cat "$tmp/churn.log" >&2; exit 1; }
if grep -q "aborted" "$tmp/churn.log"; then cat "$tmp/churn.log" >&2; echo "bench-sql: churn clients failed" >&2; exit 1; fi
grep '^progress:' "$tmp/churn.log" | sed 's/^/bench-sql:   churn /' >&2
# Swept means every churn drop has its whole stock back. This watches stock_slots only: a look at the
# holds would walk the reservation indexes and mark their dead entries, which is part of what is measured.
sweep_start=$(date +%s)
while :; do
    left=$(psql -tAc "SELECT $day2_drops * 100000000 - sum(available) FROM dropstock.stock_slots
                       WHERE drop_id = ANY (string_to_array('$churn_drops', ' ')::uuid[])")
    [ "$left" = 0 ] && break
    waited=$(( $(date +%s) - sweep_start ))
    if [ "$waited" -ge "$DAY2_SWEEP_DEADLINE" ]; then
        echo "bench-sql: the worker had not swept the churn holds after ${DAY2_SWEEP_DEADLINE}s ($left left)" >&2; exit 1
    fi
    [ $(( waited % 5 )) = 0 ] && echo "bench-sql:   waiting for the sweep: $left holds left after ${waited}s" >&2
    sleep 1
done
echo "bench-sql:   swept $(( $(date +%s) - sweep_start ))s after the last hold was made; reservations: $av_before before, $(autovacuums) now" >&2
day2_tick_churned=$(tick_ms)
day2_full_churned=$(tick_ms tick-full.sql)
churned=$(run "(h) reserve_item on a new drop after the churn" reserve.sql)
echo "bench-sql: (h) VACUUM ANALYZE" >&2
psql -c "VACUUM ANALYZE"
day2_tick_vacuumed=$(tick_ms)
vacuumed=$(run "(h) reserve_item on a new drop after VACUUM ANALYZE" reserve.sql)

# (j) Sizes: one hot size ("US 9") of a 10-size drop, one unit and two units a hold, against the one-stock
# drop, in the order one-stock, size, pair, pair, size, one-stock so that a steady drift hits all three
# alike, each run as long as the other rows' runs (in half-length runs the ratio swung from 0.82x to
# 0.92x over six runs).
plain=0; sized=0; pair=0
for order in "plain sized pair" "pair sized plain"; do
    for kind in $order; do
        case $kind in
            plain) plain=$(add_half "$plain" "$(run "(j) reserve_item, one-stock drop" reserve.sql)") ;;
            sized) sized=$(add_half "$sized" "$(NEW_DROP=new_sized_drop run "(j) reserve_item, one hot size of 10" reserve_size.sql)") ;;
            pair) pair=$(add_half "$pair" "$(NEW_DROP=new_sized_drop run "(j) reserve_item, 2 units of one hot size" reserve_pair.sql)") ;;
        esac
    done
done

line_row

# (i) A quiet tick: many open drops holding units, published once, then nothing changes; what the worker
# pays per tick. Each drop holds a unit, so a publication that looked at every drop holding units (rather
# than at the drops it was told changed) would pay for all of them.
echo "bench-sql: (i) creating $QUIET_DROPS open drops, each holding a unit" >&2
quiet_name="bench quiet drop $(date +%s%N)"
psql -c "SELECT count(dropstock.create_drop('$quiet_name', 1, 100, now() - interval '1 minute', 3600))
           FROM generate_series(1, $QUIET_DROPS)" >/dev/null
psql -c "SELECT count(dropstock.reserve_item(q.id, b.id))
           FROM (SELECT d.id, row_number() OVER () AS n FROM dropstock.drops d WHERE d.name = '$quiet_name') q
           JOIN (SELECT u.id, row_number() OVER () AS n FROM dropstock.users u LIMIT $QUIET_DROPS) b USING (n)" >/dev/null
worker_idle
psql -c "SELECT dropstock.publish_changes()" >/dev/null
quiet_tick=$(tick_ms)
echo "bench-sql: checking the stock of the $(( $(wc -l < "$drops_file") + 1 )) drops the run used" >&2

# The live holds' units per drop in one pass over the table: one look-up per drop read the millions of
# live holds the run leaves (holds of an hour) in index order, two minutes of the run.
psql -tAc "SELECT CASE WHEN bool_and(s.available_stock + s.held_stock + s.sold_stock = s.total_stock
                         AND s.held_stock = coalesce(h.units, 0))
                       THEN 'ok' ELSE 'BROKEN' END
             FROM unnest(array_remove(string_to_array('$sweep_drop $(tr '\n' ' ' < "$drops_file")', ' '), '')::uuid[]) AS d(id)
             CROSS JOIN LATERAL dropstock.drop_status(d.id) s
             LEFT JOIN (SELECT r.drop_id, sum(r.quantity) AS units FROM dropstock.reservations r
                         WHERE r.status = 'reserved' GROUP BY r.drop_id) h ON h.drop_id = d.id" | {
    read -r verdict
    echo "bench-sql: stock invariant after the run: $verdict" >&2
    [ "$verdict" = ok ]
}

# End the bench drops, so the worker stops looking at them and their holds are swept within the hour.
psql -c "UPDATE dropstock.drops SET ends_at = now() WHERE name LIKE 'bench %' AND ends_at IS NULL" >/dev/null

awk -v a="$legacy" -v b="$reserve" -v c="$ceiling" -v n="$CLIENTS" -v p="$publishing" -v i="$idle" \
    -v s="$sweep" -v t="$busy_tps" -v f="$batch" -v tba="$TARGET_BA" -v tbc="$TARGET_BC" -v tp="$TARGET_PUBLISHING" \
    -v gc="$cold" -v gw="$warm" -v ge="$cold_early" -v gen="$COLD_EARLY" -v gb="$COLD_BUYERS" \
    -v hc="$churned" -v hv="$vacuumed" -v hn="$((day2_calls * DAY2_CLIENTS * DAY2_BATCH))" \
    -v jp="$plain" -v js="$sized" -v jq="$pair" \
    -v kn="$LINE_WAITING" -v kh="$LINE_HOLDS" -v kc="$LINE_CLIENTS" -v ks="$line_served" -v kb="$line_busy" -v ka="$line_alone" -v kj="$line_join_ms" \
    -v htc="$day2_tick_churned" -v htv="$day2_tick_vacuumed" -v hfc="$day2_full_churned" -v qn="$QUIET_DROPS" -v qt="$quiet_tick" -v qk="$QUIET_TICKS" 'BEGIN {
    printf "| %-58s | %10s |\n", "pattern (" n " clients, one hot drop, synchronous_commit on)", "tps"
    printf "| %-58s | %10s |\n", "----------------------------------------------------------", "---------:"
    printf "| %-58s | %10.0f |\n", "(a) replaced system: BEGIN; SELECT FOR UPDATE; UPDATE; INSERT; COMMIT", a
    printf "| %-58s | %10.0f |\n", "(b) SELECT dropstock.reserve_item(drop, buyer)", b
    printf "| %-58s | %10.0f |\n", "(c) ceiling: a transaction that inserts one row", c
    printf "| %-58s | %9.2fx |\n", "b / a (target >= " tba "x)", b / a
    printf "| %-58s | %9.2fx |\n", "b / c (target >= " tbc "x)", b / c
    printf "| %-58s | %10.0f |\n", "(d) reserve_item, worker publishing (woken by commits)", p
    printf "| %-58s | %10.0f |\n", "(d) reserve_item, worker idle", i
    printf "| %-58s | %9.2fx |\n", "publishing / idle (target >= " tp "x)", p / i
    printf "| %-58s | %9ss |\n", "(e) 100,000 holds due at once: all stock back after (target <= 3 s)", s
    printf "| %-58s | %10.0f |\n", "(e) meanwhile, reserve_item on another drop (8 clients, 2000/s offered)", t
    printf "| %-58s | %10.0f |\n", "(f) reserve_items, 16 buyers a call, 16 clients: holds/s", f * 16
    printf "| %-58s | %9.2fx |\n", "f / c: holds per second vs. the one-insert ceiling", f * 16 / c
    printf "| %-58s | %10.0f |\n", "(g) cold: right after CREATE EXTENSION and " gb " buyers in bulk", gc
    printf "| %-58s | %10.0f |\n", "(g) cold, first " gen " s alone", ge
    printf "| %-58s | %10.0f |\n", "(g) warm: the same after ANALYZE", gw
    printf "| %-58s | %9.2fx |\n", "cold / warm (target >= 0.8x)", gc / gw
    printf "| %-58s | %10.0f |\n", "(h) churned: new drop after " hn " 1 s holds came and went", hc
    printf "| %-58s | %10.0f |\n", "(h) vacuumed: the same after VACUUM ANALYZE", hv
    printf "| %-58s | %9.2fx |\n", "churned / vacuumed (target >= 0.8x)", hc / hv
    printf "| %-58s | %8.2fms |\n", "(h) idle worker tick, churned / vacuumed: churned", htc
    printf "| %-58s | %8.2fms |\n", "(h) idle worker tick, churned / vacuumed: vacuumed", htv
    printf "| %-58s | %8.2fms |\n", "(h) the full sweep and look every 30 s, churned", hfc
    printf "| %-58s | %8.2fms |\n", "(i) one worker tick, " qn " open drops holding units, nothing changing (avg of " qk ") (target < 5 ms)", qt
    printf "| %-58s | %10.0f |\n", "(j) reserve_item, one-stock drop", jp
    printf "| %-58s | %10.0f |\n", "(j) reserve_item, one hot size of a 10-size drop", js
    printf "| %-58s | %10.0f |\n", "(j) reserve_item, 2 units of that hot size", jq
    printf "| %-58s | %9.2fx |\n", "hot size / one-stock (target >= 0.9x)", js / jp
    printf "| %-58s | %9.2fx |\n", "2 units / one-stock (target >= 0.8x)", jq / jp
    printf "| %-58s | %9ss |\n", "(k) " kn " waiting, " kh " holds due at once: all offers made after (target <= 3 s)", ks
    printf "| %-58s | %10.0f |\n", "(k) meanwhile, reserve_item on another drop (" kc " clients)", kb
    printf "| %-58s | %10.0f |\n", "(k) the same clients with nothing falling due", ka
    printf "| %-58s | %9.2fx |\n", "meanwhile / nothing due (target >= 0.8x)", kb / ka
    printf "| %-58s | %8.2fms |\n", "(k) join_waitlist behind " kn - kh " waiting, one join", kj
}'
