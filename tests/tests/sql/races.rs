//! Races the concurrency storms do not cover: a buyer's purchase against their own cancel of the same hold,
//! and a drop that sells out while its holds fall due. Real connections against the real cluster, outcomes
//! counted exactly. (Purchase against expiry at the boundary and concurrent retries are in concurrency.rs.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use dropstock_tests::db::*;
use dropstock_tests::figures::record;
use tokio_postgres::Client;
use uuid::Uuid;

/// Holds (buyer, hold) taken in one call.
async fn take_holds(db: &Client, drop: Uuid, buyers: &[Uuid]) -> Vec<(Uuid, Uuid)> {
    pairs(
        db,
        "SELECT user_id, reservation_id FROM dropstock.reserve_items($1, $2) WHERE reservation_id IS NOT NULL",
        &[&drop, &buyers],
    )
    .await
}

/// 400 holds, each purchased and cancelled at the same instant on two connections: exactly one of the two
/// wins every time, the loser gets the SQLSTATE that names the winner, and the stock adds up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_and_purchase_of_one_hold_race_and_exactly_one_wins() {
    const HOLDS: usize = 400;
    const PAIRS: usize = 16;
    let setup = connect().await;
    let drop = new_drop(&setup, HOLDS as i32, 600).await;
    let buyers = new_buyers(&setup, HOLDS).await;
    let holds = Arc::new(take_holds(&setup, drop, &buyers).await);
    assert_eq!(holds.len(), HOLDS);
    let started = Instant::now();

    let racers = (0..PAIRS).map(|pair| {
        let holds = holds.clone();
        tokio::spawn(async move {
            let (buying, cancelling) = (connect().await, connect().await);
            let mut outcomes = Vec::new();
            for (i, (buyer, hold)) in holds.iter().enumerate().skip(pair).step_by(PAIRS) {
                let arguments: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [hold, buyer];
                let purchase =
                    buying.query_one("SELECT id FROM dropstock.purchase($1, $2)", &arguments);
                let cancel = cancelling.query_one(
                    "SELECT status::text FROM dropstock.cancel_reservation($1, $2)",
                    &arguments,
                );
                // Alternate which request leaves first.
                let (bought, cancelled) = if i.is_multiple_of(2) {
                    tokio::join!(purchase, cancel)
                } else {
                    let (c, p) = tokio::join!(cancel, purchase);
                    (p, c)
                };
                outcomes.push((
                    *hold,
                    bought.map(|_| ()).map_err(|e| sqlstate(&e)),
                    cancelled
                        .map(|row| row.get::<_, String>(0))
                        .map_err(|e| sqlstate(&e)),
                ));
            }
            outcomes
        })
    });
    let outcomes: Vec<_> = futures_util::future::join_all(racers)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    let elapsed = started.elapsed();

    let (mut sold, mut given_back) = (0, 0);
    for (hold, bought, cancelled) in &outcomes {
        match (bought, cancelled) {
            (Ok(()), Err(code)) if code == "DS033" => sold += 1,
            (Err(code), Ok(status)) if code == "DS032" && status == "cancelled" => given_back += 1,
            other => panic!("hold {hold}: purchase and cancel both won or both lost: {other:?}"),
        }
    }
    let statuses: Vec<(String, i64)> = pairs(
        &setup,
        "SELECT status::text, count(*) FROM dropstock.reservations WHERE drop_id = $1 GROUP BY 1 ORDER BY 1",
        &[&drop],
    )
    .await;
    let mut expected = vec![];
    if given_back > 0 {
        expected.push(("cancelled".to_owned(), given_back));
    }
    if sold > 0 {
        expected.push(("purchased".to_owned(), sold));
    }
    assert_eq!(
        statuses, expected,
        "every hold ended the way its winner said"
    );
    assert_eq!(
        stock(&setup, drop).await,
        (given_back as i32, 0, sold as i32)
    );
    assert_invariant(&setup, drop).await;
    record(
        "races 1 cancel vs purchase",
        &format!(
            "{HOLDS} holds each cancelled and purchased at once in {:.1} s: {sold} sold, {given_back} given back, \
             0 both or neither, 0 oversold units",
            elapsed.as_secs_f64()
        ),
    );
}

/// Reserves once per buyer, all at once on separate connections; (granted, refused as sold out).
async fn crowd(
    connections: &[Arc<Client>],
    drop: Uuid,
    buyers: &[Uuid],
) -> (usize, usize, Vec<Uuid>) {
    let mut granted = Vec::new();
    let mut sold_out = 0;
    for outcome in race_reserve(connections, drop, buyers).await {
        match outcome {
            Ok(hold) => granted.push(hold),
            Err(code) if code == "DS020" => sold_out += 1,
            Err(code) => panic!("a reservation failed with {code}"),
        }
    }
    (granted.len(), sold_out, granted)
}

/// A drop sells out while its holds fall due. Each round starts the instant every earlier hold is past
/// due (by the database clock), while the worker is sweeping them: then exactly `stock - sold` units can
/// be had, and a crowd of that many plus ten must get exactly that many holds. A sold-out answer while a
/// unit could be had (free or past due) is a false sold-out; a hold beyond them is an oversell. Most holds
/// are bought at once, so the drop sells out over the rounds, and a last crowd gets only "sold out".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drop_selling_out_while_holds_expire_never_says_sold_out_falsely() {
    const STOCK: i32 = 30;
    const HOLD_SECONDS: i32 = 3;
    const EXTRA: usize = 10;
    let setup = connect().await;
    let drop = new_drop(&setup, STOCK, HOLD_SECONDS).await;
    let connections = connect_many(STOCK as usize + EXTRA).await;
    // Each connection makes its first reserve_item (which compiles and plans it) on a drop of its own
    // before the rounds, whose crowds must finish within a hold's time.
    let warm_up = new_drop(&setup, connections.len() as i32, 60).await;
    let warm_buyers = new_buyers(&setup, connections.len()).await;
    let (warmed, _, _) = crowd(&connections, warm_up, &warm_buyers).await;
    assert_eq!(warmed, connections.len(), "every warm-up call made a hold");
    // How many holds of each round's to leave unbought, so that later rounds reclaim due holds.
    let unbought = [4, 2, 0, 0];
    let (mut false_sold_out, mut oversold, mut calls) = (0, 0, 0);
    for (round, leave) in unbought.into_iter().enumerate() {
        // The instant every hold so far is past due.
        let waited = wait_until(Duration::from_secs(2 * HOLD_SECONDS as u64 + 5), || async {
            setup
                .query_one(
                    "SELECT NOT EXISTS (SELECT FROM dropstock.reservations
                                         WHERE drop_id = $1 AND status = 'reserved' AND expires_at > now())",
                    &[&drop],
                )
                .await
                .unwrap()
                .get::<_, bool>(0)
        })
        .await;
        assert!(waited, "holds of round {round} never fell due");
        let (_, _, sold) = stock(&setup, drop).await;
        let obtainable = (STOCK - sold) as usize;
        let buyers = new_buyers(&setup, obtainable + EXTRA).await;
        let started = Instant::now();
        let (granted, refused, holds) = crowd(&connections, drop, &buyers).await;
        let took = started.elapsed();
        calls += buyers.len();
        assert!(
            took < Duration::from_secs(HOLD_SECONDS as u64),
            "round {round} took {took:?}, longer than a hold: its own holds could have been reclaimed"
        );
        false_sold_out += obtainable.saturating_sub(granted);
        oversold += granted.saturating_sub(obtainable);
        assert_eq!(
            (granted, refused),
            (obtainable, EXTRA),
            "round {round}: {obtainable} units could be had (free or past due)"
        );
        let owners: Vec<(Uuid, Uuid)> = pairs(
            &setup,
            "SELECT id, user_id FROM dropstock.reservations WHERE id = ANY($1)",
            &[&holds],
        )
        .await;
        let to_buy = owners.len().saturating_sub(leave);
        let purchases = owners
            .iter()
            .take(to_buy)
            .zip(connections.iter().cycle())
            .map(|((hold, buyer), db)| {
                let db = db.clone();
                let (hold, buyer) = (*hold, *buyer);
                async move {
                    db.execute("SELECT dropstock.purchase($1, $2)", &[&hold, &buyer])
                        .await
                }
            });
        for bought in futures_util::future::join_all(purchases).await {
            bought.expect("a live hold is purchasable");
        }
        assert_invariant(&setup, drop).await;
    }
    let (available, held, sold) = stock(&setup, drop).await;
    assert_eq!((available, held, sold), (0, 0, STOCK), "sold out, exactly");
    assert_invariant(&setup, drop).await;
    record(
        "races 2 sell-out while holds expire",
        &format!(
            "{} rounds, {calls} reservations racing the sweep: {false_sold_out} false sold-out answers, \
             {oversold} oversold units, {sold} of {STOCK} sold",
            unbought.len()
        ),
    );
}
