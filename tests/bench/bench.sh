#!/usr/bin/env bash
# make bench: dropstock through its HTTP adapter on one hot drop, side by side with the one-insert SQL
# ceiling in the same run, then the WebSocket feed under 1,000 and 10,000 watchers, and the disk's commit
# latency. Prints one Markdown table (with the `make bench-sql` rows folded in) on stdout; progress and
# each tool's own report go to stderr, and every report is kept in target/bench/.
#
#   fsync      pg_test_fsync: one 8 kB write + fdatasync, what a commit costs on this disk
#   ceiling    pgbench, 64 clients: a transaction that inserts one row (tests/bench/sql/ceiling.sql)
#   load       dropstock-load, 1,000 keep-alive clients reserving on a drop with more stock than demand,
#              then 5,000 clients
#   sell-out   dropstock-load on a drop that sells out within seconds, then the sold-out answers, then
#              as long of 404s (an unknown path) on the same connections, the adapter's cheapest answer
#   watchers   dropstock-watch throughput: reservations with 1,000 watchers on the hot drop vs. none
#   scale      dropstock-load over 1, 2 and 4 adapters on one database (twice); through one while 4 and 16 listen
#   feed       dropstock-watch delay: 10,000 watchers, commit-to-receipt delay and the adapter's RSS;
#              then 20,000 (as many as the open-file limit allows)
#   socketio   dropstock-watch delay: 1,000 Socket.IO clients beside 1,000 /ws watchers, the delay for
#              each and the adapter's RSS
#
# The adapter runs with its default pool (16 connections): concurrent reservations of one drop are
# batched into reserve_items calls, at most 4 in flight per drop, so a larger pool would not reach the hot
# drop; the rest of the pool serves purchases and the watchers' snapshots. Its per-address rate limit is
# off: every client of the bench comes from 127.0.0.1, where a crowd comes from many addresses.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
export DATABASE_URL=${DATABASE_URL:?DATABASE_URL is not set (make bench sets it)}
ADAPTER=${ADAPTER:-$ROOT/target/release/dropstock-http}
LOAD=${LOAD:-$ROOT/target/release/dropstock-load}
WATCH=${WATCH:-$ROOT/target/release/dropstock-watch}
PORT=${BENCH_PORT:-18080}
POOL_SIZE=${BENCH_POOL_SIZE:-16}
CLIENTS=${BENCH_HTTP_CLIENTS:-1000}
SECONDS_EACH=${BENCH_SECONDS:-10}
WATCHERS=${BENCH_WATCHERS:-10000}
# The crowd rows: 5,000 reserving clients; 20,000 watchers.
CROWD_CLIENTS=${BENCH_CROWD_CLIENTS:-5000}
CROWD_WATCHERS=${BENCH_CROWD_WATCHERS:-20000}
SOCKETIO_CLIENTS=${BENCH_SOCKETIO_CLIENTS:-1000}
FEED_RATE=${BENCH_FEED_RATE:-200}
BENCH_SQL=${BENCH_SQL:-1}
OUT=$ROOT/target/bench
mkdir -p "$OUT"
export DROPSTOCK_URL=http://127.0.0.1:$PORT

say() { echo "bench: $*" >&2; }
for binary in "$ADAPTER" "$LOAD" "$WATCH"; do
    [ -x "$binary" ] || { say "$binary is missing: cargo build --release -p dropstock-http -p dropstock-tests --bins"; exit 1; }
done

# 20,000 watchers are 20,000 sockets in the adapter and as many in dropstock-watch, plus a few hundred
# other files each. The hard limit is raised when the system lets it be (root with CAP_SYS_RESOURCE);
# where it cannot be, the crowd row runs the most watchers the limit allows, and says how many.
needed=$((CROWD_WATCHERS + 256))
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$needed" ]; then
    ulimit -Hn "$needed" 2>/dev/null || true
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$needed" ]; then
    allowed=$(( ($(ulimit -n) - 256) / 500 * 500 ))
    say "the open-file limit is $(ulimit -n) and cannot be raised here: the crowd row runs $allowed watchers, not $CROWD_WATCHERS"
    CROWD_WATCHERS=$allowed
fi
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((WATCHERS + 256)) ]; then
    say "the open-file limit is $(ulimit -n); $WATCHERS watchers need $((WATCHERS + 256)) (raise the hard limit: ulimit -Hn)"
    exit 1
fi

# field NAME FILE: a value from the `result: name=value …` line a load tool printed last.
field() { grep '^result:' "$2" | tail -n 1 | grep -oP "(?<= $1=)\S+"; }

# ---- the make bench-sql table (its own drops and fixtures) ---------------------------------------------------
if [ "$BENCH_SQL" = 1 ]; then
    say "running tests/bench/sql/bench-sql.sh"
    # At drop scale the SQL targets are stricter than the extension's own: >= 6x the replaced pattern,
    # >= 0.4x the one-insert ceiling, and the worker publishing at >= 0.95x of it idle.
    # 6 s a pgbench run (10 s alone), so that the whole table takes under 10 minutes.
    BENCH_SQL_TARGET_BA=6 BENCH_SQL_TARGET_BC=0.4 BENCH_SQL_TARGET_PUBLISHING=0.95 BENCH_SQL_SECONDS=${BENCH_SQL_SECONDS:-6} \
        tests/bench/sql/bench-sql.sh > "$OUT/bench-sql.md"
fi

# ---- the disk ----------------------------------------------------------------------------------------------
say "pg_test_fsync (2 s per method, about 40 s)"
"$PG_BIN/pg_test_fsync" -s 2 -f "$OUT/fsync.tmp" > "$OUT/fsync.txt" 2>&1
rm -f "$OUT/fsync.tmp"
# The first fdatasync line is the one-8kB-write case, what a commit does (wal_sync_method = fdatasync).
read -r fsync_ops fsync_us < <(awk '$1 == "fdatasync" && $3 == "ops/sec" { print $2, $4; exit }' "$OUT/fsync.txt") ||
    { cat "$OUT/fsync.txt" >&2; say "pg_test_fsync gave no fdatasync figure"; exit 1; }

# ---- the adapter ----------------------------------------------------------------------------------------------
# start_adapters N: N adapters on PORT, PORT+1, …, each with its own pool and LISTEN connection;
# `adapter_pid` is the first one's. stop_adapters stops them all.
adapter_pids=()
adapter_pid=
start_adapters() {
    local count=$1 k port
    for k in $(seq 0 $((count - 1))); do
        port=$((PORT + k))
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            say "127.0.0.1:$port is taken (set BENCH_PORT)"; exit 1
        fi
        RUST_LOG=warn DROPSTOCK_RATE_LIMIT_PER_IP=0 "$ADAPTER" --listen "127.0.0.1:$port" --pool-size "$POOL_SIZE" \
            >> "$OUT/adapter.log" 2>&1 &
        adapter_pids+=($!)
    done
    adapter_pid=${adapter_pids[0]}
    # Each adapter up and its feed live (`/healthz` says listening): a watcher connected before that is
    # told to resync, which the feed rows count as a failure.
    for k in $(seq 0 $((count - 1))); do
        port=$((PORT + k))
        for _ in $(seq 100); do
            feed_live "$port" && continue 2
            kill -0 "${adapter_pids[$k]}" 2>/dev/null || { cat "$OUT/adapter.log" >&2; exit 1; }
            sleep 0.1
        done
        say "the adapter on port $port was not up with its feed live within 10 s"; exit 1
    done
}
# feed_live PORT: whether the adapter on PORT answers /healthz with its feed live.
feed_live() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3 && grep -q '"listening":true' <&3) 2>/dev/null
}
start_adapter() { start_adapters 1; }
stop_adapters() {
    local pid
    for pid in "${adapter_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${adapter_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    adapter_pids=()
    adapter_pid=
}
stop_adapter() { stop_adapters; }
# urls N: the first N adapters' base URLs, comma-separated.
urls() { local k; for k in $(seq 0 $(($1 - 1))); do printf '%shttp://127.0.0.1:%s' "$([ "$k" = 0 ] || echo ,)" $((PORT + k)); done; }
trap stop_adapters EXIT
: > "$OUT/adapter.log"

# run NAME TOOL ARGS…: runs a load tool, keeping its report; a failed correctness check stops the bench.
run() {
    local name=$1; shift
    say "$name"
    if ! "$@" > "$OUT/$name.txt"; then
        cat "$OUT/$name.txt" >&2; say "$name failed"; exit 1
    fi
    grep -v '^result:' "$OUT/$name.txt" >&2
}

# ---- ceiling, then the adapter under the same load of the machine --------------------------------------------
say "preparing pgbench fixtures (the first run creates about a million buyers)"
"$PG_BIN/psql" "$DATABASE_URL" -X -q -v ON_ERROR_STOP=1 -v clients=64 -v per_client=4000 -v batch_clients=16 \
    -v batch_per_client=60000 -f tests/bench/sql/setup.sql
say "one-insert ceiling (pgbench, 64 clients, ${SECONDS_EACH}s)"
"$PG_BIN/pgbench" -n -M prepared -c 64 -j 2 -T "$SECONDS_EACH" -D n=0 -f tests/bench/sql/ceiling.sql "$DATABASE_URL" \
    > "$OUT/ceiling.txt" 2>&1 || { cat "$OUT/ceiling.txt" >&2; exit 1; }
ceiling=$(grep -oP 'tps = \K[0-9.]+(?= \(without)' "$OUT/ceiling.txt")

start_adapter
run load "$LOAD" --clients "$CLIENTS" --seconds "$SECONDS_EACH"
rate=$(field holds_per_s "$OUT/load.txt")
# A drop that lasts about two seconds at the rate just measured, then 5 s of sold-out answers and 5 s of 404s.
sell_out_stock=$(awk -v r="$rate" 'BEGIN { s = int(r * 2); print (s < 2000 ? 2000 : s) }')
run sell-out "$LOAD" --clients "$CLIENTS" --sell-out "$sell_out_stock" --sold-out-seconds 5
run crowd "$LOAD" --clients "$CROWD_CLIENTS" --seconds 5
run watchers "$WATCH" throughput --watchers 1000 --clients "$CLIENTS" --round-seconds 4 --pairs 3
stop_adapter

# ---- more than one adapter on one database ---------------------------------------------------------------------
# The same load spread over 1, 2 and 4 adapters, twice, in the order 1, 2, 4, 4, 2, 1 (a drift of the
# machine's speed during the rows then hits each count alike; one pass moved the 2-adapter ratio from
# 0.87x to 0.97x between runs); then through one adapter while 4 and 16 adapters LISTEN, for what each
# LISTEN connection costs the database. SCALE_SECONDS each, so the rows compare.
SCALE_SECONDS=${BENCH_SCALE_SECONDS:-5}
for round in 1-a 2-a 4-a 4-b 2-b 1-b; do
    count=${round%-*}
    start_adapters "$count"
    run "scale-$round" "$LOAD" --url "$(urls "$count")" --clients "$CLIENTS" --seconds "$SCALE_SECONDS" --quiet
    stop_adapters
done
for count in 4 16; do
    start_adapters "$count"
    run "listen-$count" "$LOAD" --url "$(urls 1)" --clients "$CLIENTS" --seconds "$SCALE_SECONDS" --quiet
    stop_adapters
done

# A fresh adapter for the feed, so its RSS is the watchers' and not what the reservation bursts left behind.
start_adapter
run feed "$WATCH" delay --clients "$WATCHERS" --seconds "$SECONDS_EACH" --rate "$FEED_RATE" --adapter-pid "$adapter_pid"
stop_adapter
start_adapter
run socketio "$WATCH" delay --clients 1000 --socketio-clients "$SOCKETIO_CLIENTS" --seconds "$SECONDS_EACH" \
    --rate "$FEED_RATE" --adapter-pid "$adapter_pid"
stop_adapter
start_adapter
run feed-crowd "$WATCH" delay --clients "$CROWD_WATCHERS" --seconds "$SECONDS_EACH" --rate "$FEED_RATE" \
    --adapter-pid "$adapter_pid"
stop_adapter

# ---- the table ---------------------------------------------------------------------------------------------
verdict() { awk -v ok="$1" 'BEGIN { print (ok ? "met" : "**not met**") }'; }
load_p99=$(field p99_ms "$OUT/load.txt")
oversold=$(( $(field oversold "$OUT/load.txt") + $(field oversold "$OUT/sell-out.txt") + $(field oversold "$OUT/crowd.txt") ))
sold_out=$(field sold_out_per_s "$OUT/sell-out.txt")
not_found=$(field not_found_per_s "$OUT/sell-out.txt")
sell_rate=$(field holds_per_s "$OUT/sell-out.txt")
early=$(field early_sold_out "$OUT/sell-out.txt")
watch_ratio=$(field ratio "$OUT/watchers.txt")
feed_p99=$(field p99_ms "$OUT/feed.txt")
feed_p50=$(field p50_ms "$OUT/feed.txt")
feed_missed=$(field missed "$OUT/feed.txt")
rss=$(field rss_peak_mib "$OUT/feed.txt")
rss_idle=$(field rss_idle_mib "$OUT/feed.txt")
sio_p99=$(field sio_p99_ms "$OUT/socketio.txt")
sio_ws_p99=$(field p99_ms "$OUT/socketio.txt")
sio_missed=$(( $(field sio_missed "$OUT/socketio.txt") + $(field missed "$OUT/socketio.txt") ))
x() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { print (a >= b) }'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { print (a <= b) }'; }
int() { awk -v a="$1" 'BEGIN { printf "%d", a + 0.5 }'; }

row() { printf '| %s | %s | %s | %s |\n' "$@"; }
row "measurement (one run, $(nproc) cores, synchronous_commit on)" "result" "target" "verdict"
row "---" "---:" "---" "---"
if [ "$BENCH_SQL" = 1 ]; then
    # bench-sql's rows, each with its target (written into its label) moved to the target column.
    tail -n +3 "$OUT/bench-sql.md" | while IFS='|' read -r _ label value _; do
        label=$(sed 's/ *$//; s/^ *//' <<<"$label"); value=$(tr -d ' ' <<<"$value")
        target=$(grep -oP '\(target \K[^)]+' <<<"$label" || true)
        label=$(sed 's/ *(target [^)]*)//' <<<"$label")
        met=""
        if [ -n "$target" ]; then
            met=$(verdict "$(awk -v t="$target" -v v="$value" 'BEGIN {
                split(t, part, " "); gsub(/[^0-9.]/, "", part[2]); gsub(/[^0-9.]/, "", v)
                print (part[1] == ">=" ? v + 0 >= part[2] + 0 : v + 0 <= part[2] + 0) }')")
        fi
        row "SQL (bench-sql): $label" "$value" "${target:-}" "$met"
    done
fi
row "disk: one 8 kB write + fdatasync (pg_test_fsync)" "$(awk -v u="$fsync_us" 'BEGIN { printf "%.2f ms", u / 1000 }') ($(int "$fsync_ops")/s)" "" ""
row "ceiling: one-insert transactions/s (pgbench, 64 clients)" "$(int "$ceiling")" "" ""
row "adapter, $CLIENTS clients, one hot drop: reservations/s" "$(int "$rate") ($(x "$rate" "$ceiling")x ceiling)" ">= 1.5x ceiling" "$(verdict "$(ge "$(x "$rate" "$ceiling")" 1.5)")"
row "adapter, $CLIENTS clients: reservation latency p50 / p95 / p99" "$(field p50_ms "$OUT/load.txt") / $(field p95_ms "$OUT/load.txt") / $load_p99 ms" "p99 <= 100 ms" "$(verdict "$(le "$load_p99" 100)")"
crowd_p99=$(field p99_ms "$OUT/crowd.txt"); crowd_errors=$(field errors "$OUT/crowd.txt")
row "adapter, $(int "$CROWD_CLIENTS") clients: reservations/s; latency p50 / p99; requests that failed" "$(field holds_per_s "$OUT/crowd.txt"); $(field p50_ms "$OUT/crowd.txt") / $crowd_p99 ms; $crowd_errors" "p99 <= 250 ms, none failed" "$(verdict "$(awk -v p="$crowd_p99" -v e="$crowd_errors" 'BEGIN { print (p <= 250 && e == 0) }')")"
row "adapter: units oversold (all three runs, checked in the database)" "$oversold" "0" "$(verdict "$([ "$oversold" = 0 ] && echo 1 || echo 0)")"
row "adapter: sold-out answers/s after a sell-out / 404s/s on the same connections right after" "$(int "$sold_out") / $(int "$not_found") ($(x "$sold_out" "$not_found")x)" ">= 0.8x the 404s" "$(verdict "$(ge "$(x "$sold_out" "$not_found")" 0.8)")"
row "adapter: reservations/s while selling out $(int "$sell_out_stock") units; sold-out answers that arrived before the last unit's 201" "$(int "$sell_rate"); $early" "" ""
# scale COUNT: the mean of COUNT adapters' two rounds.
scale() { awk -v a="$(field holds_per_s "$OUT/scale-$1-a.txt")" -v b="$(field holds_per_s "$OUT/scale-$1-b.txt")" 'BEGIN { print (a + b) / 2 }'; }
scale_1=$(scale 1); scale_2=$(scale 2); scale_4=$(scale 4)
scale_least=$(awk -v a="$scale_2" -v b="$scale_4" 'BEGIN { print (a < b ? a : b) }')
row "1 / 2 / 4 adapters on one database, $CLIENTS clients spread over them: reservations/s (${SCALE_SECONDS} s each, twice: 1, 2, 4, 4, 2, 1)" "$(int "$scale_1") / $(int "$scale_2") / $(int "$scale_4") ($(x "$scale_2" "$scale_1")x, $(x "$scale_4" "$scale_1")x)" ">= 1.0x one adapter" "$(verdict "$(ge "$(x "$scale_least" "$scale_1")" 1.0)")"
listen_4=$(field holds_per_s "$OUT/listen-4.txt"); listen_16=$(field holds_per_s "$OUT/listen-16.txt")
row "reservations/s through one adapter with 1 / 4 / 16 adapters listening (what a LISTEN connection costs)" "$(int "$scale_1") / $(int "$listen_4") / $(int "$listen_16") ($(x "$listen_4" "$scale_1")x, $(x "$listen_16" "$scale_1")x)" "" ""
row "adapter: reservations/s with 1,000 watchers / with none (3 rounds each, alternating)" "$(field watched_per_s "$OUT/watchers.txt") / $(field none_per_s "$OUT/watchers.txt") (${watch_ratio}x)" ">= 0.9x" "$(verdict "$(ge "$watch_ratio" 0.9)")"
row "$(int "$WATCHERS") watchers: commit to receipt, p50 / p99 ($FEED_RATE holds/s; $feed_missed missed)" "$feed_p50 / $feed_p99 ms" "p50 <= 20 ms, p99 <= 100 ms, none missed" "$(verdict "$(awk -v a="$feed_p50" -v p="$feed_p99" -v m="$feed_missed" 'BEGIN { print (a <= 20 && p <= 100 && m == 0) }')")"
row "$(int "$WATCHERS") watchers, of which: commit to the first watcher p99 (worker tick, NOTIFY, relay) / first to last watcher p99 (fan-out)" "$(field first_p99_ms "$OUT/feed.txt") / $(field fan_out_p99_ms "$OUT/feed.txt") ms" "" ""
row "$(int "$WATCHERS") watchers: adapter peak RSS (idle before: $rss_idle MiB)" "$rss MiB" "<= 200 MB" "$(verdict "$(le "$(awk -v m="$rss" 'BEGIN { print m * 1048576 / 1e6 }')" 200)")"
row "$(int "$SOCKETIO_CLIENTS") Socket.IO clients beside 1,000 /ws watchers: commit to receipt p50 / p99, Socket.IO; /ws ($FEED_RATE holds/s; $sio_missed missed)" "$(field sio_p50_ms "$OUT/socketio.txt") / $sio_p99 ms; $(field p50_ms "$OUT/socketio.txt") / $sio_ws_p99 ms" "p99 <= 250 ms for both, none missed" "$(verdict "$(awk -v a="$sio_p99" -v b="$sio_ws_p99" -v m="$sio_missed" 'BEGIN { print (a <= 250 && b <= 250 && m == 0) }')")"
crowd_feed_p99=$(field p99_ms "$OUT/feed-crowd.txt"); crowd_feed_missed=$(field missed "$OUT/feed-crowd.txt")
crowd_rss=$(field rss_peak_mib "$OUT/feed-crowd.txt")
row "$(int "$CROWD_WATCHERS") watchers on one adapter: commit to receipt, p50 / p99 ($FEED_RATE holds/s; $crowd_feed_missed missed)" "$(field p50_ms "$OUT/feed-crowd.txt") / $crowd_feed_p99 ms" "p99 <= 250 ms, none missed" "$(verdict "$(awk -v p="$crowd_feed_p99" -v m="$crowd_feed_missed" 'BEGIN { print (p <= 250 && m == 0) }')")"
row "$(int "$CROWD_WATCHERS") watchers: adapter peak RSS (idle before: $(field rss_idle_mib "$OUT/feed-crowd.txt") MiB)" "$crowd_rss MiB" "<= 200 MB" "$(verdict "$(le "$(awk -v m="$crowd_rss" 'BEGIN { print m * 1048576 / 1e6 }')" 200)")"
row "$(int "$SOCKETIO_CLIENTS") Socket.IO clients + 1,000 /ws watchers: adapter peak RSS (idle before: $(field rss_idle_mib "$OUT/socketio.txt") MiB)" "$(field rss_peak_mib "$OUT/socketio.txt") MiB" "" ""
say "done: the measurements took $((SECONDS / 60)) min $((SECONDS % 60)) s (builds before them not counted)"
