//! Fair access over real connections: the waiting list served while holds expire in waves and 200 other
//! buyers hammer the drop, draws recomputed by anyone from the published seed, the cooldown that stops a
//! buyer from hoarding by re-reserving, and offers of several units or of one of several sizes. Outcomes
//! are counted exactly, and the stock (live holds + kept units + free + sold = total) adds up throughout.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dropstock_tests::db::*;
use dropstock_tests::figures::record;
use sha2::{Digest, Sha256};
use tokio_postgres::Client;
use uuid::Uuid;

/// An open race drop (started a minute ago) of `stock` units, `limit` a buyer, whose holds and offers last
/// `hold_seconds` and whose cooldown is `cooldown_seconds` (None: as long as a hold).
async fn drop_with_line(
    db: &Client,
    stock: i32,
    hold_seconds: i32,
    limit: i32,
    cooldown_seconds: Option<i32>,
) -> Uuid {
    db.query_one(
        "SELECT id FROM dropstock.create_drop(name => $1, price => 10, total_stock => $2,
                starts_at => now() - interval '1 minute', hold_seconds => $3, per_user_limit => $4,
                cooldown_seconds => $5)",
        &[
            &unique("line drop"),
            &stock,
            &hold_seconds,
            &limit,
            &cooldown_seconds,
        ],
    )
    .await
    .expect("create_drop")
    .get(0)
}

/// `buyer` joins the line of `drop` for `quantity` units of any size: their position, or the SQLSTATE.
async fn join(db: &Client, drop: Uuid, buyer: Uuid, quantity: i32) -> Result<i32, String> {
    db.query_one(
        "SELECT \"position\" FROM dropstock.join_waitlist($1, $2, NULL::text, $3)",
        &[&drop, &buyer, &quantity],
    )
    .await
    .map(|row| row.get(0))
    .map_err(|e| sqlstate(&e))
}

/// `buyer` joins the line of `drop` for one unit of any of `sizes`.
async fn join_for_sizes(db: &Client, drop: Uuid, buyer: Uuid, sizes: &[&str]) -> i32 {
    db.query_one(
        "SELECT \"position\" FROM dropstock.join_waitlist($1, $2, $3::text[])",
        &[&drop, &buyer, &sizes],
    )
    .await
    .expect("join_waitlist for sizes")
    .get(0)
}

/// A buyer's live holds on `drop`: (hold, size label, units, offered).
async fn live_holds(
    db: &Client,
    drop: Uuid,
    buyer: Uuid,
) -> Vec<(Uuid, Option<String>, i32, bool)> {
    db.query(
        "SELECT reservation_id, variant, quantity, offered FROM dropstock.buyer_holds($2) WHERE drop_id = $1",
        &[&drop, &buyer],
    )
    .await
    .expect("buyer_holds")
    .iter()
    .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
    .collect()
}

/// The live offers on `drop`: buyer -> (hold, units).
async fn live_offers(db: &Client, drop: Uuid) -> HashMap<Uuid, (Uuid, i32)> {
    db.query(
        "SELECT user_id, id, quantity FROM dropstock.reservations
          WHERE drop_id = $1 AND offered AND status = 'reserved' AND expires_at > clock_timestamp()",
        &[&drop],
    )
    .await
    .expect("live offers")
    .iter()
    .map(|row| (row.get(0), (row.get(1), row.get(2))))
    .collect()
}

/// Whether every hold of `drop` that ran out has been swept (and its units served to the line).
async fn swept(db: &Client, drop: Uuid) -> bool {
    db.query_one(
        "SELECT NOT EXISTS (SELECT FROM dropstock.reservations
                             WHERE drop_id = $1 AND status = 'reserved' AND expires_at <= clock_timestamp())",
        &[&drop],
    )
    .await
    .expect("due holds")
    .get(0)
}

/// Waits (at most `limit`) until `buyer` has a live offer on `drop`; its (hold, size label, units).
async fn offer_for(
    db: &Client,
    drop: Uuid,
    buyer: Uuid,
    limit: Duration,
) -> Option<(Uuid, Option<String>, i32)> {
    wait_for(limit, || async {
        live_holds(db, drop, buyer)
            .await
            .into_iter()
            .find(|(_, _, _, offered)| *offered)
            .map(|(hold, size, units, _)| (hold, size, units))
    })
    .await
}

/// The stock of a drop with a line, in one snapshot: free + units of live holds + kept units + sold =
/// total, for the drop and each size; held_stock counts live units and kept ones; sold matches the sales;
/// nothing negative. Kept units are what held_stock counts beyond the holds, and exist only while a buyer
/// who wants more units than came back is first in line.
async fn assert_line_invariant(db: &Client, drop: Uuid) {
    let row = db
        .query_one(
            "SELECT s.total_stock, s.available_stock, s.held_stock, s.sold_stock,
                    (SELECT coalesce(sum(r.quantity), 0)::int FROM dropstock.reservations r
                      WHERE r.drop_id = s.id AND r.status = 'reserved'),
                    (SELECT coalesce(sum(w.kept), 0)::int FROM dropstock.waitlist w WHERE w.drop_id = s.id),
                    (SELECT coalesce(sum(p.quantity), 0)::int FROM dropstock.purchases p WHERE p.drop_id = s.id),
                    (SELECT count(*)::int FROM dropstock.stock_slots t
                      WHERE t.drop_id = s.id AND (t.available < 0 OR t.sold < 0))
               FROM dropstock.drop_status($1) s",
            &[&drop],
        )
        .await
        .expect("the stock of a drop with a line");
    let (total, available, held, sold): (i32, i32, i32, i32) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let (live, kept, sales, negative): (i32, i32, i32, i32) =
        (row.get(4), row.get(5), row.get(6), row.get(7));
    assert_eq!(
        available + live + kept + sold,
        total,
        "free {available} + live {live} + kept {kept} + sold {sold} = total {total}"
    );
    assert_eq!(
        (held, sold),
        (live + kept, sales),
        "held counts live and kept units, sold the sales"
    );
    assert!(
        available >= 0 && kept >= 0 && negative == 0,
        "no negative stock"
    );
}

/// Checks, while nobody is serving the line, that `drop`'s units went to its line in order: every offer
/// ever made went to a buyer of `line` (in join order), one offer per buyer, nobody skipped (the offered
/// buyers are exactly the first of the line); the rest of the line still waits in order; no other buyer
/// holds or held anything but `holders`; nobody has two live holds; and the stock adds up. Returns how
/// many buyers were offered units.
async fn assert_served_in_order(
    db: &mut Client,
    drop: Uuid,
    line: &[Uuid],
    holders: &[Uuid],
) -> usize {
    let place: HashMap<Uuid, usize> = line.iter().enumerate().map(|(i, b)| (*b, i)).collect();
    // Two transactions giving units back at once serve the line side by side (each skips the places the
    // other is serving): between their commits, a later place can be served while an earlier one is not
    // yet. So the line is read under its lock taken exclusively, as join_waitlist takes it: it waits for
    // whoever is giving units back, and nobody gives any back until the reading is over.
    let reading = db.transaction().await.expect("a transaction");
    reading
        .execute(
            "SELECT pg_advisory_xact_lock(dropstock._line_key($1, 0::smallint))",
            &[&drop],
        )
        .await
        .expect("the line's lock");
    let offers: Vec<Uuid> = reading
        .query(
            "SELECT user_id FROM dropstock.reservations WHERE drop_id = $1 AND offered",
            &[&drop],
        )
        .await
        .expect("offers")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut sorted: Vec<usize> = offers
        .iter()
        .map(|buyer| {
            *place
                .get(buyer)
                .unwrap_or_else(|| panic!("an offer went to {buyer}, who is not in the line"))
        })
        .collect();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..offers.len()).collect::<Vec<_>>(),
        "the offered buyers are exactly the first {} of the line, each offered once",
        offers.len()
    );
    let waiting: Vec<Uuid> = reading
        .query(
            "SELECT user_id FROM dropstock.waitlist WHERE drop_id = $1 ORDER BY place",
            &[&drop],
        )
        .await
        .expect("the line")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        waiting,
        line[offers.len()..].to_vec(),
        "the buyers not offered yet still wait, in join order"
    );
    let length: i32 = reading
        .query_one("SELECT dropstock.waitlist_length($1)", &[&drop])
        .await
        .expect("waitlist_length")
        .get(0);
    assert_eq!(length as usize, waiting.len(), "waitlist_length");
    if let Some(next) = waiting.first() {
        let position: Option<i32> = reading
            .query_one("SELECT dropstock.waitlist_position($1, $2)", &[&drop, next])
            .await
            .expect("waitlist_position")
            .get(0);
        assert_eq!(position, Some(1), "the first waiting buyer is next in line");
    }
    let holders: HashSet<&Uuid> = holders.iter().collect();
    let strangers: Vec<(Uuid, bool)> = reading
        .query(
            "SELECT user_id, offered FROM dropstock.reservations WHERE drop_id = $1",
            &[&drop],
        )
        .await
        .expect("holds")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .filter(|(buyer, offered)| !(*offered || holders.contains(buyer)))
        .collect();
    assert!(
        strangers.is_empty(),
        "holds outside the line and the first holders: {strangers:?}"
    );
    let doubled: i64 = reading
        .query_one(
            "SELECT count(*) FROM (SELECT user_id FROM dropstock.reservations
                                    WHERE drop_id = $1 AND status = 'reserved' AND expires_at > clock_timestamp()
                                    GROUP BY user_id HAVING count(*) > 1) d",
            &[&drop],
        )
        .await
        .expect("doubled holds")
        .get(0);
    assert_eq!(doubled, 0, "nobody has two live holds");
    reading
        .commit()
        .await
        .expect("let the line be served again");
    assert_line_invariant(db, drop).await;
    offers.len()
}

/// 200 buyers wait on a drop of 20 units whose holds run out in waves, while 200 other buyers call
/// reserve_item on their own connections the whole time. After every wave the offered buyers are exactly
/// the next ones in line (each offer bought, cancelled or left to lapse), the hammering buyers never get a
/// hold (only DS020 or DS022), no unit is held twice and the stock adds up; the drop sells out to the
/// line.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_line_is_served_in_order_while_holds_expire_in_waves() {
    const STOCK: i32 = 20;
    const HOLD_SECONDS: i32 = 3;
    const WAITING: usize = 200;
    const HAMMERING: usize = 200;
    // Of each wave's offers: bought, then cancelled (the unit goes on down the line at once); the rest lapse.
    const BOUGHT_PER_WAVE: usize = 4;
    const CANCELLED_PER_WAVE: usize = 2;
    let mut setup = connect().await;
    let drop = drop_with_line(&setup, STOCK, HOLD_SECONDS, 1, None).await;
    let holders = new_buyers(&setup, STOCK as usize).await;
    let line = new_buyers(&setup, WAITING).await;
    let hammering = new_buyers(&setup, HAMMERING).await;
    // The hammering connections are opened, and each makes the call it will repeat, before the first
    // holds' clock starts: a backend's first reserve_item compiles and plans it, and 200 doing so at
    // once took the two cores for seconds, long enough for a wave of offers to run out before the test
    // could act on it.
    let connections = connect_many(HAMMERING).await;
    let warm_up = drop_with_line(&setup, 1, 60, 1, None).await;
    let (warm_holder, warm_waiter) = (new_buyer(&setup).await, new_buyer(&setup).await);
    reserve(&setup, warm_up, warm_holder).await;
    join(&setup, warm_up, warm_waiter, 1)
        .await
        .expect("the warm-up line");
    let warmed = futures_util::future::join_all(connections.iter().zip(&hammering).map(
        |(db, buyer)| async move {
            db.query_one(
                "SELECT id FROM dropstock.reserve_item($1, $2)",
                &[&warm_up, buyer],
            )
            .await
            .map_err(|e| sqlstate(&e))
            .err()
        },
    ))
    .await;
    assert!(
        warmed
            .iter()
            .all(|code| matches!(code.as_deref(), Some("DS020" | "DS022"))),
        "the warm-up calls were refused as the hammering will be: {warmed:?}"
    );
    let started = Instant::now();

    let held: i64 = setup
        .query_one(
            "SELECT count(*) FROM dropstock.reserve_items($1, $2) WHERE reservation_id IS NOT NULL",
            &[&drop, &holders],
        )
        .await
        .expect("the first holds")
        .get(0);
    assert_eq!(held, STOCK as i64, "the first holders took every unit");
    // Joined one after another, so the join order is known; each call commits before the next starts.
    for (i, buyer) in line.iter().enumerate() {
        match join(&setup, drop, *buyer, 1).await {
            Ok(position) => assert!(position >= 1, "a position from 1"),
            Err(code) => panic!("buyer {i} of the line could not join: {code}"),
        }
    }

    // The hammering buyers: reserve_item in a loop on a connection each, until the drop is sold out.
    let stop = Arc::new(AtomicBool::new(false));
    let hammers: Vec<_> = hammering
        .iter()
        .zip(connections)
        .map(|(buyer, db)| {
            let (stop, buyer) = (stop.clone(), *buyer);
            tokio::spawn(async move {
                let mut refusals: HashMap<String, usize> = HashMap::new();
                while !stop.load(Ordering::Relaxed) {
                    match db
                        .query_one(
                            "SELECT id FROM dropstock.reserve_item($1, $2)",
                            &[&drop, &buyer],
                        )
                        .await
                    {
                        Ok(row) => panic!(
                            "{buyer}, not in the line, got hold {} while others waited",
                            row.get::<_, Uuid>(0)
                        ),
                        Err(e) => *refusals.entry(sqlstate(&e)).or_default() += 1,
                    }
                    // A pause between calls keeps 200 loops from taking both cores from the sweep.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                refusals
            })
        })
        .collect();

    let (mut waves, mut bought, mut cancelled, mut lapsed) = (0, 0, 0, 0);
    let mut acted: HashSet<Uuid> = HashSet::new();
    loop {
        let (_, _, sold) = stock(&setup, drop).await;
        if sold == STOCK {
            break;
        }
        // The next wave: live offers nobody acted on yet, and every hold that ran out swept.
        let fresh = wait_for(Duration::from_secs(3 * HOLD_SECONDS as u64 + 5), || async {
            let offers = live_offers(&setup, drop).await;
            let new: Vec<(Uuid, Uuid)> = offers
                .iter()
                .filter(|(buyer, _)| !acted.contains(*buyer))
                .map(|(buyer, (hold, _))| (*buyer, *hold))
                .collect();
            (!new.is_empty() && swept(&setup, drop).await).then_some(new)
        })
        .await
        .unwrap_or_else(|| panic!("wave {}: no new offers after the holds ran out", waves + 1));
        waves += 1;
        // Act on the new offers at once (they last a hold's time), in line order: buy some, cancel some,
        // let the rest lapse; then check the line.
        let mut fresh = fresh;
        let place: HashMap<Uuid, usize> = line.iter().enumerate().map(|(i, b)| (*b, i)).collect();
        fresh.sort_by_key(|(buyer, _)| place[buyer]);
        let left = STOCK - stock(&setup, drop).await.2;
        for (k, (buyer, hold)) in fresh.iter().enumerate() {
            acted.insert(*buyer);
            if k < BOUGHT_PER_WAVE && (k as i32) < left {
                setup
                    .query_one("SELECT id FROM dropstock.purchase($1, $2)", &[hold, buyer])
                    .await
                    .unwrap_or_else(|e| panic!("wave {waves}: buying an offer: {}", described(&e)));
                bought += 1;
            } else if k < BOUGHT_PER_WAVE + CANCELLED_PER_WAVE {
                setup
                    .query_one(
                        "SELECT status::text FROM dropstock.cancel_reservation($1, $2)",
                        &[hold, buyer],
                    )
                    .await
                    .unwrap_or_else(|e| {
                        panic!("wave {waves}: cancelling an offer: {}", described(&e))
                    });
                cancelled += 1;
                let position: Option<i32> = setup
                    .query_one(
                        "SELECT dropstock.waitlist_position($1, $2)",
                        &[&drop, buyer],
                    )
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(
                    position, None,
                    "a buyer who cancelled an offer is not in line"
                );
            } else {
                lapsed += 1;
            }
        }
        let offered = assert_served_in_order(&mut setup, drop, &line, &holders).await;
        assert!(
            offered < WAITING,
            "the line outlasts the stock: {offered} offered"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut refusals: HashMap<String, usize> = HashMap::new();
    for hammer in hammers {
        for (code, n) in hammer.await.unwrap() {
            *refusals.entry(code).or_default() += n;
        }
    }
    let elapsed = started.elapsed();
    let odd: Vec<(&String, &usize)> = refusals
        .iter()
        .filter(|(code, _)| *code != "DS020" && *code != "DS022")
        .collect();
    assert!(
        odd.is_empty(),
        "the hammering buyers were refused only as sold out: {odd:?}"
    );
    let offered = assert_served_in_order(&mut setup, drop, &line, &holders).await;
    assert_eq!(
        stock(&setup, drop).await,
        (0, 0, STOCK),
        "sold out to the line"
    );
    let sold_to_line: i64 = setup
        .query_one(
            "SELECT count(*) FROM dropstock.purchases WHERE drop_id = $1 AND user_id = ANY($2)",
            &[&drop, &line],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        sold_to_line, STOCK as i64,
        "every unit was sold to the line"
    );
    assert_eq!(bought, STOCK as usize);
    let calls: usize = refusals.values().sum();
    record(
        "waitlist 1 line served in waves",
        &format!(
            "{WAITING} waiting, {STOCK} units, holds of {HOLD_SECONDS} s: {waves} waves, {} offers ({bought} bought, \
             {cancelled} cancelled, {lapsed} lapsed) in line order, 0 skipped; {HAMMERING} other buyers' {calls} \
             reservations refused ({} DS020, {} DS022), 0 holds; {:.1} s",
            offered,
            refusals.get("DS020").copied().unwrap_or(0),
            refusals.get("DS022").copied().unwrap_or(0),
            elapsed.as_secs_f64()
        ),
    );
}

/// A draw drop of `stock` units whose entries are open (for an hour), holds of `hold_seconds`.
async fn draw_drop(db: &Client, stock: i32, hold_seconds: i32) -> Uuid {
    db.query_one(
        "SELECT id FROM dropstock.create_drop(name => $1, price => 10, total_stock => $2,
                starts_at => now() - interval '1 minute', hold_seconds => $3,
                ends_at => now() + interval '1 hour', mode => 'draw')",
        &[&unique("draw drop"), &stock, &hold_seconds],
    )
    .await
    .expect("create_drop, a draw")
    .get(0)
}

/// Closes the entries of `drop` and draws it with `seed` in one transaction, so that the worker's own
/// draw (of drops whose entries closed) never sees it closed and undrawn.
async fn close_and_draw(db: &mut Client, drop: Uuid, seed: Option<&str>) -> String {
    let draw = db.transaction().await.unwrap();
    draw.execute(
        "UPDATE dropstock.drops SET ends_at = now() - interval '1 millisecond' WHERE id = $1",
        &[&drop],
    )
    .await
    .expect("close the entries");
    let seed: String = draw
        .query_one(
            "SELECT seed FROM dropstock.run_draw($1, $2)",
            &[&drop, &seed],
        )
        .await
        .expect("run_draw")
        .get(0);
    draw.commit().await.unwrap();
    seed
}

/// The published order of a drawn drop: (place, entry, username, ticket).
async fn draw_result(db: &Client, drop: Uuid) -> Vec<(i32, Uuid, String, String)> {
    db.query(
        "SELECT place, entry_id, username, ticket FROM dropstock.draw_result($1) ORDER BY place",
        &[&drop],
    )
    .await
    .expect("draw_result")
    .iter()
    .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
    .collect()
}

/// sha256(seed || the entry id's 16 bytes), in hex: the ticket, computed outside the database.
fn ticket(seed: &str, entry: Uuid) -> String {
    let mut hash = Sha256::new();
    hash.update(seed.as_bytes());
    hash.update(entry.as_bytes());
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A draw of 3 units among 12 entrants: the published order is the one anyone recomputes from the seed,
/// with the published SQL and independently here; the first 3 get offers; when their offers lapse, the
/// next 3 get theirs. Two drops with the same entrants and different seeds are drawn in different orders,
/// a drop is drawn once, and a draw without a seed gets a fresh 64-hex one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draw_is_recomputable_from_its_seed_and_lapsed_winners_move_down() {
    const STOCK: i32 = 3;
    const ENTRANTS: usize = 12;
    let mut db = connect().await;
    let entrants = new_buyers(&db, ENTRANTS).await;
    let names: HashMap<String, Uuid> = pairs(
        &db,
        "SELECT username, id FROM dropstock.users WHERE id = ANY($1)",
        &[&entrants],
    )
    .await;
    let (first, second) = (
        draw_drop(&db, STOCK, 2).await,
        draw_drop(&db, STOCK, 600).await,
    );
    for drop in [first, second] {
        for buyer in &entrants {
            let fresh: bool = db
                .query_one(
                    "SELECT fresh FROM dropstock.enter_draw($1, $2)",
                    &[&drop, buyer],
                )
                .await
                .expect("enter_draw")
                .get(0);
            assert!(fresh, "a first entry");
        }
        // Entering twice is the same entry; reserving a draw is refused.
        let again: bool = db
            .query_one(
                "SELECT fresh FROM dropstock.enter_draw($1, $2)",
                &[&drop, &entrants[0]],
            )
            .await
            .unwrap()
            .get(0);
        assert!(!again, "entering twice returns the entry");
        let refused = db
            .query_one(
                "SELECT id FROM dropstock.reserve_item($1, $2)",
                &[&drop, &entrants[0]],
            )
            .await
            .map(|_| ())
            .map_err(|e| sqlstate(&e));
        assert_eq!(
            refused,
            Err("DS014".into()),
            "a draw is entered, not reserved"
        );
    }

    let seed = "a seed published before the draw";
    assert_eq!(close_and_draw(&mut db, first, Some(seed)).await, seed);
    let fresh_seed = close_and_draw(&mut db, second, None).await;
    assert!(
        fresh_seed.len() == 64
            && fresh_seed
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "a draw without a seed gets 64 hex characters: {fresh_seed}"
    );
    let again = db
        .query_one("SELECT 1 FROM dropstock.run_draw($1, $2)", &[&first, &seed])
        .await
        .map(|_| ())
        .map_err(|e| sqlstate(&e));
    assert_eq!(again, Err("DS016".into()), "a drop is drawn once");

    let (entries, published_seed, winners): (i32, Option<String>, Option<i32>) = {
        let row = db
            .query_one(
                "SELECT entries, seed, winners FROM dropstock.draw_status($1)",
                &[&first],
            )
            .await
            .expect("draw_status");
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(
        (entries, published_seed.as_deref(), winners),
        (ENTRANTS as i32, Some(seed), Some(STOCK))
    );
    let result = draw_result(&db, first).await;
    assert_eq!(result.len(), ENTRANTS);
    assert_eq!(
        result.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=ENTRANTS as i32).collect::<Vec<_>>(),
        "places 1 to {ENTRANTS}"
    );
    // Recomputed with the SQL the README publishes.
    let recomputed: Vec<(i64, String)> = pairs(
        &db,
        "SELECT row_number() OVER (ORDER BY sha256(convert_to(s.seed, 'UTF8') || uuid_send(r.entry_id)), r.entry_id) AS place,
                r.username
           FROM dropstock.draw_result($1) r, dropstock.draw_status($1) s ORDER BY place",
        &[&first],
    )
    .await;
    assert_eq!(
        recomputed
            .iter()
            .map(|(_, n)| n.clone())
            .collect::<Vec<_>>(),
        result.iter().map(|r| r.2.clone()).collect::<Vec<_>>(),
        "the published SQL gives the published order"
    );
    // Recomputed here, from the seed and the entry ids alone.
    let mut by_ticket: Vec<(String, Uuid, String)> = result
        .iter()
        .map(|(_, entry, name, _)| (ticket(seed, *entry), *entry, name.clone()))
        .collect();
    for (_, entry, _, published) in &result {
        assert_eq!(published, &ticket(seed, *entry), "the published ticket");
    }
    by_ticket.sort();
    assert_eq!(
        by_ticket.iter().map(|t| t.2.clone()).collect::<Vec<_>>(),
        result.iter().map(|r| r.2.clone()).collect::<Vec<_>>(),
        "sha256(seed || entry id) gives the published order"
    );
    let order_second: Vec<String> = draw_result(&db, second)
        .await
        .into_iter()
        .map(|r| r.2)
        .collect();
    assert_ne!(
        order_second,
        result.iter().map(|r| r.2.clone()).collect::<Vec<_>>(),
        "the same entrants drawn with another seed come out in another order"
    );

    // The winners hold offers at once; nobody else does.
    let winner = |place: usize| names[&result[place].2];
    let offered: HashSet<Uuid> = live_offers(&db, first).await.into_keys().collect();
    assert_eq!(
        offered,
        (0..STOCK as usize).map(winner).collect::<HashSet<_>>(),
        "places 1 to {STOCK} hold offers"
    );
    assert_line_invariant(&db, first).await;
    // Their offers lapse (2 s): the next places get theirs.
    let next: HashSet<Uuid> = (STOCK as usize..2 * STOCK as usize).map(winner).collect();
    let moved = wait_until(Duration::from_secs(10), || async {
        live_offers(&db, first)
            .await
            .into_keys()
            .collect::<HashSet<_>>()
            == next
    })
    .await;
    assert!(moved, "the lapsed winners' units went to places 4 to 6");
    for place in 0..STOCK as usize {
        assert!(
            live_holds(&db, first, winner(place)).await.is_empty(),
            "a lapsed winner holds nothing"
        );
    }
    assert_line_invariant(&db, first).await;
    record(
        "waitlist 2 draw",
        &format!(
            "{ENTRANTS} entrants, {STOCK} units: the published order recomputed from the seed in SQL and with sha256 \
             here, identical; another seed, another order; {STOCK} lapsed winners' units offered to places {}-{}",
            STOCK + 1,
            2 * STOCK
        ),
    );
}

/// An error's SQLSTATE and message, for a failure's report.
fn described(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(e) => format!("{} {}", e.code().code(), e.message()),
        None => error.to_string(),
    }
}

/// A refusal's SQLSTATE, message and detail (DS022's detail is the time a buyer may try again); a hold
/// granted instead reads as "a hold".
fn refusal(
    outcome: Result<tokio_postgres::Row, tokio_postgres::Error>,
) -> (String, String, String) {
    let error = match outcome {
        Ok(_) => return ("a hold".into(), "a hold was granted".into(), String::new()),
        Err(error) => error,
    };
    let (message, detail) = error
        .as_db_error()
        .map(|e| {
            (
                e.message().to_owned(),
                e.detail().unwrap_or_default().to_owned(),
            )
        })
        .unwrap_or_default();
    (sqlstate(&error), message, detail)
}

/// A buyer whose hold ran out while someone waited cannot take the unit back: re-reserving is refused with
/// DS022 and the time they may try again, from the moment the hold runs out (swept or not), and for the
/// whole cooldown, also once the line is empty and the unit free again; the unit goes to the line. The same
/// for a cancelled hold. When nobody was waiting, they reserve again like anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_whose_hold_ran_out_cannot_take_the_unit_back_from_the_line() {
    const COOLDOWN: i32 = 60;
    let db = connect().await;
    let drop = drop_with_line(&db, 1, 1, 1, Some(COOLDOWN)).await;
    let [hoarder, waiting]: [Uuid; 2] = new_buyers(&db, 2).await.try_into().unwrap();
    let hold = reserve(&db, drop, hoarder).await;
    assert_eq!(join(&db, drop, waiting, 1).await, Ok(1));
    let refused_join = join(&db, drop, hoarder, 1).await;
    assert_eq!(
        refused_join,
        Err("DS024".into()),
        "a holder does not join the line"
    );
    let expires_at: f64 = db
        .query_one(
            "SELECT extract(epoch FROM expires_at)::float8 FROM dropstock.reservations WHERE id = $1",
            &[&hold],
        )
        .await
        .unwrap()
        .get(0);
    // Re-reserving from the instant the hold runs out (by the database clock), before or after the sweep.
    let ran_out = wait_until(Duration::from_secs(5), || async {
        db.query_one(
            "SELECT clock_timestamp() >= expires_at FROM dropstock.reservations WHERE id = $1",
            &[&hold],
        )
        .await
        .unwrap()
        .get::<_, bool>(0)
    })
    .await;
    assert!(ran_out, "the hold ran out");
    // Every answer, from that instant until the unit reached the line (swept or not yet), then once the
    // line is empty (the waiting buyer holds the offer), then once nobody waits and the unit is free
    // again (the offer cancelled): the cooldown stands all along.
    let try_again = || async {
        refusal(
            db.query_one(
                "SELECT id FROM dropstock.reserve_item($1, $2)",
                &[&drop, &hoarder],
            )
            .await,
        )
    };
    let mut answers = Vec::new();
    let offer = loop {
        answers.push(("while the unit went to the line", try_again().await));
        if let Some((offer, _, units)) = offer_for(&db, drop, waiting, Duration::ZERO).await {
            break (offer, units);
        }
        assert!(answers.len() < 500, "the unit never reached the line");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let tries = answers.len();
    answers.push(("once the waiting buyer held the offer", try_again().await));
    assert_eq!(offer.1, 1, "the waiting buyer was offered the unit");
    db.execute(
        "SELECT dropstock.cancel_reservation($1, $2)",
        &[&offer.0, &waiting],
    )
    .await
    .expect("the offer cancelled");
    assert_eq!(
        stock(&db, drop).await.0,
        1,
        "nobody waits: the unit is free"
    );
    answers.push((
        "once nobody waited and the unit was free",
        try_again().await,
    ));
    // Each DS022 names the time: its DETAIL is the cooldown's end (the hold ran out + cooldown_seconds).
    for (when, (code, message, detail)) in &answers {
        if code != "DS022" {
            continue;
        }
        assert!(
            !detail.is_empty(),
            "DS022's DETAIL carries the time they may try again ({when}; message: {message:?})"
        );
        let again_at: f64 = db
            .query_one(
                "SELECT extract(epoch FROM $1::text::timestamptz)::float8",
                &[detail],
            )
            .await
            .unwrap_or_else(|e| panic!("DETAIL {detail:?} is a time: {e}"))
            .get(0);
        assert!(
            (again_at - (expires_at + COOLDOWN as f64)).abs() < 1.5,
            "may try again {:.1} s after the hold ran out, not {COOLDOWN}",
            again_at - expires_at
        );
    }
    let codes: Vec<String> = answers
        .iter()
        .map(|(when, (code, _, _))| format!("{code} ({when})"))
        .collect();
    for (k, (when, (code, message, _))) in answers.iter().enumerate() {
        assert_eq!(
            code,
            "DS022",
            "answer {} of {} ({when}): re-reserving within the cooldown: {message}; all answers: {codes:?}",
            k + 1,
            answers.len()
        );
    }
    assert!(live_holds(&db, drop, hoarder).await.is_empty());
    assert_line_invariant(&db, drop).await;

    // A cancelled hold, while someone waits: the same.
    let drop = drop_with_line(&db, 1, 600, 1, None).await;
    let [canceller, next]: [Uuid; 2] = new_buyers(&db, 2).await.try_into().unwrap();
    let hold = reserve(&db, drop, canceller).await;
    assert_eq!(join(&db, drop, next, 1).await, Ok(1));
    db.execute(
        "SELECT dropstock.cancel_reservation($1, $2)",
        &[&hold, &canceller],
    )
    .await
    .unwrap();
    let (code, _, _) = refusal(
        db.query_one(
            "SELECT id FROM dropstock.reserve_item($1, $2)",
            &[&drop, &canceller],
        )
        .await,
    );
    assert_eq!(
        code, "DS022",
        "re-reserving a cancelled hold while someone waits"
    );
    assert!(
        offer_for(&db, drop, next, Duration::from_secs(5))
            .await
            .is_some(),
        "the cancelled unit went to the line"
    );
    assert_line_invariant(&db, drop).await;

    // Nobody waiting: the buyer whose hold ran out competes like anyone, and gets the unit again.
    let drop = drop_with_line(&db, 1, 1, 1, Some(COOLDOWN)).await;
    let alone = new_buyer(&db).await;
    let first = reserve(&db, drop, alone).await;
    let back = wait_until(Duration::from_secs(5), || async {
        db.query_one(
            "SELECT clock_timestamp() >= expires_at FROM dropstock.reservations WHERE id = $1",
            &[&first],
        )
        .await
        .unwrap()
        .get::<_, bool>(0)
    })
    .await;
    assert!(back, "the hold ran out");
    let second = reserve(&db, drop, alone).await;
    assert_ne!(first, second, "a new hold, not the one that ran out");
    assert_line_invariant(&db, drop).await;
    record(
        "waitlist 3 no hoarding",
        &format!(
            "a buyer whose hold ran out re-reserved {tries} times from the moment it ran out, then with the line \
             empty and with the unit free again: all DS022 with the time {COOLDOWN} s on, the unit offered to the \
             waiting buyer; the same after a cancel; with nobody \
             waiting, a new hold"
        ),
    );
}

/// A buyer waiting for 2 units is offered both in one hold once two came back, never one (the first is kept
/// for them meanwhile, and the buyer behind them waits); a buyer waiting for sizes {A, B} is offered the
/// first of those that comes back, and a size they did not ask for is not offered to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_are_all_the_units_asked_for_of_a_size_asked_for() {
    let db = connect().await;
    let drop = drop_with_line(&db, 3, 600, 2, None).await;
    let holders = new_buyers(&db, 3).await;
    let [pair, single]: [Uuid; 2] = new_buyers(&db, 2).await.try_into().unwrap();
    let holds: Vec<Uuid> = {
        let mut holds = Vec::new();
        for buyer in &holders {
            holds.push(reserve(&db, drop, *buyer).await);
        }
        holds
    };
    assert_eq!(join(&db, drop, pair, 2).await, Ok(1));
    assert_eq!(join(&db, drop, single, 1).await, Ok(2));
    let cancel = |k: usize| {
        let (db, hold, buyer) = (&db, holds[k], holders[k]);
        async move {
            db.execute(
                "SELECT dropstock.cancel_reservation($1, $2)",
                &[&hold, &buyer],
            )
            .await
            .expect("cancel");
        }
    };
    cancel(0).await;
    // One unit back: kept for the buyer who wants two; nothing offered, nothing free.
    let kept = wait_until(Duration::from_secs(5), || async {
        let row = db
            .query_one(
                "SELECT coalesce(sum(kept), 0)::int FROM dropstock.waitlist WHERE drop_id = $1",
                &[&drop],
            )
            .await
            .unwrap();
        row.get::<_, i32>(0) == 1
    })
    .await;
    assert!(
        kept,
        "the unit that came back is kept for the buyer first in line"
    );
    assert!(
        live_holds(&db, drop, pair).await.is_empty(),
        "no offer of 1 of 2"
    );
    assert!(
        live_holds(&db, drop, single).await.is_empty(),
        "the next buyer waits their turn"
    );
    assert_eq!(
        stock(&db, drop).await,
        (0, 3, 0),
        "the kept unit counts as held"
    );
    assert_line_invariant(&db, drop).await;
    cancel(1).await;
    let (_, _, units) = offer_for(&db, drop, pair, Duration::from_secs(5))
        .await
        .expect("both units offered once two came back");
    assert_eq!(units, 2, "one offer of both units");
    assert_eq!(live_holds(&db, drop, pair).await.len(), 1, "in one hold");
    assert!(live_holds(&db, drop, single).await.is_empty());
    assert_eq!(
        db.query_one(
            "SELECT dropstock.waitlist_position($1, $2)",
            &[&drop, &single]
        )
        .await
        .unwrap()
        .get::<_, Option<i32>>(0),
        Some(1),
        "the buyer behind is next"
    );
    assert_line_invariant(&db, drop).await;
    cancel(2).await;
    let (_, _, units) = offer_for(&db, drop, single, Duration::from_secs(5))
        .await
        .expect("the third unit went to the next buyer");
    assert_eq!(units, 1);
    assert_eq!(stock(&db, drop).await, (0, 3, 0));
    assert_line_invariant(&db, drop).await;

    // Sizes: waiting for A or B. C comes back first (not asked for: free), then B (offered), then A (free).
    let drop = new_sized_drop(&db, r#"{"A": 1, "B": 1, "C": 1}"#, 1).await;
    let holders = new_buyers(&db, 3).await;
    let mut holds = Vec::new();
    for (buyer, size) in holders.iter().zip(["A", "B", "C"]) {
        let hold: Uuid = db
            .query_one(
                "SELECT id FROM dropstock.reserve_item($1, $2, $3)",
                &[&drop, buyer, &size],
            )
            .await
            .expect("reserve a size")
            .get(0);
        holds.push(hold);
    }
    let either = new_buyer(&db).await;
    assert_eq!(join_for_sizes(&db, drop, either, &["A", "B"]).await, 1);
    let give_back = |k: usize| {
        let (db, hold, buyer) = (&db, holds[k], holders[k]);
        async move {
            db.execute(
                "SELECT dropstock.cancel_reservation($1, $2)",
                &[&hold, &buyer],
            )
            .await
            .expect("cancel");
        }
    };
    give_back(2).await;
    let free: HashMap<String, i32> = pairs(
        &db,
        "SELECT label, available_stock FROM dropstock.variant_status($1)",
        &[&drop],
    )
    .await;
    assert_eq!(free["C"], 1, "a size nobody waits for is free again");
    assert!(
        live_holds(&db, drop, either).await.is_empty(),
        "C was not asked for"
    );
    give_back(1).await;
    let (_, size, units) = offer_for(&db, drop, either, Duration::from_secs(5))
        .await
        .expect("B offered");
    assert_eq!((size.as_deref(), units), (Some("B"), 1));
    give_back(0).await;
    let free: HashMap<String, i32> = pairs(
        &db,
        "SELECT label, available_stock FROM dropstock.variant_status($1)",
        &[&drop],
    )
    .await;
    assert_eq!(
        (free["A"], free["B"], free["C"]),
        (1, 0, 1),
        "once served, the buyer waits no more: A is free"
    );
    assert_eq!(
        live_holds(&db, drop, either).await.len(),
        1,
        "one offer, not two"
    );
    assert_line_invariant(&db, drop).await;
    record(
        "waitlist 4 quantities and sizes",
        "a buyer waiting for 2 units offered both in one hold after the second came back (the first kept, \
         the buyer behind waiting); a buyer waiting for A or B offered B, C and A left free",
    );
}
