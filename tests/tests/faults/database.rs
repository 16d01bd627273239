//! The database misbehaving under a running adapter without going away: the extension dropped and
//! created again, a call stuck behind a lock nobody releases, backends that stop answering (SIGSTOP), and
//! a LISTEN connection that cannot be made at start-up. The adapter recovers by itself or answers 503
//! within its deadline, never 500 and never a hang, and feed clients always know whether the feed is live.

use std::process::Command;
use std::time::{Duration, Instant};

use dropstock_tests::adapter::{id, Adapter, Options};
use dropstock_tests::db::{connect, unique, wait_until};
use dropstock_tests::faults::terminate_listen_backends;
use dropstock_tests::figures::record;
use serde_json::{json, Value};

/// Resumes the stopped backends however the test ends: a stopped backend left behind would hang every
/// later test that needs what it holds.
struct ContinueOnDrop(Vec<i32>);

impl Drop for ContinueOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(pid.to_string())
                .status();
        }
    }
}

/// Every REST call the adapter makes, once; the statuses.
async fn every_call(adapter: &Adapter) -> Vec<(String, u16)> {
    let mut statuses = Vec::new();
    let (status, drop) = adapter
        .post_as(
            "/api/drops",
            dropstock_tests::adapter::ADMIN_TOKEN,
            json!({"name": unique("recreated"), "price": 5, "totalStock": 4}),
        )
        .await;
    statuses.push(("create drop".to_owned(), status));
    let drop = id(&drop["data"]);
    let (status, buyer) = adapter
        .post("/api/users", json!({"username": unique("buyer")}))
        .await;
    statuses.push(("create buyer".to_owned(), status));
    let buyer = id(&buyer["data"]);
    for (what, path) in [
        ("list drops", "/api/drops".to_owned()),
        ("one drop", format!("/api/drops/{drop}")),
        ("health", "/healthz".to_owned()),
    ] {
        statuses.push((what.to_owned(), adapter.get(&path).await.0));
    }
    let (status, hold) = adapter.reserve(&drop, &buyer).await;
    statuses.push(("reserve".to_owned(), status));
    let (status, _) = adapter
        .post(
            "/api/purchases",
            json!({"userId": buyer, "reservationId": id(&hold["data"])}),
        )
        .await;
    statuses.push(("purchase".to_owned(), status));
    let other = adapter.new_buyer().await;
    let (_, hold) = adapter.reserve(&drop, &other).await;
    let (status, _) = adapter
        .post(
            &format!("/api/reservations/{}/cancel", id(&hold["data"])),
            json!({"userId": other}),
        )
        .await;
    statuses.push(("cancel".to_owned(), status));
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extension_created_again_under_a_running_adapter_is_served_without_errors() {
    let adapter = Adapter::start().await;
    // Every statement prepared, on as many pooled connections as a few rounds use.
    for _ in 0..3 {
        every_call(&adapter).await;
    }
    let db = connect().await;
    // DROP EXTENSION takes the extension's tables one by one while the worker's sweep may hold one and
    // want another; the deadlock detector then cancels the DROP (40P01), and it is made again. That is
    // the setting up of this test, not what it checks.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match db
            .batch_execute(
                "SET client_min_messages = warning; DROP EXTENSION dropstock CASCADE; CREATE EXTENSION dropstock",
            )
            .await
        {
            Ok(()) => break,
            Err(error)
                if attempts < 5
                    && error.code() == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) => {}
            Err(error) => panic!("DROP/CREATE EXTENSION: {error}"),
        }
    }
    let mut rounds = 0;
    for _ in 0..5 {
        let statuses = every_call(&adapter).await;
        let wrong: Vec<_> = statuses
            .iter()
            .filter(|(what, status)| {
                let expected = match what.as_str() {
                    "create drop" | "create buyer" | "reserve" => 201,
                    _ => 200,
                };
                *status != expected
            })
            .collect();
        assert!(wrong.is_empty(), "after CREATE EXTENSION again: {wrong:?}");
        rounds += 1;
    }
    record(
        "db 1 extension created again",
        &format!("DROP/CREATE EXTENSION under a running adapter: {rounds} rounds of every call answered as before, no 500"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_database_is_answered_with_503_within_the_deadline() {
    let adapter =
        Adapter::start_with(Options::admin().with("DROPSTOCK_DB_TIMEOUT_SECONDS", "1")).await;
    let drop = adapter.open_drop(10).await;
    let buyer = adapter.new_buyer().await;
    // A server-side deadline of 1 s and the adapter's own 1 s later: 503 well within 6 s.
    let bound = Duration::from_secs(6);

    // A lock nobody releases: the server cancels the call (statement_timeout).
    let mut locker = connect().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE dropstock.drops IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    // Both at once, so each waits on a connection of its own: the pool keeps two, which the part with
    // stopped backends below needs (a read and a reservation, each on a stopped connection).
    let started = Instant::now();
    let ((list, _), (reserve, answer)) =
        tokio::join!(adapter.get("/api/drops"), adapter.reserve(&drop, &buyer));
    let locked_for = started.elapsed();
    assert_eq!(list, 503);
    assert_eq!(reserve, 503, "{answer}");
    assert!(
        locked_for < bound * 2,
        "two calls behind a lock took {locked_for:?}"
    );
    lock.rollback().await.unwrap();
    let (status, answer) = adapter.reserve(&drop, &buyer).await;
    assert_eq!(status, 201, "served again once the lock is gone: {answer}");

    // Backends that stop answering altogether (SIGSTOP): only the adapter's own deadline helps.
    let late_buyer = adapter.new_buyer().await;
    let db = connect().await;
    let pids: Vec<i32> = db
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'dropstock-http'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(!pids.is_empty(), "the adapter has pooled connections");
    let stopped = ContinueOnDrop(pids);
    for pid in &stopped.0 {
        let status = Command::new("kill")
            .arg("-STOP")
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }
    let started = Instant::now();
    let (status, answer) = adapter.get(&format!("/api/drops/{drop}")).await;
    let stalled_for = started.elapsed();
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["code"], "unavailable");
    assert!(
        stalled_for < bound,
        "a stopped backend held the request {stalled_for:?}"
    );
    // A reservation too, though its batch runs in a transaction of its own: the connection left inside
    // it is closed, not pooled, and the buyers are answered within the same deadline.
    let started = Instant::now();
    let (status, answer) = adapter.reserve(&drop, &late_buyer).await;
    let reserve_stalled_for = started.elapsed();
    assert_eq!(status, 503, "{answer}");
    assert!(
        reserve_stalled_for < bound,
        "a stopped backend held the reservation {reserve_stalled_for:?}"
    );
    std::mem::drop(stopped);
    // The connection that did not answer was closed, not handed to the next request.
    let served = wait_until(Duration::from_secs(10), || async {
        adapter.get(&format!("/api/drops/{drop}")).await.0 == 200
    })
    .await;
    assert!(served, "the adapter serves again once the backends resume");
    let (status, answer) = adapter.reserve(&drop, &late_buyer).await;
    assert_eq!(status, 201, "a reservation is served again too: {answer}");
    record(
        "db 2 stalled database",
        &format!(
            "a lock held open: two calls answered 503 in {:.1} s; a stopped backend (SIGSTOP): 503 in {:.1} s \
             for a read and {:.1} s for a reservation (deadline 1 s + 1 s); served again afterwards",
            locked_for.as_secs_f64(),
            stalled_for.as_secs_f64(),
            reserve_stalled_for.as_secs_f64()
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_served_before_the_first_listen_are_told_to_resync() {
    // Nothing may LISTEN while this runs: every LISTEN backend is terminated as soon as it appears.
    let killer_db = connect().await;
    let (stop_killing, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let killer = tokio::spawn(async move {
        loop {
            terminate_listen_backends(&killer_db).await;
            tokio::select! {
                _ = &mut stopped => return,
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    });
    let adapter = Adapter::start().await;
    let drop = adapter.open_drop(5).await;

    // A client whose snapshot says the feed is not live (LISTEN keeps failing).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut feed = loop {
        let mut client = adapter.ws(&format!("?drop={drop}")).await;
        if client.snapshot().await["live"] == false {
            break client;
        }
        assert!(
            Instant::now() < deadline,
            "a snapshot taken while LISTEN fails says live: false"
        );
    };

    let _ = stop_killing.send(());
    killer.await.unwrap();
    let resumed = Instant::now();
    // Every LISTEN backend the killer signalled is gone, but the adapter may have announced one of them
    // (a resync) just before it died: the hold below must wait for a LISTEN that lives, or its notice
    // can fall between two connections (the client is then told to resync, rightly, not shown it).
    let db = connect().await;
    let listening = wait_until(Duration::from_secs(20), || async {
        db.query_one(
            "SELECT count(*) FROM pg_stat_activity
              WHERE application_name = 'dropstock-http-listen' AND state = 'idle' AND query <> ''",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
            == 1
    })
    .await;
    assert!(listening, "the adapter LISTENs again once nothing kills it");
    feed.expect(
        Duration::from_secs(20),
        "a resync once LISTEN works",
        |m: &Value| m["type"] == "resync",
    )
    .await;
    let resync_after = resumed.elapsed();
    // And the feed is live from then on.
    let buyer = adapter.new_buyer().await;
    let (status, _) = adapter.reserve(&drop, &buyer).await;
    assert_eq!(status, 201);
    feed.expect(
        Duration::from_secs(10),
        "the hold's stock change",
        |m: &Value| m["type"] == "stock" && m["availableStock"] == 4,
    )
    .await;
    // Losing LISTEN later is said too.
    assert!(terminate_listen_backends(&db).await > 0);
    feed.expect(
        Duration::from_secs(10),
        "paused when LISTEN is lost",
        |m: &Value| m["type"] == "paused",
    )
    .await;
    feed.expect(
        Duration::from_secs(20),
        "resync when it is back",
        |m: &Value| m["type"] == "resync",
    )
    .await;
    record(
        "db 3 listen failing at start-up",
        &format!(
            "LISTEN refused at start-up: snapshots said live: false; resync {:.1} s after LISTEN worked, then live \
             stock; a lost LISTEN said paused, then resync",
            resync_after.as_secs_f64()
        ),
    );
}
