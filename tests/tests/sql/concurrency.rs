//! Concurrency storms against the real cluster: many connections at once, outcomes counted exactly.
//! Run by `make test` and `make test-repeat` in the test cluster; DATABASE_URL picks the cluster.

use dropstock_tests::db::*;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Each buyer in `buyers` (a buyer may repeat) calls `reserve_item` on a connection of its own, all
/// released at the same instant; the hold each got, or its refusal's SQLSTATE.
async fn race_on_own_connections(drop: Uuid, buyers: Vec<Uuid>) -> Vec<Result<Uuid, String>> {
    race_reserve(&connect_many(buyers.len()).await, drop, &buyers).await
}

/// 200 buyers on 200 connections race for 50 units: exactly 50 holds, 150 sold-out answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_buyers_race_for_fifty_units() {
    let setup = connect().await;
    let drop = new_drop(&setup, 50, 60).await;
    let buyers = new_buyers(&setup, 200).await;
    let outcomes = race_on_own_connections(drop, buyers).await;

    let holds: HashSet<Uuid> = outcomes
        .iter()
        .filter_map(|o| o.as_ref().ok().copied())
        .collect();
    let refusals: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert_eq!(
        holds.len(),
        50,
        "exactly the stock is held, each hold distinct"
    );
    assert_eq!(refusals.len(), 150);
    assert!(
        refusals.iter().all(|code| *code == "DS020"),
        "every refusal is sold out: {refusals:?}"
    );
    assert_eq!(stock(&setup, drop).await, (0, 50, 0));
    assert_invariant(&setup, drop).await;
}

/// One buyer's 50 concurrent retries (a flaky client, a double click) yield one hold and one unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_of_one_buyer_yield_one_hold() {
    let setup = connect().await;
    let drop = new_drop(&setup, 10, 60).await;
    let buyer = new_buyer(&setup).await;
    let answers = race_on_own_connections(drop, vec![buyer; 50]).await;
    let holds: HashSet<Uuid> = answers
        .iter()
        .map(|a| *a.as_ref().expect("every retry succeeds"))
        .collect();
    assert_eq!(holds.len(), 1, "every retry got the same hold");
    assert_eq!(stock(&setup, drop).await, (9, 1, 0));
    assert_invariant(&setup, drop).await;
}

/// One buyer's 30 concurrent purchases of one hold make one sale, and every caller sees that sale.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_purchases_of_one_hold_make_one_sale() {
    let setup = connect().await;
    let drop = new_drop(&setup, 5, 60).await;
    let buyer = new_buyer(&setup).await;
    let hold = reserve(&setup, drop, buyer).await;
    let connections = connect_many(30).await;
    let attempts = connections.into_iter().map(|db| {
        tokio::spawn(async move {
            db.query_one(
                "SELECT id FROM dropstock.purchase($1, $2)",
                &[&hold, &buyer],
            )
            .await
            .map(|row| row.get::<_, Uuid>(0))
            .expect("every retry succeeds")
        })
    });
    let sales: HashSet<Uuid> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(sales.len(), 1);
    assert_eq!(stock(&setup, drop).await, (4, 0, 1));
    assert_invariant(&setup, drop).await;
}

/// 300 one-second holds, raced at their expiry by their owners' purchases and by concurrent sweeps:
/// each hold ends in exactly one state, and each unit is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purchases_race_the_sweep_at_the_expiry_boundary() {
    const HOLDS: usize = 300;
    let setup = connect().await;
    let drop = new_drop(&setup, HOLDS as i32, 1).await;
    let buyers = new_buyers(&setup, HOLDS).await;
    let pool = Arc::new(connect_many(40).await);
    // Every connection makes one sale first, in a drop of its own. A backend's first `purchase`
    // compiles and plans it; 40 doing so at the boundary took up to 130 ms on two cores, each lane's
    // later purchases fell behind with it, and on a busy host no purchase reached its boundary in time.
    let warm_up = new_drop(&setup, pool.len() as i32, 60).await;
    let warm_buyers = new_buyers(&setup, pool.len()).await;
    futures_util::future::join_all(pool.iter().zip(&warm_buyers).map(|(db, buyer)| async move {
        let hold = reserve(db, warm_up, *buyer).await;
        db.query_one("SELECT id FROM dropstock.purchase($1, $2)", &[&hold, buyer])
            .await
            .expect("the warm-up sale");
    }))
    .await;

    let mut holds = Vec::new();
    for chunk in buyers.chunks(40) {
        let calls = chunk.iter().zip(pool.iter()).map(|(buyer, db)| async move {
            db.query_one(
                "SELECT id FROM dropstock.reserve_item($1, $2)",
                &[&drop, buyer],
            )
            .await
        });
        for (row, buyer) in futures_util::future::join_all(calls)
            .await
            .into_iter()
            .zip(chunk)
        {
            let row = row.expect("reserve");
            holds.push((row.get::<_, Uuid>(0), *buyer));
        }
    }
    // Each owner tries to buy within 60 ms either side of their own hold's expiry (by the database
    // clock), while four sweepers keep ending due holds.
    let remaining: Vec<f64> = setup
        .query(
            "SELECT extract(epoch FROM expires_at - clock_timestamp())::float8 FROM dropstock.reservations
              WHERE drop_id = $1 ORDER BY id",
            &[&drop],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut ids: Vec<(Uuid, Uuid)> = holds.clone();
    ids.sort();
    let t0 = tokio::time::Instant::now();
    let schedule: Vec<(Uuid, Uuid, tokio::time::Instant)> = ids
        .iter()
        .zip(&remaining)
        .enumerate()
        .map(|(i, ((hold, buyer), left))| {
            let offset = ((i % 13) as f64 - 6.0) * 0.01;
            (
                *hold,
                *buyer,
                t0 + Duration::from_secs_f64((left + offset).max(0.0)),
            )
        })
        .collect();

    let sweepers: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                let db = connect().await;
                let stop = tokio::time::Instant::now() + Duration::from_millis(1500);
                while tokio::time::Instant::now() < stop {
                    db.query_one("SELECT dropstock.expire_reservations(50)", &[])
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    let buyers_tasks = (0..pool.len()).map(|lane| {
        let pool = pool.clone();
        let mut mine: Vec<(Uuid, Uuid, tokio::time::Instant)> = schedule
            .iter()
            .skip(lane)
            .step_by(pool.len())
            .copied()
            .collect();
        mine.sort_by_key(|(_, _, at)| *at);
        tokio::spawn(async move {
            let db = &pool[lane];
            let mut outcomes = Vec::new();
            for (hold, buyer, at) in mine {
                tokio::time::sleep_until(at).await;
                let outcome = db
                    .query_one(
                        "SELECT id FROM dropstock.purchase($1, $2)",
                        &[&hold, &buyer],
                    )
                    .await;
                outcomes.push((hold, outcome.map(|_| ()).map_err(|e| sqlstate(&e))));
            }
            outcomes
        })
    });
    let outcomes: Vec<(Uuid, Result<(), String>)> = futures_util::future::join_all(buyers_tasks)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    for sweeper in sweepers {
        sweeper.await.unwrap();
    }

    let sold: HashSet<Uuid> = outcomes
        .iter()
        .filter(|(_, o)| o.is_ok())
        .map(|(h, _)| *h)
        .collect();
    let refused: Vec<&String> = outcomes
        .iter()
        .filter_map(|(_, o)| o.as_ref().err())
        .collect();
    assert!(
        refused.iter().all(|code| *code == "DS030"),
        "refusals are 'hold expired': {refused:?}"
    );
    assert_eq!(sold.len() + refused.len(), HOLDS);
    assert!(
        !sold.is_empty() && !refused.is_empty(),
        "the race straddled the boundary: {} sold",
        sold.len()
    );

    // Whatever the sweepers did not reach yet, one more sweep ends; then every hold is decided.
    setup
        .query_one("SELECT dropstock.expire_reservations(100000)", &[])
        .await
        .unwrap();
    let states = setup
        .query(
            "SELECT r.id, r.status::text, p.id IS NOT NULL FROM dropstock.reservations r
               LEFT JOIN dropstock.purchases p ON p.reservation_id = r.id WHERE r.drop_id = $1",
            &[&drop],
        )
        .await
        .unwrap();
    for row in &states {
        let (hold, status, has_sale): (Uuid, String, bool) = (row.get(0), row.get(1), row.get(2));
        let told_sold = sold.contains(&hold);
        assert_eq!(
            status == "purchased",
            told_sold,
            "hold {hold} is {status}; buyer told sold: {told_sold}"
        );
        assert_eq!(
            has_sale, told_sold,
            "hold {hold}: a sale row exists exactly when the buyer was told so"
        );
        assert!(
            status == "purchased" || status == "expired",
            "hold {hold} ended as {status}"
        );
    }
    assert_eq!(
        stock(&setup, drop).await,
        ((HOLDS - sold.len()) as i32, 0, sold.len() as i32)
    );
    assert_invariant(&setup, drop).await;
}

/// Batches of 16 buyers and single calls race for 50 units on 40 connections: exactly 50 holds in all,
/// every other buyer told "sold out", and nobody holds twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_and_single_calls_race_for_fifty_units() {
    let setup = connect().await;
    let drop = new_drop(&setup, 50, 60).await;
    let buyers = new_buyers(&setup, 320).await;
    let connections = connect_many(40).await;
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(40));

    let racers = connections.into_iter().enumerate().map(|(lane, db)| {
        let start = start.clone();
        let mine: Vec<Uuid> = buyers[lane * 8..lane * 8 + 8].to_vec();
        tokio::spawn(async move {
            start.wait().await;
            let mut answers: Vec<(Uuid, Option<String>)> = Vec::new();
            if lane % 2 == 0 {
                // Twice the same batch: the second call answers with the holds the first made.
                for _ in 0..2 {
                    let rows = db
                        .query(
                            "SELECT user_id, sqlstate FROM dropstock.reserve_items($1, $2)",
                            &[&drop, &mine],
                        )
                        .await
                        .expect("reserve_items");
                    answers.extend(rows.iter().map(|r| (r.get(0), r.get(1))));
                }
            } else {
                for buyer in &mine {
                    let outcome = db
                        .query_one(
                            "SELECT id FROM dropstock.reserve_item($1, $2)",
                            &[&drop, buyer],
                        )
                        .await;
                    answers.push((*buyer, outcome.err().map(|e| sqlstate(&e))));
                }
            }
            answers
        })
    });
    let answers: Vec<(Uuid, Option<String>)> = futures_util::future::join_all(racers)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    let refusals: Vec<&String> = answers
        .iter()
        .filter_map(|(_, code)| code.as_ref())
        .collect();
    assert!(
        refusals.iter().all(|code| *code == "DS020"),
        "only sold-out refusals: {refusals:?}"
    );
    let holders: HashSet<Uuid> = answers
        .iter()
        .filter(|(_, code)| code.is_none())
        .map(|(u, _)| *u)
        .collect();
    assert_eq!(holders.len(), 50, "exactly the stock is held");
    let holds: i64 = setup
        .query_one("SELECT count(*) FROM dropstock.reservations WHERE drop_id = $1 AND status = 'reserved'", &[&drop])
        .await
        .unwrap()
        .get(0);
    assert_eq!(holds, 50, "one hold per holder");
    assert_invariant(&setup, drop).await;
}

/// Two batches name the same 8 buyers in opposite orders, 40 rounds, each on a drop of 4 units: no
/// deadlock (40P01) and no other error, every buyer answered once per batch, exactly 4 holds. Before
/// buyer locks were taken in one order, 3 rounds in 40 deadlocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crossed_batches_never_deadlock() {
    let setup = connect().await;
    let buyers = new_buyers(&setup, 8).await;
    let mut reversed = buyers.clone();
    reversed.reverse();
    let lanes = connect_many(2).await;
    for round in 0..40 {
        let drop = new_drop(&setup, 4, 60).await;
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let calls = [buyers.clone(), reversed.clone()]
            .into_iter()
            .zip(lanes.iter().cloned())
            .map(|(names, db)| {
                let start = start.clone();
                tokio::spawn(async move {
                    start.wait().await;
                    db.query(
                        "SELECT user_id, sqlstate FROM dropstock.reserve_items($1, $2)",
                        &[&drop, &names],
                    )
                    .await
                    .map(|rows| {
                        rows.iter()
                            .map(|r| (r.get::<_, Uuid>(0), r.get::<_, Option<String>>(1)))
                            .collect::<Vec<_>>()
                    })
                    .map_err(|e| sqlstate(&e))
                })
            });
        for (lane, answers) in futures_util::future::join_all(calls)
            .await
            .into_iter()
            .enumerate()
        {
            let answers = answers
                .unwrap()
                .unwrap_or_else(|code| panic!("round {round}, batch {lane}: {code}"));
            assert_eq!(answers.len(), 8, "round {round}: one answer per buyer");
            let names: Vec<Uuid> = answers.iter().map(|(u, _)| *u).collect();
            let expected = if lane == 0 { &buyers } else { &reversed };
            assert_eq!(&names, expected, "round {round}: answers in array order");
            assert!(
                answers
                    .iter()
                    .all(|(_, code)| code.is_none() || code.as_deref() == Some("DS020")),
                "round {round}: a hold or sold out: {answers:?}"
            );
        }
        assert_eq!(stock(&setup, drop).await, (0, 4, 0), "round {round}");
        assert_invariant(&setup, drop).await;
    }
}

/// The sell-out storm: 60 connections, 30 units. Batches that overlap each other and the single
/// callers (every buyer is named by two lanes), each batch sent twice, singles retried: every answer is
/// a hold or DS020, never 55P03 or 40P01; exactly the stock is held, once per holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sell_out_storm_answers_only_holds_and_sold_out() {
    let setup = connect().await;
    let drop = new_drop(&setup, 30, 60).await;
    let buyers = new_buyers(&setup, 240).await;
    let connections = connect_many(60).await;
    let start = Arc::new(tokio::sync::Barrier::new(60));
    let racers = connections.into_iter().enumerate().map(|(lane, db)| {
        let start = start.clone();
        // Lane k names buyers 4k..4k+8 (mod 240): each buyer is named by two neighbouring lanes.
        let mine: Vec<Uuid> = (0..8).map(|i| buyers[(lane * 4 + i) % 240]).collect();
        tokio::spawn(async move {
            start.wait().await;
            let mut answers: Vec<(Uuid, Result<(), String>)> = Vec::new();
            if lane % 3 != 0 {
                for _ in 0..2 {
                    let rows = db
                        .query(
                            "SELECT user_id, sqlstate FROM dropstock.reserve_items($1, $2)",
                            &[&drop, &mine],
                        )
                        .await
                        .map_err(|e| sqlstate(&e));
                    match rows {
                        Ok(rows) => answers.extend(rows.iter().map(|r| {
                            let code: Option<String> = r.get(1);
                            (r.get(0), code.map_or(Ok(()), Err))
                        })),
                        Err(code) => answers.extend(mine.iter().map(|b| (*b, Err(code.clone())))),
                    }
                }
            } else {
                for buyer in mine.iter().chain(mine.iter()) {
                    let outcome = db
                        .query_one(
                            "SELECT id FROM dropstock.reserve_item($1, $2)",
                            &[&drop, buyer],
                        )
                        .await;
                    answers.push((*buyer, outcome.map(|_| ()).map_err(|e| sqlstate(&e))));
                }
            }
            answers
        })
    });
    let answers: Vec<(Uuid, Result<(), String>)> = futures_util::future::join_all(racers)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    let odd: Vec<&String> = answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().err())
        .filter(|code| *code != "DS020")
        .collect();
    assert!(odd.is_empty(), "only holds and sold out: {odd:?}");
    let holders: HashSet<Uuid> = answers
        .iter()
        .filter(|(_, a)| a.is_ok())
        .map(|(u, _)| *u)
        .collect();
    assert_eq!(holders.len(), 30, "exactly the stock is held");
    assert_eq!(stock(&setup, drop).await, (0, 30, 0));
    assert_invariant(&setup, drop).await;
}

/// 300 buyers race for a drop of 5 sizes × 10 units, limit 3 a buyer: each asks for two sizes at once
/// (1 to 3 units), buys what they got and asks for a third size. No size is oversold, nobody passes
/// the limit across sizes, every answer is a hold or a definite refusal (sold out, limit), and a size
/// refused as sold out really had fewer units than asked, since no unit ever came back during the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buyers_race_for_sizes_with_mixed_quantities() {
    const BUYERS: usize = 300;
    const SIZES: [&str; 5] = ["US 7", "US 8", "US 9", "US 10", "US 11"];
    let setup = connect().await;
    let drop = new_sized_drop(
        &setup,
        r#"{"US 7": 10, "US 8": 10, "US 9": 10, "US 10": 10, "US 11": 10}"#,
        3,
    )
    .await;
    let buyers = new_buyers(&setup, BUYERS).await;
    let connections = connect_many(150).await;
    let start = Arc::new(tokio::sync::Barrier::new(BUYERS));

    async fn ask(
        db: &tokio_postgres::Client,
        drop: Uuid,
        buyer: Uuid,
        size: &'static str,
        units: i32,
    ) -> (&'static str, i32, Result<Uuid, String>) {
        let answer = db
            .query_one(
                "SELECT id FROM dropstock.reserve_item($1, $2, $3, $4)",
                &[&drop, &buyer, &size, &units],
            )
            .await
            .map(|row| row.get::<_, Uuid>(0))
            .map_err(|e| sqlstate(&e));
        (size, units, answer)
    }

    let racers = buyers.iter().enumerate().map(|(i, buyer)| {
        let (first, second) = (
            connections[(2 * i) % connections.len()].clone(),
            connections[(2 * i + 1) % connections.len()].clone(),
        );
        let (start, buyer) = (start.clone(), *buyer);
        tokio::spawn(async move {
            let sizes = (
                SIZES[i % 5],
                SIZES[(i / 5 + 1 + i) % 5],
                SIZES[(i / 25 + 2 + i) % 5],
            );
            let units = (
                1 + (i % 3) as i32,
                1 + (i / 3 % 2) as i32,
                1 + (i / 7 % 3) as i32,
            );
            start.wait().await;
            let (a, b) = tokio::join!(
                ask(&first, drop, buyer, sizes.0, units.0),
                ask(&second, drop, buyer, sizes.1, units.1)
            );
            let mut answers = vec![a, b];
            let holds: HashSet<Uuid> = answers
                .iter()
                .filter_map(|(_, _, answer)| answer.as_ref().ok().copied())
                .collect();
            for hold in holds {
                first
                    .query_one(
                        "SELECT id FROM dropstock.purchase($1, $2)",
                        &[&hold, &buyer],
                    )
                    .await
                    .expect("buying a hold just granted");
            }
            answers.push(ask(&first, drop, buyer, sizes.2, units.2).await);
            answers
        })
    });
    let answers: Vec<(&str, i32, Result<Uuid, String>)> = futures_util::future::join_all(racers)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();

    let left: std::collections::HashMap<String, i32> = pairs(
        &setup,
        "SELECT label, available_stock FROM dropstock.variant_status($1)",
        &[&drop],
    )
    .await;
    let mut sold_out = 0;
    for (size, units, answer) in &answers {
        match answer {
            Ok(_) => {}
            Err(code) if code == "DS021" => {}
            Err(code) if code == "DS020" => {
                sold_out += 1;
                assert!(
                    left[*size] < *units,
                    "{size} refused {units} as sold out, yet {} are left",
                    left[*size]
                );
            }
            Err(code) => panic!("an answer that is neither a hold nor a definite refusal: {code}"),
        }
    }
    assert!(sold_out > 0, "the sizes sold out during the race");
    let most: i64 = setup
        .query_one(
            "SELECT max(units)::bigint FROM (SELECT user_id, sum(quantity) AS units FROM (
                 SELECT user_id, quantity FROM dropstock.purchases WHERE drop_id = $1
                 UNION ALL
                 SELECT user_id, quantity FROM dropstock.reservations WHERE drop_id = $1 AND status = 'reserved') u
               GROUP BY user_id) b",
            &[&drop],
        )
        .await
        .unwrap()
        .get(0);
    assert!(most <= 3, "a buyer has {most} units, past the limit of 3");
    assert_eq!(
        left.values().sum::<i32>() + stock(&setup, drop).await.1 + stock(&setup, drop).await.2,
        50
    );
    assert_invariant(&setup, drop).await;
}
