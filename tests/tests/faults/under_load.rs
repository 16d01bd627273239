//! Faults under load: while honest buyers reserve and buy through a real adapter, PostgreSQL is killed and
//! started again, the background worker is killed, the adapter's LISTEN backend is killed, and the adapter
//! itself is restarted. After each, every sale a buyer was told about is in the database, no hold is
//! doubled, nothing is oversold, and the adapter answered (503 rather than hanging) throughout.
//!
//! These tests stop the cluster they run against: `DROPSTOCK_PGDATA` names its data directory and
//! `DATABASE_URL` its address (`make test` runs them against its throwaway test cluster, never the one
//! `make run` uses). Without `DROPSTOCK_PGDATA` they fail with a message saying so.

use std::time::{Duration, Instant};

use dropstock_tests::adapter::{assert_refused, read, Adapter, Options};
use dropstock_tests::db::{
    assert_invariant, connect, new_buyer_ids, new_buyers, new_drop, stock, wait_until,
};
use dropstock_tests::faults::{
    terminate, terminate_listen_backends, worker_pid, Cluster, StartOnDrop,
};
use dropstock_tests::figures::record;
use dropstock_tests::shoppers::{audit, roomy_drop, Load, Tally, REQUEST_TIMEOUT};
use serde_json::Value;
use uuid::Uuid;

/// The tests take turns: each one stops or kills something every other one depends on.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const BUYERS: usize = 1600;
const CLIENTS: usize = 16;

async fn sales_of(drop: &str) -> i64 {
    let db = connect().await;
    db.query_one(
        "SELECT count(*) FROM dropstock.purchases WHERE drop_id = $1",
        &[&Uuid::parse_str(drop).unwrap()],
    )
    .await
    .unwrap()
    .get(0)
}

/// Waits until the load has sold `more` units beyond `from`, so each phase of a test really ran under load.
async fn until_sold(drop: &str, from: i64, more: i64, within: Duration) -> i64 {
    let deadline = Instant::now() + within;
    loop {
        let sold = sales_of(drop).await;
        if sold >= from + more {
            return sold;
        }
        assert!(
            Instant::now() < deadline,
            "the load sold {} of {more} units within {within:?}",
            sold - from
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The load's outcome checked against the rows; the figures line for the suite.
async fn check(key: &str, fault: &str, drop: &str, tally: &Tally, extra: &str) {
    let db = connect().await;
    let verdict = audit(&db, drop, tally).await;
    assert_invariant(&db, Uuid::parse_str(drop).unwrap()).await;
    record(
        key,
        &format!(
            "{} requests under load, 1 fault injected ({fault}), {} sales told, {} purchases lost, \
             {} holds lost, {} oversold units, {} doubled, {} answered 503, {} without answer, \
             {} answered 429, slowest answer {:.1} s{extra}",
            tally.requests,
            tally.sales.len(),
            verdict.purchases_lost,
            verdict.holds_lost,
            verdict.oversold,
            verdict.doubled,
            tally.count(503),
            tally.transport_errors,
            tally.count(429),
            tally.slowest.as_secs_f64(),
        ),
    );
    verdict.assert_sound(tally);
    assert!(
        tally.unexpected.is_empty(),
        "unexpected answers under load: {:?}",
        tally.unexpected
    );
    assert_eq!(tally.count(429), 0, "honest buyers were rate limited");
    assert_eq!(tally.count(500), 0, "a fault became a 500");
    assert_eq!(tally.timeouts, 0, "a request hung for {REQUEST_TIMEOUT:?}");
    assert!(!tally.sales.is_empty());
}

fn is_resync(message: &Value) -> bool {
    message["type"] == "resync"
}

/// A request while the database is down: answered 503 with the JSON envelope, well within the client's
/// timeout.
async fn answers_503(
    http: &reqwest::Client,
    request: reqwest::RequestBuilder,
    what: &str,
) -> Duration {
    let _ = http;
    let started = Instant::now();
    let response = request
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what} got no answer while the database was down: {e}"));
    let elapsed = started.elapsed();
    let answer = read(response).await;
    assert_refused(&answer, 503, "unavailable", "");
    elapsed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_immediate_postgres_stop_under_load_loses_no_sale() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::from_env();
    let adapter = Adapter::start_with(Options::admin().process()).await;
    adapter.wait_listening().await;
    let drop_id = roomy_drop(&adapter).await;
    let buyers = new_buyer_ids(&connect().await, BUYERS).await;
    let mut feed = adapter.ws(&format!("?drop={drop_id}")).await;
    feed.snapshot().await;
    let load = Load::start(&adapter.base, &drop_id, buyers, CLIENTS);
    let before = until_sold(&drop_id, 0, 100, Duration::from_secs(20)).await;

    let mut guard = StartOnDrop {
        cluster: &cluster,
        down: true,
    };
    cluster.stop_immediately();
    let stopped = Instant::now();
    let http = adapter.http();
    let mut slowest = Duration::ZERO;
    // At least two seconds down, with the load still running against it.
    while stopped.elapsed() < Duration::from_secs(2) {
        let drop_path = adapter.url(&format!("/api/drops/{drop_id}"));
        slowest = slowest
            .max(answers_503(http, http.get(adapter.url("/api/drops")), "GET /api/drops").await);
        slowest = slowest.max(answers_503(http, http.get(drop_path), "GET /api/drops/{id}").await);
        slowest =
            slowest.max(answers_503(http, http.get(adapter.url("/healthz")), "GET /healthz").await);
        let body = serde_json::json!({"dropId": drop_id, "userId": Uuid::new_v4().to_string()});
        slowest = slowest.max(
            answers_503(
                http,
                http.post(adapter.url("/api/reservations")).json(&body),
                "POST /api/reservations",
            )
            .await,
        );
    }
    let down_for = stopped.elapsed();
    cluster.start();
    guard.down = false;
    let restarted = Instant::now();

    // The adapter comes back by itself, the feed says what it may have missed, and live changes resume.
    let recovered = wait_until(Duration::from_secs(30), || async {
        matches!(http.get(adapter.url("/api/drops")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    assert!(
        recovered,
        "the adapter did not recover within 30 s; log:\n{}",
        adapter.log()
    );
    let recovered_after = restarted.elapsed();
    feed.expect(
        Duration::from_secs(30),
        "a resync after the restart",
        is_resync,
    )
    .await;
    let resync_after = restarted.elapsed();
    feed.expect(
        Duration::from_secs(10),
        "live stock after the resync",
        |m| m["type"] == "stock" && m["dropId"] == drop_id.as_str(),
    )
    .await;
    until_sold(&drop_id, before, 100, Duration::from_secs(30)).await;
    let tally = load.finish().await;

    check(
        "faults 1 postgres stop",
        "pg_ctl -m immediate stop, start",
        &drop_id,
        &tally,
        &format!(
            ", down {:.1} s, slowest 503 while down {:.2} s, serving again {:.1} s and resync {:.1} s after the start",
            down_for.as_secs_f64(),
            slowest.as_secs_f64(),
            recovered_after.as_secs_f64(),
            resync_after.as_secs_f64()
        ),
    )
    .await;
    assert!(tally.count(503) > 0, "the load saw the database go away");
    assert!(slowest < Duration::from_secs(6), "a 503 took {slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_comes_back_under_load_and_due_holds_still_return() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let adapter = Adapter::start_with(Options::admin().process()).await;
    let drop_id = roomy_drop(&adapter).await;
    let db = connect().await;
    let buyers = new_buyer_ids(&db, BUYERS).await;
    let load = Load::start(&adapter.base, &drop_id, buyers, CLIENTS);
    until_sold(&drop_id, 0, 100, Duration::from_secs(20)).await;

    // Forty one-second holds on a drop nobody else touches: only the worker can give their units back.
    let lapsing = new_drop(&db, 40, 1).await;
    let holders = new_buyers(&db, 40).await;
    db.execute(
        "SELECT dropstock.reserve_items($1, $2)",
        &[&lapsing, &holders],
    )
    .await
    .unwrap();
    let old = worker_pid(&db)
        .await
        .expect("the worker runs (shared_preload_libraries = 'dropstock')");
    let killed_at = Instant::now();
    terminate(&db, old).await;
    assert_eq!(
        stock(&db, lapsing).await.0,
        0,
        "the holds were still live when the worker died"
    );
    let back = wait_until(Duration::from_secs(15), || async {
        matches!(worker_pid(&db).await, Some(pid) if pid != old)
    })
    .await;
    assert!(back, "no worker replaced pid {old} within 15 s");
    let back_after = killed_at.elapsed();
    let returned = wait_until(Duration::from_secs(15), || async {
        stock(&db, lapsing).await == (40, 0, 0)
    })
    .await;
    assert!(
        returned,
        "due holds were not returned after the worker came back: {:?}",
        stock(&db, lapsing).await
    );
    let returned_after = killed_at.elapsed();
    let expired: i64 = db
        .query_one(
            "SELECT count(*) FROM dropstock.reservations WHERE drop_id = $1 AND status = 'expired'",
            &[&lapsing],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(expired, 40, "the worker ended every due hold");
    assert_invariant(&db, lapsing).await;
    let tally = load.finish().await;
    check(
        "faults 2 worker killed",
        "pg_terminate_backend on the worker",
        &drop_id,
        &tally,
        &format!(
            ", worker back {:.1} s and 40 due holds returned {:.1} s after the kill",
            back_after.as_secs_f64(),
            returned_after.as_secs_f64()
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_listen_backend_means_resync_and_live_updates_resume() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let adapter = Adapter::start_with(Options::admin().process()).await;
    adapter.wait_listening().await;
    let drop_id = roomy_drop(&adapter).await;
    let db = connect().await;
    let buyers = new_buyer_ids(&db, BUYERS).await;
    let mut feed = adapter.ws(&format!("?drop={drop_id}")).await;
    feed.snapshot().await;
    let load = Load::start(&adapter.base, &drop_id, buyers, CLIENTS);
    let before = until_sold(&drop_id, 0, 100, Duration::from_secs(20)).await;
    let is_stock = |m: &Value| m["type"] == "stock" && m["dropId"] == drop_id.as_str();
    let last = feed
        .expect(Duration::from_secs(10), "live stock under load", is_stock)
        .await;

    let killed = terminate_listen_backends(&db).await;
    assert!(killed > 0, "found the adapter's LISTEN backend");
    let killed_at = Instant::now();
    feed.expect(Duration::from_secs(15), "a resync", is_resync)
        .await;
    let resync_after = killed_at.elapsed();
    let next = feed
        .expect(
            Duration::from_secs(10),
            "live stock after the resync",
            is_stock,
        )
        .await;
    assert!(
        next["seq"].as_i64() > last["seq"].as_i64(),
        "the feed moves on: {last} then {next}"
    );
    until_sold(&drop_id, before, 100, Duration::from_secs(20)).await;
    let tally = load.finish().await;
    check(
        "faults 3 listen killed",
        "pg_terminate_backend on the LISTEN connection",
        &drop_id,
        &tally,
        &format!(
            ", resync {:.1} s after the kill",
            resync_after.as_secs_f64()
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarting_the_adapter_under_load_loses_and_doubles_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut first = Adapter::start_with(Options::admin().process()).await;
    let drop_id = roomy_drop(&first).await;
    let buyers = new_buyer_ids(&connect().await, BUYERS).await;
    let load = Load::start(&first.base, &drop_id, buyers, CLIENTS);
    let before = until_sold(&drop_id, 0, 100, Duration::from_secs(20)).await;

    first.terminate();
    let stopped = Instant::now();
    let status = first.wait_exit(Duration::from_secs(15)).await;
    assert!(
        status.success(),
        "the adapter drains and exits cleanly: {status:?}"
    );
    let second = Adapter::start_with(Options::admin().process()).await;
    load.point_at(&second.base);
    let gap = stopped.elapsed();
    until_sold(&drop_id, before, 100, Duration::from_secs(30)).await;
    let tally = load.finish().await;
    check(
        "faults 4 adapter restart",
        "SIGTERM to the adapter, a new one started",
        &drop_id,
        &tally,
        &format!(", {:.1} s without an adapter", gap.as_secs_f64()),
    )
    .await;
}
