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
