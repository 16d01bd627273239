//! Reservations through the adapter are batched per drop (one `reserve_items` call for everyone
//! reserving that drop at the same moment). Batched or not, each buyer must get exactly their own
//! answer: 200 buyers racing for 50 units get 50 holds and 150 "sold out", and a buyer's concurrent
//! retries get one hold.

use std::collections::HashSet;

use dropstock_tests::adapter::*;
use dropstock_tests::db::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_buyers_racing_over_http_get_exactly_the_stock() {
    let adapter = Adapter::start().await;
    let drop = adapter.open_drop(50).await;
    let db = connect().await;
    let buyers = new_buyer_ids(&db, 200).await;

    // Every buyer asks twice at once, as a double click does.
    let calls = buyers
        .iter()
        .flat_map(|buyer| [buyer.clone(), buyer.clone()])
        .map(|buyer| {
            let adapter = &adapter;
            let drop = &drop;
            async move {
                let (status, answer) = adapter.reserve(drop, &buyer).await;
                (buyer, status, answer)
            }
        });
    let answers: Vec<(String, u16, Value)> = futures_util::future::join_all(calls).await;

    let mut holds_by_buyer: std::collections::HashMap<String, HashSet<String>> = Default::default();
    let mut created = 0;
    for (buyer, status, answer) in &answers {
        match status {
            201 | 200 => {
                if *status == 201 {
                    created += 1;
                }
                assert_eq!(answer["data"]["userId"], buyer.as_str());
                assert_eq!(answer["data"]["dropId"], drop.as_str());
                assert_eq!(answer["data"]["status"], "reserved");
                holds_by_buyer
                    .entry(buyer.clone())
                    .or_default()
                    .insert(id(&answer["data"]));
            }
            409 => assert_eq!(answer["code"], "DS020", "{answer}"),
            other => panic!("unexpected {other}: {answer}"),
        }
    }
    assert_eq!(holds_by_buyer.len(), 50, "exactly the stock is held");
    assert!(
        holds_by_buyer.values().all(|holds| holds.len() == 1),
        "one hold per buyer, whatever the retries"
    );
    assert_eq!(created, 50, "each hold was created once");

    let row = db
        .query_one(
            "SELECT available_stock, held_stock, (SELECT count(*)::int FROM dropstock.reservations r
                     WHERE r.drop_id = s.id AND r.status = 'reserved')
               FROM dropstock.drop_status($1::uuid) s",
            &[&drop.parse::<uuid::Uuid>().unwrap()],
        )
        .await
        .unwrap();
    let (available, held, live): (i32, i32, i32) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((available, held, live), (0, 50, 50));
}

/// The gauge of open batching queues, from `/metrics`.
async fn open_queues(adapter: &Adapter) -> i64 {
    adapter
        .metrics()
        .await
        .lines()
        .find_map(|line| line.strip_prefix("dropstock_http_reservation_queues "))
        .and_then(|value| value.trim().parse().ok())
        .expect("the reservation queue gauge")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_for_drops_that_do_not_exist_leave_no_queue_behind() {
    // One buyer asks 200 times at once: past their rate limit, which is not what this is about.
    let adapter =
        Adapter::start_with(Options::admin().with("DROPSTOCK_RATE_LIMIT_PER_USER", "0")).await;
    let buyer = adapter.new_buyer().await;
    let unknown: Vec<String> = (0..200).map(|_| new_id()).collect();
    let answers =
        futures_util::future::join_all(unknown.iter().map(|drop| adapter.reserve(drop, &buyer)))
            .await;
    for answer in &answers {
        assert_refused(answer, 404, "DS001", "does not exist");
    }
    // Each queue closes with its first answer, not after the idle time (5 s).
    let closed = wait_until(std::time::Duration::from_secs(2), || async {
        open_queues(&adapter).await == 0
    })
    .await;
    assert!(closed, "{} queues still open", open_queues(&adapter).await);
}

/// A drop's queue, served by several flushers during a burst, closes once nothing comes for its idle
/// time (5 s): the extra flushers retire and the last one closes it. A later reservation opens a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_served_by_several_flushers_closes_when_idle_and_opens_again() {
    let adapter = Adapter::start().await;
    let drop = adapter.open_drop(1000).await;
    let db = connect().await;
    let buyers = new_buyer_ids(&db, 400).await;
    let answers =
        futures_util::future::join_all(buyers.iter().map(|buyer| adapter.reserve(&drop, buyer)))
            .await;
    assert!(answers.iter().all(|(status, _)| *status == 201));
    assert_eq!(open_queues(&adapter).await, 1);

    let closed = wait_until(std::time::Duration::from_secs(15), || async {
        open_queues(&adapter).await == 0
    })
    .await;
    assert!(closed, "the queue is still open 15 s after the burst");
    let (status, answer) = adapter.reserve(&drop, &adapter.new_buyer().await).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(open_queues(&adapter).await, 1);
}
