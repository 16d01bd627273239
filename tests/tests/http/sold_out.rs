//! The sold-out shortcut: once the feed says a drop is sold out with nobody waiting, the adapter answers
//! reservations "sold out" by itself, except those of the drop's own buyers, and stops with the next
//! notice of the drop.

use std::time::Duration;

use dropstock_tests::adapter::*;
use dropstock_tests::db::*;
use serde_json::json;

/// How many reservations the adapter answered from its shortcut so far.
async fn shortcut_answers(adapter: &Adapter) -> u64 {
    adapter
        .metrics()
        .await
        .lines()
        .find_map(|line| line.strip_prefix("dropstock_http_sold_out_shortcut_answers_total "))
        .map_or(0, |count| count.trim().parse().unwrap())
}

/// A drop of one unit, held by a buyer: once the worker's notice of the sell-out has turned the
/// shortcut on, a bot's answer comes from it. Returns the drop, the holder, their hold and the bot.
async fn sold_out_to_one_holder(adapter: &Adapter) -> (String, String, String, String) {
    let drop = adapter.open_drop(1).await;
    let holder = adapter.new_buyer().await;
    let (status, held) = adapter.reserve(&drop, &holder).await;
    assert_eq!(status, 201, "{held}");
    let hold = id(&held["data"]);
    let bot = adapter.new_buyer().await;
    let shortcut_on = wait_until(Duration::from_secs(10), || async {
        let answer = adapter.reserve(&drop, &bot).await;
        assert_refused(&answer, 409, "DS020", "is sold out");
        shortcut_answers(adapter).await > 0
    })
    .await;
    assert!(shortcut_on, "the shortcut never answered");
    (drop, holder, hold, bot)
}

#[tokio::test]
async fn a_sold_out_drop_is_answered_without_the_database_except_for_its_buyers() {
    let adapter = Adapter::start().await;
    adapter.wait_listening().await;
    let (drop, holder, hold, bot) = sold_out_to_one_holder(&adapter).await;

    // The holder still gets their own hold back, not "sold out".
    let (status, again) = adapter.reserve(&drop, &holder).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(id(&again["data"]), hold);

    // A unit comes back through this adapter: the shortcut is off from the cancel's answer on, before
    // the notice that says so, so the bot's very next request reaches the database and gets it.
    let (status, cancelled) = adapter
        .post(
            &format!("/api/reservations/{hold}/cancel"),
            json!({ "userId": holder }),
        )
        .await;
    assert_eq!(status, 200, "{cancelled}");
    let (status, served) = adapter.reserve(&drop, &bot).await;
    assert_eq!(status, 201, "the unit that came back: {served}");
}

#[tokio::test]
async fn a_join_of_the_line_through_the_adapter_turns_the_shortcut_off_at_once() {
    let adapter = Adapter::start().await;
    adapter.wait_listening().await;
    let (drop, _, _, bot) = sold_out_to_one_holder(&adapter).await;
    // A buyer joins the line: from its answer on, before the notice that says so, the database answers
    // the bot, and tells it to join the line too.
    let waiter = adapter.new_buyer().await;
    let (status, joined) = adapter
        .post(
            &format!("/api/drops/{drop}/waitlist"),
            json!({ "userId": waiter }),
        )
        .await;
    assert_eq!(status, 201, "{joined}");
    assert_refused(
        &adapter.reserve(&drop, &bot).await,
        409,
        "DS020",
        "join the waiting list",
    );
}

#[tokio::test]
async fn a_hold_made_elsewhere_while_sold_out_is_answered_as_the_buyers_own() {
    let adapter = Adapter::start().await;
    adapter.wait_listening().await;
    let (drop, holder, hold, bot) = sold_out_to_one_holder(&adapter).await;

    // Behind this adapter's back (another adapter, plain SQL), the unit comes back and goes to the bot
    // in one transaction: available, held and sold stay what the last notice said.
    connect()
        .await
        .batch_execute(&format!(
            "BEGIN;
             SELECT dropstock.cancel_reservation('{hold}', '{holder}');
             SELECT dropstock.reserve_item('{drop}', '{bot}');
             COMMIT;"
        ))
        .await
        .expect("the unit changes hands");
    // The drop gained a hold while sold out, so it is published again and its buyers read again: the
    // bot gets their hold back instead of "sold out".
    let own_hold = wait_until(Duration::from_secs(10), || async {
        adapter.reserve(&drop, &bot).await.0 == 200
    })
    .await;
    assert!(
        own_hold,
        "the bot's hold made elsewhere was answered \"sold out\""
    );
}

#[tokio::test]
async fn an_adapter_started_after_the_sell_out_answers_for_the_drop_too() {
    let first = Adapter::start().await;
    first.wait_listening().await;
    let drop = first.open_drop(1).await;
    let holder = first.new_buyer().await;
    assert_eq!(first.reserve(&drop, &holder).await.0, 201);
    // The sell-out's notice has gone out once the first adapter's shortcut answers. A new bot each
    // time: the per-buyer rate limit must not be what answers.
    let published = wait_until(Duration::from_secs(10), || async {
        let bot = first.new_buyer().await;
        first.reserve(&drop, &bot).await;
        shortcut_answers(&first).await > 0
    })
    .await;
    assert!(published, "the sell-out was never published");

    // A second adapter starts now: no notice of the drop will come, since nothing about it changes.
    let second = Adapter::start().await;
    second.wait_listening().await;
    let shortcut_on = wait_until(Duration::from_secs(10), || async {
        let bot = second.new_buyer().await;
        let answer = second.reserve(&drop, &bot).await;
        assert_refused(&answer, 409, "DS020", "is sold out");
        shortcut_answers(&second).await > 0
    })
    .await;
    assert!(
        shortcut_on,
        "the second adapter sent every request to the database"
    );
    // Its buyers still reach the database: the holder gets their own hold back.
    assert_eq!(second.reserve(&drop, &holder).await.0, 200);
}

#[tokio::test]
async fn while_buyers_wait_in_line_the_database_answers() {
    let adapter = Adapter::start().await;
    adapter.wait_listening().await;
    let drop = adapter.open_drop(1).await;
    let holder = adapter.new_buyer().await;
    assert_eq!(adapter.reserve(&drop, &holder).await.0, 201);
    let db = connect().await;
    let waiter = adapter.new_buyer().await;
    db.execute(
        &format!("SELECT dropstock.join_waitlist('{drop}', '{waiter}')"),
        &[],
    )
    .await
    .unwrap();
    // Once the notice with the line has arrived, the answer is the database's: join the line.
    let bot = adapter.new_buyer().await;
    let told_to_join = wait_until(Duration::from_secs(10), || async {
        let (status, answer) = adapter.reserve(&drop, &bot).await;
        status == 409
            && answer["message"]
                .as_str()
                .unwrap_or("")
                .contains("join the waiting list")
    })
    .await;
    assert!(told_to_join, "the line was never seen");
}
