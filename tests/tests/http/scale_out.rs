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
