//! More than one adapter on one database, as behind a load balancer: every adapter's feed carries every
//! change, whichever adapter made it, and a buyer who reaches two adapters at once still gets one hold.

use std::time::Duration;

use dropstock_tests::adapter::*;
use dropstock_tests::db::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_adapters_share_one_database_without_doubling_and_both_feeds_stay_live() {
    const BUYERS: usize = 40;
    let (first, second) = (Adapter::start().await, Adapter::start().await);
    first.wait_listening().await;
    second.wait_listening().await;
    let drop = first.open_drop(50).await;
    let mut feeds = Vec::new();
    for adapter in [&first, &second] {
        let mut feed = adapter.ws(&format!("?drop={drop}")).await;
        feed.snapshot().await;
        feeds.push(feed);
    }

    // Each buyer asks both adapters at the same instant (a retry that went to another instance).
    let mut buyers = Vec::new();
    for _ in 0..BUYERS {
        buyers.push(first.new_buyer().await);
    }
    let answers = futures_util::future::join_all(buyers.iter().map(|buyer| {
        let (first, second, drop) = (&first, &second, &drop);
        async move {
            let (one, two) = tokio::join!(first.reserve(drop, buyer), second.reserve(drop, buyer));
            (one, two)
        }
    }))
    .await;
    for ((one_status, one), (two_status, two)) in &answers {
        assert!(
            matches!((one_status, two_status), (201, 200) | (200, 201)),
            "one new hold and the same one handed back: {one_status} {one} / {two_status} {two}"
        );
        assert_eq!(one["data"]["id"], two["data"]["id"], "one hold per buyer");
    }
    let db = connect().await;
    let drop_id = uuid::Uuid::parse_str(&drop).unwrap();
    let (available, held, sold) = stock(&db, drop_id).await;
    assert_eq!((available, held, sold), (10, 40, 0));

    // A sale made through the second adapter reaches the first adapter's watchers, and the other way.
    for (k, adapter) in [&second, &first].into_iter().enumerate() {
        let buyer = &buyers[k];
        let hold = &answers[k].0 .1["data"]["id"];
        let (status, sale) = adapter
            .post(
                "/api/purchases",
                json!({"userId": buyer, "reservationId": hold}),
            )
            .await;
        assert_eq!(status, 200, "{sale}");
    }
    for feed in &mut feeds {
        feed.expect(
            Duration::from_secs(10),
            "the stock after the holds",
            |m: &Value| m["type"] == "stock" && m["availableStock"] == 10,
        )
        .await;
        let mut sales = 0;
        while sales < 2 {
            feed.expect(Duration::from_secs(10), "both sales", |m: &Value| {
                m["type"] == "purchase" && m["dropId"] == drop.as_str()
            })
            .await;
            sales += 1;
        }
    }
    assert_invariant(&db, drop_id).await;
}

/// Takes turn `turn` of the drop's 4 in `holder`'s transaction, as another adapter's batch would.
async fn hold_turn(holder: &tokio_postgres::Transaction<'_>, drop_id: uuid::Uuid, turn: i32) {
    let taken: i32 = holder
        .query_one(
            "SELECT dropstock.take_batch_turn($1, $2, 4)",
            &[&drop_id, &turn],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(taken, turn, "every turn of the drop is free before");
}

/// A drop's batches take turns in the database (`take_batch_turn`), whichever adapter sends them: with
/// every turn of the drop held by another transaction, a reservation through the adapter waits for one,
/// having made no hold, and is answered once a turn frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_waits_for_a_batch_turn_held_in_the_database() {
    let adapter = Adapter::start().await;
    let drop = adapter.open_drop(10).await;
    let drop_id = uuid::Uuid::parse_str(&drop).unwrap();
    let buyer = adapter.new_buyer().await;
    let mut holder = connect().await;
    let turns = holder.transaction().await.unwrap();
    for turn in 0..4 {
        hold_turn(&turns, drop_id, turn).await;
    }

    let reserve = adapter.reserve(&drop, &buyer);
    tokio::pin!(reserve);
    let db = connect().await;
    let waiting = tokio::select! {
        answer = &mut reserve => panic!("answered while every turn was held elsewhere: {answer:?}"),
        waiting = wait_until(Duration::from_secs(10), || async {
            db.query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE application_name = 'dropstock-http' AND wait_event_type = 'Lock'
                    AND wait_event = 'advisory' AND query LIKE '%take_batch_turn%'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
                == 1
        }) => waiting,
    };
    assert!(waiting, "the adapter's batch never waited for a turn");
    let holds: i64 = db
        .query_one(
            "SELECT count(*) FROM dropstock.reservations WHERE drop_id = $1",
            &[&drop_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(holds, 0, "no hold is made before the batch has a turn");

    turns.commit().await.unwrap();
    let (status, answer) = tokio::time::timeout(Duration::from_secs(10), reserve)
        .await
        .expect("answered once a turn freed");
    assert_eq!(status, 201, "{answer}");
}

/// An adapter keeps one batch of a drop waiting for a turn. With turns 1 to 3 held elsewhere, as
/// other adapters would, and more buyers queued than one batch takes: the batch that gets turn 0 takes
/// 128, and the flusher started for the rest finds every turn taken while its adapter has a batch in
/// line. It gives its buyers back to that batch instead of waiting for a turn held elsewhere, so every
/// buyer is answered while turns 1 to 3 stay taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_batch_gives_its_buyers_back_rather_than_wait_beside_the_first() {
    const BUYERS: usize = 200;
    let adapter = Adapter::start().await;
    let drop = adapter.open_drop(BUYERS as i32).await;
    let drop_id = uuid::Uuid::parse_str(&drop).unwrap();
    let db = connect().await;
    let buyers = new_buyer_ids(&db, BUYERS).await;
    let (mut first_holder, mut other_holder) = (connect().await, connect().await);
    let turn_zero = first_holder.transaction().await.unwrap();
    let other_turns = other_holder.transaction().await.unwrap();
    hold_turn(&turn_zero, drop_id, 0).await;
    for turn in 1..4 {
        hold_turn(&other_turns, drop_id, turn).await;
    }

    let answers =
        futures_util::future::join_all(buyers.iter().map(|buyer| adapter.reserve(&drop, buyer)));
    tokio::pin!(answers);
    // One batch waits for turn 0 with its first buyer; the others wait in the adapter's queue.
    let queued = format!("dropstock_http_reservations_queued {}\n", BUYERS - 1);
    tokio::select! {
        _ = &mut answers => panic!("answered while every turn was held elsewhere"),
        all_queued = wait_until(Duration::from_secs(20), || async {
            adapter.metrics().await.contains(&queued)
        }) => assert!(all_queued, "the buyers never all queued:\n{}", adapter.metrics().await),
    }

    turn_zero.commit().await.unwrap();
    let answers = tokio::time::timeout(Duration::from_secs(20), answers)
        .await
        .expect("every buyer answered while turns 1 to 3 stay taken");
    for (status, answer) in &answers {
        assert_eq!(*status, 201, "{answer}");
    }
    let waiting: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
              WHERE application_name = 'dropstock-http' AND wait_event_type = 'Lock'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(waiting, 0, "no batch of the adapter waits for a turn");
    assert!(adapter
        .metrics()
        .await
        .contains("dropstock_http_reservations_queued 0\n"));
    other_turns.commit().await.unwrap();
}

/// How many flushers the adapter starts for a drop with `others` other adapters batching it, when its
/// first batch is stuck in the database with buyers left over. The test holds every turn until 200
/// buyers are queued, and the first buyer's lock, so that the batch that takes turn 0 (128 buyers, the
/// first among them) waits inside `reserve_items` while 72 remain: the adapter starts another flusher
/// for them if its share of the turns allows one. The other adapters are rows of `batch_callers` seen
/// an hour ahead, so they count however slow the machine is.
async fn flushers_started_beside(others: i32) -> String {
    const BUYERS: usize = 200;
    let adapter = Adapter::start().await;
    let drop = adapter.open_drop(BUYERS as i32).await;
    let drop_id = uuid::Uuid::parse_str(&drop).unwrap();
    let db = connect().await;
    db.execute(
        "INSERT INTO dropstock.batch_callers (drop_id, caller, seen_at)
         SELECT $1, gen_random_uuid(), now() + interval '1 hour' FROM generate_series(1, $2)",
        &[&drop_id, &others],
    )
    .await
    .unwrap();
    let buyers = new_buyer_ids(&db, BUYERS).await;
    let (mut turn_holder, mut buyer_holder) = (connect().await, connect().await);
    let turns = turn_holder.transaction().await.unwrap();
    for turn in 0..4 {
        hold_turn(&turns, drop_id, turn).await;
    }
    let first_buyer = buyer_holder.transaction().await.unwrap();
    first_buyer
        .execute(
            "SELECT dropstock._lock_buyers($1, ARRAY[$2::uuid])",
            &[&drop_id, &uuid::Uuid::parse_str(&buyers[0]).unwrap()],
        )
        .await
        .unwrap();
    // Whether an adapter backend waits for a lock in a statement that names `call`.
    let waits_in = |call: &'static str| {
        let db = &db;
        move || async move {
            db.query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE application_name = 'dropstock-http' AND wait_event_type = 'Lock'
                    AND query LIKE $1",
                &[&format!("%{call}%")],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
                > 0
        }
    };

    // The first buyer's batch waits for a turn, then everyone else queues behind it.
    let first = adapter.reserve(&drop, &buyers[0]);
    tokio::pin!(first);
    tokio::select! {
        _ = &mut first => panic!("answered while every turn was held"),
        waits = wait_until(Duration::from_secs(20), waits_in("take_batch_turn")) => {
            assert!(waits, "the first batch never waited for a turn")
        }
    }
    let rest =
        futures_util::future::join_all(buyers[1..].iter().map(|b| adapter.reserve(&drop, b)));
    let answers = async { tokio::join!(first, rest) };
    tokio::pin!(answers);
    let queued = format!("dropstock_http_reservations_queued {}\n", BUYERS - 1);
    tokio::select! {
        _ = &mut answers => panic!("answered while every turn was held"),
        queued = wait_until(Duration::from_secs(20), || async {
            adapter.metrics().await.contains(&queued)
        }) => assert!(queued, "the buyers never all queued:\n{}", adapter.metrics().await),
    }

    // Turn 0's batch gathers 128 buyers and waits for the first one's lock.
    turns.commit().await.unwrap();
    tokio::select! {
        _ = &mut answers => panic!("answered while the first buyer was locked"),
        stuck = wait_until(Duration::from_secs(20), waits_in("reserve_items")) => {
            assert!(stuck, "the first batch never reached the database")
        }
    }
    first_buyer.commit().await.unwrap();
    let ((status, answer), rest) = tokio::time::timeout(Duration::from_secs(20), answers)
        .await
        .expect("every buyer answered once the lock freed");
    assert_eq!(status, 201, "{answer}");
    for (status, answer) in rest {
        assert_eq!(status, 201, "{answer}");
    }
    adapter
        .metrics()
        .await
        .lines()
        .find(|line| line.starts_with("dropstock_http_reservation_flushers_started_total "))
        .expect("the count of flushers started")
        .to_string()
}

/// Adapters share a drop's batch turns (`share_batch_turns`): an adapter alone starts a second flusher
/// for the buyers its first batch left, and one beside three others keeps to its one turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_runs_its_share_of_a_drops_batch_turns() {
    assert_eq!(
        flushers_started_beside(0).await,
        "dropstock_http_reservation_flushers_started_total 2",
        "alone, the adapter uses a second turn"
    );
    assert_eq!(
        flushers_started_beside(3).await,
        "dropstock_http_reservation_flushers_started_total 1",
        "beside three others, one turn is its share"
    );
}

/// The share only tunes throughput. An adapter whose role may not call `share_batch_turns` (as one
/// would find an extension older than itself) still answers every reservation, with the share it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_that_cannot_learn_its_share_still_reserves() {
    let db = connect().await;
    let role = format!("dropstock_no_share_{}", uuid::Uuid::new_v4().simple());
    db.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN;
         SELECT dropstock.grant_access('{role}');
         REVOKE EXECUTE ON FUNCTION dropstock.share_batch_turns(uuid, uuid, integer) FROM {role}"
    ))
    .await
    .unwrap();
    let adapter = Adapter::start_with(Options {
        database_url: Some(database_url().replacen("postgres@", &format!("{role}@"), 1)),
        ..Options::admin()
    })
    .await;
    let drop_id = new_drop(&db, 20, 60).await;
    let drop = drop_id.to_string();
    let buyers = new_buyer_ids(&db, 20).await;
    let answers =
        futures_util::future::join_all(buyers.iter().map(|buyer| adapter.reserve(&drop, buyer)))
            .await;
    for (status, answer) in &answers {
        assert_eq!(*status, 201, "{answer}");
    }
    let told: i64 = db
        .query_one(
            "SELECT count(*) FROM dropstock.batch_callers WHERE drop_id = $1",
            &[&drop_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(told, 0, "the adapter's share_batch_turns was refused");
    std::mem::drop(adapter);
    db.batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await
        .unwrap();
}
