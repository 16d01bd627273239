//! The background worker against the real cluster (`make db` preloads the library): holds come back
//! on time without anyone sweeping, changes are published with a real LISTEN as soon as they commit
//! but coalesced under load, and the worker survives being killed.

use dropstock_tests::db::*;
use dropstock_tests::faults::{terminate, worker_pid};
use std::time::Duration;
use uuid::Uuid;

/// Holds of one second come back by themselves, within half a second of running out (tick: 100 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_holds_come_back_without_anyone_sweeping() {
    let db = connect().await;
    let drop = new_drop(&db, 3, 1).await;
    for buyer in new_buyers(&db, 3).await {
        db.execute("SELECT dropstock.reserve_item($1, $2)", &[&drop, &buyer])
            .await
            .unwrap();
    }
    assert_eq!(stock(&db, drop).await.0, 0);

    // Poll the database clock until all three units are back, and note how late that was.
    let back = wait_until(Duration::from_secs(10), || async {
        stock(&db, drop).await.0 == 3
    })
    .await;
    assert!(back, "the worker returned the stock of due holds");
    let late: f64 = db
        .query_one(
            "SELECT extract(epoch FROM clock_timestamp() - max(expires_at))::float8
               FROM dropstock.reservations WHERE drop_id = $1",
            &[&drop],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        late < 0.5,
        "stock was back {late:.3}s after the last hold ran out"
    );
    let expired: i64 = db
        .query_one(
            "SELECT count(*) FROM dropstock.reservations WHERE drop_id = $1 AND status = 'expired'",
            &[&drop],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(expired, 3);
    assert_invariant(&db, drop).await;
}

/// 500 holds taken as fast as 50 connections can: a handful of notifications, not 500, and the last
/// one carries the stock the table holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_holds_is_published_as_a_few_notifications() {
    let setup = connect().await;
    // Listening before the drop exists: the worker may announce it as soon as it is committed.
    let mut listener = listen().await;
    let drop = new_drop(&setup, 1000, 60).await;
    // The new drop is announced first; start counting after that.
    listener
        .next_for(drop, Duration::from_secs(5))
        .await
        .expect("the new drop is announced");

    let buyers = new_buyers(&setup, 500).await;
    let lanes = connect_many(50).await;
    let burst = std::time::Instant::now();
    let calls = lanes.iter().enumerate().map(|(lane, db)| {
        let mine: Vec<Uuid> = buyers.iter().skip(lane).step_by(50).copied().collect();
        async move {
            for buyer in mine {
                db.execute("SELECT dropstock.reserve_item($1, $2)", &[&drop, &buyer])
                    .await
                    .unwrap();
            }
        }
    });
    futures_util::future::join_all(calls).await;
    let burst = burst.elapsed();

    let mut notes = Vec::new();
    let mut last_seq = 1;
    while let Some(note) = listener.next_for(drop, Duration::from_millis(800)).await {
        let seq = note["seq"].as_i64().unwrap();
        assert!(seq > last_seq, "seq rises: {seq} after {last_seq}");
        last_seq = seq;
        notes.push(note);
        if notes.last().unwrap()["availableStock"] == 500 {
            break;
        }
    }
    assert!(!notes.is_empty(), "the holds were published");
    // Commits wake the worker, but ticks start at least 50 ms apart: at most one notification per
    // 50 ms of the burst (and a few around it), never one per hold.
    let most = (burst.as_millis() / 50) as usize + 5;
    assert!(
        notes.len() <= most.min(250),
        "500 holds in {burst:?} gave {} notifications",
        notes.len()
    );
    let last = notes.last().unwrap();
    assert_eq!(
        last["availableStock"].as_i64(),
        Some(stock(&setup, drop).await.0 as i64)
    );
    assert_eq!(last["totalStock"], 1000);
}

/// A sale shows up in the next notification, with the buyer's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_is_published_with_the_buyers_name() {
    let db = connect().await;
    // Listening before the drop exists: the worker may announce it as soon as it is committed.
    let mut listener = listen().await;
    let drop = new_drop(&db, 5, 60).await;
    listener
        .next_for(drop, Duration::from_secs(5))
        .await
        .expect("the new drop is announced");

    let name = unique("buyer");
    let buyer: Uuid = db
        .query_one("SELECT id FROM dropstock.create_user($1)", &[&name])
        .await
        .unwrap()
        .get(0);
    let hold = reserve(&db, drop, buyer).await;
    db.execute("SELECT dropstock.purchase($1, $2)", &[&hold, &buyer])
        .await
        .unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let note = listener
            .next_for(drop, left)
            .await
            .expect("a notification with the purchase");
        if let Some(sale) = note["purchases"].as_array().and_then(|p| p.first()) {
            // By name only: anyone who can connect can LISTEN, and an id is the buyer's alone.
            assert_eq!(sale["user"], serde_json::json!({"username": name}));
            assert_eq!(note["availableStock"], 4);
            assert!(note.to_string().len() < 8000);
            break;
        }
    }
}

/// Killed with pg_terminate_backend, the worker is back within seconds and returns due holds again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_comes_back_after_it_is_killed() {
    let db = connect().await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            worker_pid(&db).await.is_some()
        })
        .await
    );
    let old = worker_pid(&db).await.unwrap();
    terminate(&db, old).await;
    let replaced = wait_until(Duration::from_secs(10), || async {
        matches!(worker_pid(&db).await, Some(pid) if pid != old)
    })
    .await;
    assert!(replaced, "a new worker replaced pid {old}");

    let drop = new_drop(&db, 1, 1).await;
    let buyer = new_buyer(&db).await;
    db.execute("SELECT dropstock.reserve_item($1, $2)", &[&drop, &buyer])
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            stock(&db, drop).await.0 == 1
        })
        .await
    );
}

/// While preloaded, the extension belongs to dropstock.database only: elsewhere CREATE EXTENSION is
/// refused with a message, a DETAIL and a HINT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_the_extension_in_another_database_is_refused() {
    let db = connect().await;
    let other = format!("dropstock_elsewhere_{}", Uuid::new_v4().simple());
    db.batch_execute(&format!("CREATE DATABASE {other}"))
        .await
        .unwrap();
    let url = database_url()
        .rsplit_once('/')
        .map(|(base, _)| format!("{base}/{other}"))
        .unwrap();
    let (client, driver) = connect_to(&url).await.unwrap();
    let refused = client
        .batch_execute("CREATE EXTENSION dropstock")
        .await
        .unwrap_err();
    drop(client);
    let _ = driver.await;
    db.batch_execute(&format!("DROP DATABASE {other}"))
        .await
        .unwrap();

    let report = refused.as_db_error().expect("a database error");
    assert_eq!(report.code().code(), "55000");
    assert_eq!(
        report.message(),
        "dropstock can only be created in database \"postgres\""
    );
    assert!(
        report.detail().unwrap().contains("dropstock.database"),
        "{:?}",
        report.detail()
    );
    assert!(
        report.hint().unwrap().contains("set dropstock.database"),
        "{:?}",
        report.hint()
    );
}

/// A sized drop's notification carries only the sizes whose stock changed, one notification for all of
/// them, and stays under PostgreSQL's 8,000-byte payload limit at the worst: 100 sizes changed at once,
/// labels of 32 four-byte characters, and ten sales to buyers named with 64 four-byte characters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sized_drops_notification_carries_only_the_changed_sizes_and_fits() {
    let mut db = connect().await;
    let mut listener = listen().await;
    let labels: Vec<String> = (0..100).map(|i| format!("{i:𝔘>32}")).collect();
    let sizes = serde_json::Value::Object(
        labels
            .iter()
            .map(|label| (label.clone(), serde_json::json!(2)))
            .collect(),
    );
    let drop = new_sized_drop(&db, &sizes.to_string(), 1).await;
    let first = listener
        .next_for(drop, Duration::from_secs(5))
        .await
        .expect("the new drop is announced");
    assert_eq!(first["variants"].as_array().map(Vec::len), Some(100));

    // Ten sales and 90 holds, one unit of each size, in one transaction: one publication sees them all.
    let names: Vec<String> = (0..100)
        .map(|_| format!("{:𝔘<64}", &unique("b")[..10]))
        .collect();
    let session = db.transaction().await.unwrap();
    for (i, (label, name)) in labels.iter().zip(&names).enumerate() {
        let buyer: Uuid = session
            .query_one("SELECT id FROM dropstock.create_user($1)", &[name])
            .await
            .unwrap()
            .get(0);
        let hold: Uuid = session
            .query_one(
                "SELECT id FROM dropstock.reserve_item($1, $2, $3)",
                &[&drop, &buyer, label],
            )
            .await
            .unwrap()
            .get(0);
        if i < 10 {
            session
                .execute("SELECT dropstock.purchase($1, $2)", &[&hold, &buyer])
                .await
                .unwrap();
        }
    }
    session.commit().await.unwrap();
    let note = listener
        .next_for(drop, Duration::from_secs(5))
        .await
        .expect("the changes are published");
    assert_eq!(note["variants"].as_array().map(Vec::len), Some(100));
    assert!(note["variants"]
        .as_array()
        .unwrap()
        .iter()
        .all(|size| size[1] == 1));
    assert_eq!(note["purchases"].as_array().map(Vec::len), Some(10));
    assert_eq!(note["availableStock"], 100);
    let longest = listener
        .longest_payload
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(longest < 8000, "a notification of {longest} bytes");

    // One more hold: the next notification names that size alone.
    let buyer = new_buyer(&db).await;
    db.execute(
        "SELECT dropstock.reserve_item($1, $2, $3)",
        &[&drop, &buyer, &labels[42]],
    )
    .await
    .unwrap();
    let number: i16 = db
        .query_one(
            "SELECT variant FROM dropstock.variant_status($1) WHERE label = $2",
            &[&drop, &labels[42]],
        )
        .await
        .unwrap()
        .get(0);
    let note = listener
        .next_for(drop, Duration::from_secs(5))
        .await
        .expect("the hold is published");
    assert_eq!(note["variants"], serde_json::json!([[number, 0]]));
    assert_invariant(&db, drop).await;
}

/// One transaction that makes holds in more drops than a transaction lists for the worker (8): each
/// drop's hold is still published, as the worker then looks for live holds the long way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_in_more_drops_than_one_transaction_lists_are_all_published() {
    const DROPS: usize = 12;
    let mut db = connect().await;
    let mut listener = listen().await;
    let mut drops = Vec::new();
    for _ in 0..DROPS {
        drops.push(new_drop(&db, 10, 60).await);
    }
    let announced = listener
        .next_for_each(&drops, Duration::from_secs(10))
        .await;
    assert_eq!(announced.len(), DROPS, "every new drop is announced");
    let buyer = new_buyers(&db, 1).await[0];
    let many = db.transaction().await.unwrap();
    for drop in &drops {
        many.execute("SELECT dropstock.reserve_item($1, $2)", &[drop, &buyer])
            .await
            .unwrap();
    }
    many.commit().await.unwrap();
    let notes = listener
        .next_for_each(&drops, Duration::from_secs(10))
        .await;
    for drop in &drops {
        let note = notes
            .get(drop)
            .unwrap_or_else(|| panic!("no notification for the hold in drop {drop}"));
        assert_eq!(note["availableStock"], 9);
    }
}

/// 300 drops gain a hold each at about the same time, from 30 connections: more drops than the
/// worker's list of changed drops holds between two publications (128). Whether a publication is told
/// them or finds them itself after the list overflowed, every drop's hold is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_in_more_drops_than_the_list_holds_are_all_published() {
    const DROPS: usize = 300;
    const LANES: usize = 30;
    let db = connect().await;
    let mut listener = listen().await;
    let drops: Vec<Uuid> = db
        .query(
            "SELECT (dropstock.create_drop(name => 'list overflow ' || n, price => 10, total_stock => 10,
                    starts_at => now() - interval '1 minute', hold_seconds => 60)).id
               FROM generate_series(1, $1::int) AS n",
            &[&(DROPS as i32)],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let announced = listener
        .next_for_each(&drops, Duration::from_secs(20))
        .await;
    assert_eq!(announced.len(), DROPS, "every new drop is announced");
    let buyers = new_buyers(&db, LANES).await;
    let lanes = connect_many(LANES).await;
    let calls = lanes
        .iter()
        .zip(&buyers)
        .enumerate()
        .map(|(lane, (db, buyer))| {
            let mine: Vec<Uuid> = drops.iter().skip(lane).step_by(LANES).copied().collect();
            async move {
                for drop in mine {
                    db.execute("SELECT dropstock.reserve_item($1, $2)", &[&drop, buyer])
                        .await
                        .unwrap();
                }
            }
        });
    futures_util::future::join_all(calls).await;
    let notes = listener
        .next_for_each(&drops, Duration::from_secs(20))
        .await;
    let missed: Vec<&Uuid> = drops.iter().filter(|d| !notes.contains_key(*d)).collect();
    assert!(
        missed.is_empty(),
        "{} of {DROPS} drops' holds were not published: {missed:?}",
        missed.len()
    );
    for note in notes.values() {
        assert_eq!(note["availableStock"], 9);
    }
}

/// Changes the cluster's settings (`ALTER SYSTEM SET …` or `RESET …`, one statement each: ALTER SYSTEM
/// refuses to run inside the implicit block of a multi-statement query), then reloads the configuration.
/// The tests that call it put the settings back before any assertion, so a failure leaves no 5 s ticks
/// behind for the tests after it.
async fn alter_system(db: &tokio_postgres::Client, changes: &[&str]) {
    for change in changes {
        db.batch_execute(&format!("ALTER SYSTEM {change}"))
            .await
            .unwrap();
    }
    db.batch_execute("SELECT pg_reload_conf()").await.unwrap();
}

/// A change is published as soon as it commits, not at the next tick: with ticks 5 s apart, each hold
/// made right after a notification is announced within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_published_when_it_commits_not_at_the_next_tick() {
    let db = connect().await;
    alter_system(&db, &["SET dropstock.tick_ms = 5000"]).await;
    let mut listener = listen().await;
    let drop = new_drop(&db, 10, 60).await;
    let first = listener.next_for(drop, Duration::from_secs(10)).await;
    let mut notes = Vec::new();
    let mut delays = Vec::new();
    if first.is_some() {
        for _ in 0..3 {
            // Just after a notification the worker has just ticked: its next timed tick is 5 s away.
            let buyer = new_buyers(&db, 1).await[0];
            let committed = std::time::Instant::now();
            reserve(&db, drop, buyer).await;
            let note = listener.next_for(drop, Duration::from_secs(1)).await;
            delays.push(committed.elapsed());
            let heard = note.is_some();
            notes.push(note);
            if !heard {
                break;
            }
        }
    }
    alter_system(&db, &["RESET dropstock.tick_ms"]).await;
    let mut last = first.expect("the new drop is announced");
    for note in notes {
        let note = note.unwrap_or_else(|| {
            panic!("no notification within 1 s of a hold (ticks are 5 s apart)")
        });
        assert_eq!(
            note["availableStock"].as_i64(),
            last["availableStock"].as_i64().map(|a| a - 1)
        );
        last = note;
    }
    eprintln!("commit to notification, ticks 5 s apart: {delays:?}");
}

/// With `dropstock.wake_on_commit` off, a change waits for the next timed tick: with ticks 5 s apart, a
/// hold made right after the reload (which ticks the worker) is not announced within a second, and is
/// at the next tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wake_on_commit_off_a_change_waits_for_the_tick() {
    let db = connect().await;
    // Listening before the drop exists: the worker may announce it as soon as it is committed.
    let mut listener = listen().await;
    let drop = new_drop(&db, 10, 60).await;
    let buyer = new_buyers(&db, 1).await[0];
    listener
        .next_for(drop, Duration::from_secs(10))
        .await
        .expect("the new drop is announced");
    let reloaded: std::time::SystemTime = db
        .query_one("SELECT clock_timestamp()", &[])
        .await
        .unwrap()
        .get(0);
    alter_system(
        &db,
        &[
            "SET dropstock.tick_ms = 5000",
            "SET dropstock.wake_on_commit = off",
        ],
    )
    .await;
    // The hold must be made once the reload has reached this session (which then does not wake the
    // worker) and the worker (whose tick that the reload itself causes must be over, and whose next
    // tick must be 5 s away): the worker finished a tick after the reload and has been idle for
    // 300 ms since, which it never is with the old 100 ms ticks.
    let ready = wait_until(Duration::from_secs(10), || async {
        db.query_one(
            "SELECT current_setting('dropstock.wake_on_commit') = 'off'
                AND coalesce((SELECT a.state = 'idle' AND a.state_change > $1
                                     AND clock_timestamp() - a.state_change > interval '300 ms'
                                FROM pg_stat_activity a WHERE a.backend_type = 'dropstock worker'), false)",
            &[&reloaded],
        )
        .await
        .unwrap()
        .get::<_, bool>(0)
    })
    .await;
    let (early, late, waited) = if ready {
        let committed = std::time::Instant::now();
        reserve(&db, drop, buyer).await;
        let early = listener.next_for(drop, Duration::from_secs(1)).await;
        let late = match early {
            Some(_) => None,
            None => listener.next_for(drop, Duration::from_secs(10)).await,
        };
        (early, late, committed.elapsed())
    } else {
        (None, None, Duration::ZERO)
    };
    alter_system(
        &db,
        &["RESET dropstock.tick_ms", "RESET dropstock.wake_on_commit"],
    )
    .await;
    assert!(
        ready,
        "the reload did not reach this session and the worker within 10 s"
    );
    assert!(
        early.is_none(),
        "the hold was announced within 1 s although commits do not wake the worker"
    );
    let note = late.expect("the hold is announced at the next timed tick");
    assert_eq!(note["availableStock"], 9);
    eprintln!("commit to notification, commits not waking the worker, ticks 5 s apart: {waited:?}");
}

/// A publication looks only at the drops it was told of (every change that a notice shows tells the
/// worker at commit), not at every drop holding units, which it looks at only every 30 s. So with ticks
/// 5 s apart and well before the next full look (the first tick of a worker just restarted is one), a
/// hold ended by a cancel, a sale, and a hold ended by the worker's own sweep are each announced by the
/// publication that follows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_published_by_being_told_not_by_the_full_look() {
    let db = connect().await;
    alter_system(&db, &["SET dropstock.tick_ms = 5000"]).await;
    let old = wait_for(Duration::from_secs(10), || worker_pid(&db))
        .await
        .expect("a worker runs");
    terminate(&db, old).await;
    let replaced = wait_until(Duration::from_secs(10), || async {
        matches!(worker_pid(&db).await, Some(pid) if pid != old)
    })
    .await;
    let restarted = std::time::Instant::now();
    let mut listener = listen().await;
    let drop = new_drop(&db, 10, 60).await;
    let brief = new_drop(&db, 10, 1).await;
    let announced = listener
        .next_for_each(&[drop, brief], Duration::from_secs(10))
        .await;
    let buyers = new_buyers(&db, 3).await;
    // What each change was announced as: (what, available units, sales announced), or None.
    let mut heard: Vec<(&str, Option<(i64, usize)>)> = Vec::new();
    let hear = async |listener: &mut Listener, which: Uuid, within: Duration| {
        listener.next_for(which, within).await.map(|note| {
            (
                note["availableStock"].as_i64().unwrap_or(-1),
                note["purchases"].as_array().map_or(0, Vec::len),
            )
        })
    };
    let one_second = Duration::from_secs(1);
    let cancelled = reserve(&db, drop, buyers[0]).await;
    heard.push(("hold", hear(&mut listener, drop, one_second).await));
    db.execute(
        "SELECT dropstock.cancel_reservation($1, $2)",
        &[&cancelled, &buyers[0]],
    )
    .await
    .unwrap();
    heard.push(("cancel", hear(&mut listener, drop, one_second).await));
    let bought = reserve(&db, drop, buyers[1]).await;
    heard.push(("hold", hear(&mut listener, drop, one_second).await));
    db.execute("SELECT dropstock.purchase($1, $2)", &[&bought, &buyers[1]])
        .await
        .unwrap();
    heard.push(("sale", hear(&mut listener, drop, one_second).await));
    reserve(&db, brief, buyers[2]).await;
    heard.push(("hold", hear(&mut listener, brief, one_second).await));
    // Due a second after it was made, swept at the next timed tick, at most 5 s later.
    heard.push((
        "expiry",
        hear(&mut listener, brief, Duration::from_secs(8)).await,
    ));
    let took = restarted.elapsed();
    alter_system(&db, &["RESET dropstock.tick_ms"]).await;

    assert!(replaced, "a new worker replaced pid {old}");
    assert_eq!(announced.len(), 2, "both new drops are announced");
    assert!(
        took < Duration::from_secs(25),
        "the changes took {took:?}: too close to the next full look to show anything"
    );
    assert_eq!(
        heard,
        vec![
            ("hold", Some((9, 0))),
            ("cancel", Some((10, 0))),
            ("hold", Some((9, 0))),
            ("sale", Some((9, 1))),
            ("hold", Some((9, 0))),
            ("expiry", Some((10, 0))),
        ]
    );
}
