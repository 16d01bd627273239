#!/usr/bin/env bash
# make bench-outside: the adapter measured by a load generator that is not ours (wrk), the way an
# outsider would check the adapter row of `make bench`: 2 threads, 1,000 keep-alive connections, a buyer
# new to the drop on every request, one hot drop, the rate limits off, after a warm-up; side by side with
# the one-insert ceiling (pgbench) in the same run. Then the sold-out row: the same requests (a new buyer
# each) on a drop that is sold out, then to an unknown path, the adapter's cheapest answer (404), side by
# side. Needs wrk (Debian: apt-get install wrk).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
cd "$ROOT"
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
export DATABASE_URL=${DATABASE_URL:?DATABASE_URL is not set (make bench-outside sets it)}
ADAPTER=${ADAPTER:-$ROOT/target/release/dropstock-http}
PORT=${BENCH_PORT:-18090}
THREADS=${WRK_THREADS:-2}
CONNECTIONS=${WRK_CONNECTIONS:-1000}
SECONDS_EACH=${BENCH_SECONDS:-10}
WARM_UP_SECONDS=3
OUT=$ROOT/target/bench
mkdir -p "$OUT"
say() { echo "bench-outside: $*" >&2; }
psql() { "$PG_BIN/psql" "$DATABASE_URL" -X -q -v ON_ERROR_STOP=1 "$@"; }
command -v wrk >/dev/null || { say "wrk is not installed (Debian: apt-get install wrk)"; exit 1; }
[ -x "$ADAPTER" ] || { say "$ADAPTER is missing: cargo build --release -p dropstock-http"; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

say "buyers (the bench's; the first run of any bench creates about a million)"
psql -v clients=64 -v per_client=4000 -v batch_clients=16 -v batch_per_client=60000 -f tests/bench/sql/setup.sql
buyers=$OUT/outside-buyers.txt
psql -c "\copy (SELECT id FROM dropstock.users WHERE username LIKE 'bench-%' ORDER BY id) TO '$buyers'"
new_drop() {
    psql -tAc "SELECT id FROM dropstock.create_drop('$1', 1, 100000000, now() - interval '1 minute', 3600)"
}

say "one-insert ceiling (pgbench, 64 clients, ${SECONDS_EACH}s)"
"$PG_BIN/pgbench" -n -M prepared -c 64 -j 2 -T "$SECONDS_EACH" -D n=0 -f tests/bench/sql/ceiling.sql "$DATABASE_URL" \
    > "$OUT/outside-ceiling.txt" 2>&1 || { cat "$OUT/outside-ceiling.txt" >&2; exit 1; }
ceiling=$(grep -oP 'tps = \K[0-9.]+(?= \(without)' "$OUT/outside-ceiling.txt")

RUST_LOG=warn DROPSTOCK_RATE_LIMIT_PER_IP=0 "$ADAPTER" --listen "127.0.0.1:$PORT" > "$OUT/outside-adapter.log" 2>&1 &
adapter=$!
trap 'kill $adapter 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    kill -0 "$adapter" 2>/dev/null || { cat "$OUT/outside-adapter.log" >&2; exit 1; }
    sleep 0.1
done

# wrk NAME DROP SECONDS [PATH]: one wrk run; its report is kept in target/bench/outside-NAME.txt.
run_wrk() {
    wrk -t "$THREADS" -c "$CONNECTIONS" -d "${3}s" --latency -s tests/bench/outside/reserve.lua \
        "http://127.0.0.1:$PORT" -- "$2" "$buyers" "$THREADS" ${4:+"$4"} > "$OUT/outside-$1.txt" 2>&1 ||
        { cat "$OUT/outside-$1.txt" >&2; exit 1; }
}
# shortcut_answers: how many reservations the adapter has answered "sold out" without the database.
shortcut_answers() {
    local metrics
    exec 3<>"/dev/tcp/127.0.0.1/$PORT"
    printf 'GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    metrics=$(cat <&3)
    exec 3<&-
    grep -oP '^dropstock_http_sold_out_shortcut_answers_total \K[0-9]+' <<<"$metrics"
}
say "warm-up (wrk, ${WARM_UP_SECONDS}s, another drop)"
run_wrk warm-up "$(new_drop 'bench outside warm-up')" "$WARM_UP_SECONDS"
drop=$(new_drop 'bench outside')
say "wrk: $THREADS threads, $CONNECTIONS connections, ${SECONDS_EACH}s"
run_wrk run "$drop" "$SECONDS_EACH"
cat "$OUT/outside-run.txt" >&2
# field NAME [REPORT]: a value from the `result:` line of a wrk report (outside-REPORT.txt, default: run).
field() { grep '^result:' "$OUT/outside-${2:-run}.txt" | grep -oP "(?<= $1=)\S+"; }
# The database's own count: every unit is available, held or sold, one live hold per held unit, and the
# holds are the 201s wrk saw plus at most one a connection (requests still in flight when wrk stopped).
check=$(psql -tAc "SELECT CASE WHEN s.available_stock + s.held_stock + s.sold_stock = s.total_stock
                                 AND s.held_stock = (SELECT count(*) FROM dropstock.reservations r
                                                      WHERE r.drop_id = s.id AND r.status = 'reserved')
                                 AND s.held_stock BETWEEN $(field holds) AND $(field holds) + $CONNECTIONS
                            THEN 'ok (' || s.held_stock || ' held)' ELSE 'broken (' || s.held_stock || ' held)' END
                     FROM dropstock.drop_status('$drop') s")

# Sold out: one unit, held by a bench buyer; every request after is a new buyer told "sold out". The
# adapter learns it from the drop's notice; a short run first lets it.
sold_out_drop=$(psql -tAc "SELECT id FROM dropstock.create_drop('bench outside sold out', 1, 1, now() - interval '1 minute', 3600)")
psql -tAc "SELECT dropstock.reserve_item('$sold_out_drop', (SELECT id FROM dropstock.users WHERE username = 'bench-1'))" >/dev/null
say "sold out: wrk on a drop that is sold out, then the same requests to an unknown path (${SECONDS_EACH}s each)"
run_wrk sold-out-warm-up "$sold_out_drop" 2
before=$(shortcut_answers)
run_wrk sold-out "$sold_out_drop" "$SECONDS_EACH"
shortcut=$(( $(shortcut_answers) - before ))
run_wrk not-found "$sold_out_drop" "$SECONDS_EACH" /api/unknown
sold_out_rate=$(field sold_out_per_s sold-out)
not_found_rate=$(field not_found_per_s not-found)
psql -c "UPDATE dropstock.drops SET ends_at = now() WHERE name LIKE 'bench outside%' AND ends_at IS NULL" >/dev/null
printf '| %s | %s |\n' "measurement (wrk $THREADS threads, $CONNECTIONS connections, ${SECONDS_EACH}s; $(nproc) cores)" "result"
printf '| %s | %s |\n' "---" "---:"
printf '| %s | %.0f |\n' "ceiling: one-insert transactions/s (pgbench, 64 clients)" "$ceiling"
printf '| %s | %s (%sx ceiling) |\n' "adapter: reservations/s (201s)" "$(field holds_per_s)" \
    "$(awk -v a="$(field holds_per_s)" -v c="$ceiling" 'BEGIN { printf "%.2f", a / c }')"
printf '| %s | %s / %s ms |\n' "adapter: latency p50 / p99 (wrk)" "$(field p50_ms)" "$(field p99_ms)"
printf '| %s | %s; %s; %s |\n' "other answers; socket errors; the database's count" "$(field other_answers)" "$(field errors)" "$check"
printf '| %s | %s / %s (%sx) |\n' "sold-out answers/s / 404s/s, the same requests (wrk)" "$sold_out_rate" "$not_found_rate" \
    "$(awk -v a="$sold_out_rate" -v b="$not_found_rate" 'BEGIN { printf "%.2f", a / b }')"
printf '| %s | %s of %s; %s; %s |\n' "sold out: answered by the shortcut; other answers; socket errors" "$shortcut" \
    "$(grep -oP '^ +\K[0-9]+(?= requests in)' "$OUT/outside-sold-out.txt")" \
    "$(field other_answers sold-out)" "$(field errors sold-out)"
[ "${check%% *}" = ok ]
