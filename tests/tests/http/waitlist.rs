//! Fair access through the adapter: waiting lists, offers, draws and a buyer's live holds over REST, and
//! each buyer's offers reaching their own inbox on the feed and nobody else's.
//!
//! The offer tests with the real worker (`an_offer_reaches_its_buyer_alone_and_is_bought_like_a_hold`)
//! need `shared_preload_libraries = 'dropstock'`: the worker makes and publishes offers. The others that
//! test the feed stand in for the worker with `NOTIFY dropstock_inbox` themselves, so they test the
//! adapter alone.

use std::time::Duration;

use dropstock_tests::adapter::*;
use dropstock_tests::db::*;
use futures_util::StreamExt;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// These tests LISTEN on the worker's channels with each other and with the feed tests' adapters; a
/// burst in one delays what another waits for against the clock, so they take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WITHIN: Duration = Duration::from_secs(5);

fn waitlist(drop: &str) -> String {
    format!("/api/drops/{drop}/waitlist")
}

/// A drop of `stock` units, all held by one buyer; the drop, the holder and the hold.
async fn held_drop(adapter: &Adapter, stock: i32, hold_seconds: i32) -> (String, String, String) {
    let drop = adapter
        .create_drop(
            json!({"name": unique("waited for"), "price": 40, "totalStock": stock,
                            "perUserLimit": stock, "holdSeconds": hold_seconds}),
        )
        .await;
    let drop = id(&drop);
    let holder = adapter.new_buyer().await;
    let (status, hold) = adapter
        .post(
            "/api/reservations",
            json!({"dropId": drop, "userId": holder, "quantity": stock}),
        )
        .await;
    assert_eq!(status, 201, "{hold}");
    (drop, holder, id(&hold["data"]))
}

async fn join(adapter: &Adapter, drop: &str, buyer: &str) -> (u16, Value) {
    adapter
        .post(&waitlist(drop), json!({"userId": buyer}))
        .await
}

async fn position(adapter: &Adapter, drop: &str, buyer: &str) -> Value {
    let (status, answer) = adapter
        .get(&format!("{}?userId={buyer}", waitlist(drop)))
        .await;
    assert_eq!(status, 200, "{answer}");
    answer["data"].clone()
}

/// The inbox id the extension names a key by, computed by the database as the contract says.
async fn inbox_id(db: &tokio_postgres::Client, key: &str) -> String {
    db.query_one(
        "SELECT encode(sha256(convert_to($1, 'UTF8')), 'hex')",
        &[&key],
    )
    .await
    .unwrap()
    .get(0)
}

/// What the worker sends for an offer, stood in for.
async fn notify_offer(db: &tokio_postgres::Client, payload: &Value) {
    db.execute(
        "SELECT pg_notify('dropstock_inbox', $1)",
        &[&payload.to_string()],
    )
    .await
    .unwrap();
}

/// A stock notice for a drop that does not exist: a marker every client of the whole feed receives,
/// after whatever was relayed before it.
async fn notify_marker(db: &tokio_postgres::Client) -> String {
    let drop = new_id();
    let payload =
        json!({"dropId": drop, "availableStock": 0, "totalStock": 1, "seq": 1, "purchases": []});
    notify(db, &payload).await;
    drop
}

/// Every message up to `drop`'s stock message (the marker), which must come within `WITHIN`.
async fn until_marker(feed: &mut Feed, drop: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let message = feed
            .next_message(WITHIN)
            .await
            .unwrap_or_else(|| panic!("no marker within {WITHIN:?}; got {seen:?}"));
        let is_marker = message["dropId"] == drop
            || message["args"]
                .get(0)
                .is_some_and(|payload| payload["dropId"] == drop);
        if is_marker {
            return seen;
        }
        seen.push(message);
    }
}

fn is_offer(message: &Value) -> bool {
    message["type"] == "offer" || message["event"] == "offer"
}

#[tokio::test]
async fn buyers_join_a_sold_out_drops_line_and_move_up_when_someone_ahead_leaves() {
    let adapter = Adapter::start().await;
    let (drop, holder, _) = held_drop(&adapter, 1, 60).await;
    let (grace, bob) = (adapter.new_buyer().await, adapter.new_buyer().await);

    let (status, first) = join(&adapter, &drop, &grace).await;
    assert_eq!(status, 201, "a new place: {first}");
    let entry = &first["data"];
    assert_eq!(entry["dropId"], drop);
    assert_eq!(entry["userId"], grace);
    assert_eq!(entry["position"], 1);
    assert_eq!(entry["quantity"], 1);
    assert_eq!(entry["variants"], Value::Null, "a drop without sizes");
    assert!(entry["joinedAt"].is_string());
    let (status, again) = join(&adapter, &drop, &grace).await;
    assert_eq!(status, 200, "the same place again: {again}");
    assert_eq!(again["data"]["position"], 1);
    assert_eq!(again["data"]["joinedAt"], entry["joinedAt"]);

    let (status, second) = join(&adapter, &drop, &bob).await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(second["data"]["position"], 2);
    assert_eq!(
        position(&adapter, &drop, &bob).await,
        json!({"position": 2, "waiting": 2})
    );
    let (status, anyone) = adapter.get(&waitlist(&drop)).await;
    assert_eq!(status, 200, "{anyone}");
    assert_eq!(
        anyone["data"],
        json!({"position": null, "waiting": 2}),
        "no buyer named: the line's length only"
    );
    assert_eq!(
        position(&adapter, &drop, &holder).await,
        json!({"position": null, "waiting": 2}),
        "not waiting"
    );

    // Somebody else trying to reserve is told to join the line, which is waiting for the units; a buyer
    // in it is told their turn will come; the drop says how many wait.
    let carol = adapter.new_buyer().await;
    assert_refused(
        &adapter.reserve(&drop, &carol).await,
        409,
        "DS020",
        "waiting",
    );
    assert_refused(
        &adapter.reserve(&drop, &bob).await,
        409,
        "DS025",
        "number 2 in line",
    );
    let (_, shown) = adapter.get(&format!("/api/drops/{drop}")).await;
    assert_eq!(shown["data"]["waiting"], 2, "{shown}");
    assert!(
        shown["data"].get("mode").is_none(),
        "a race reads as before: {shown}"
    );

    let leave = format!("{}/leave", waitlist(&drop));
    let (status, left) = adapter.post(&leave, json!({"userId": grace})).await;
    assert_eq!(status, 200, "{left}");
    assert_eq!(
        left["data"],
        json!({"dropId": drop, "userId": grace, "left": true})
    );
    assert_eq!(
        position(&adapter, &drop, &bob).await,
        json!({"position": 1, "waiting": 1}),
        "bob moved up"
    );
    let (status, twice) = adapter.post(&leave, json!({"userId": grace})).await;
    assert_eq!(status, 200, "{twice}");
    assert_eq!(twice["data"]["left"], false, "nothing left to leave");
    assert_eq!(
        position(&adapter, &drop, &grace).await["position"],
        Value::Null
    );
}

#[tokio::test]
async fn joining_a_line_is_refused_with_a_status_and_a_reason() {
    let adapter = Adapter::start().await;
    let (drop, holder, _) = held_drop(&adapter, 1, 60).await;
    let buyer = adapter.new_buyer().await;

    assert_refused(
        &join(&adapter, &new_id(), &buyer).await,
        404,
        "DS001",
        "does not exist",
    );
    assert_refused(
        &join(&adapter, &drop, &new_id()).await,
        404,
        "DS002",
        "does not exist",
    );
    assert_refused(&join(&adapter, &drop, &holder).await, 409, "DS024", "");
    let open = adapter.open_drop(5).await;
    assert_refused(&join(&adapter, &open, &buyer).await, 409, "DS023", "5");
    let later = adapter
        .create_drop(json!({"name": unique("later"), "price": 1, "totalStock": 1,
                            "startsAt": "2099-01-01T00:00:00Z"}))
        .await;
    assert_refused(&join(&adapter, &id(&later), &buyer).await, 409, "DS010", "");
    assert_refused(
        &adapter
            .post(&waitlist(&drop), json!({"userId": buyer, "quantity": 0}))
            .await,
        422,
        "22023",
        "quantity",
    );
    assert_refused(
        &adapter
            .post(
                &waitlist(&drop),
                json!({"userId": buyer, "variant": "US 9", "variants": ["US 9"]}),
            )
            .await,
        400,
        "bad_request",
        "not both",
    );
    assert_refused(
        &adapter
            .post(
                &waitlist(&drop),
                json!({"userId": buyer, "variants": "US 9"}),
            )
            .await,
        400,
        "bad_request",
        "variants must be a list",
    );
    assert_refused(
        &adapter.post(&waitlist(&drop), json!({})).await,
        400,
        "bad_request",
        "userId is required",
    );
    assert_refused(
        &adapter
            .post(&waitlist("nope"), json!({"userId": buyer}))
            .await,
        400,
        "bad_request",
        "drop id",
    );
    assert_refused(
        &adapter
            .get(&format!("{}?userId=nope", waitlist(&drop)))
            .await,
        400,
        "bad_request",
        "userId",
    );

    // Sizes: a sized drop's line takes one size or several, by label.
    let sized = adapter
        .create_drop(
            json!({"name": unique("sized"), "price": 90, "variants": {"US 8": 1, "US 9": 1}}),
        )
        .await;
    let sized = id(&sized);
    for label in ["US 8", "US 9"] {
        let holder = adapter.new_buyer().await;
        let (status, hold) = adapter
            .post(
                "/api/reservations",
                json!({"dropId": sized, "userId": holder, "variant": label}),
            )
            .await;
        assert_eq!(status, 201, "{hold}");
    }
    assert_refused(&join(&adapter, &sized, &buyer).await, 422, "DS012", "");
    assert_refused(
        &adapter
            .post(
                &waitlist(&sized),
                json!({"userId": buyer, "variant": "US 14"}),
            )
            .await,
        422,
        "DS013",
        "US 14",
    );
    let (status, either) = adapter
        .post(
            &waitlist(&sized),
            json!({"userId": buyer, "variants": ["US 8", "US 9"]}),
        )
        .await;
    assert_eq!(status, 201, "{either}");
    assert_eq!(either["data"]["variants"], json!(["US 8", "US 9"]));
}

#[tokio::test]
async fn the_line_routes_answer_head_and_options_and_say_what_they_allow() {
    let adapter = Adapter::start().await;
    let drop = adapter.open_drop(1).await;
    let head = adapter
        .http()
        .head(adapter.url(&waitlist(&drop)))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    for (path, allow) in [
        (waitlist(&drop), "GET, HEAD, POST, OPTIONS"),
        (format!("{}/leave", waitlist(&drop)), "POST, OPTIONS"),
        (
            format!("/api/drops/{drop}/draw"),
            "GET, HEAD, POST, OPTIONS",
        ),
        (format!("/api/drops/{drop}/draw/entries"), "POST, OPTIONS"),
        (
            format!("/api/users/{}/reservations", new_id()),
            "GET, HEAD, OPTIONS",
        ),
    ] {
        let refused = adapter
            .http()
            .delete(adapter.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 405, "{path}");
        assert_eq!(refused.headers()["allow"], allow, "{path}");
    }
}

#[tokio::test]
async fn new_buyers_get_their_inbox_key_once_and_new_drops_take_a_mode_and_a_cooldown() {
    let adapter = Adapter::start().await;
    let (status, buyer) = adapter
        .post("/api/users", json!({"username": unique("keyed")}))
        .await;
    assert_eq!(status, 201, "{buyer}");
    let key = buyer["data"]["inboxKey"].as_str().expect("an inbox key");
    assert!(key.len() >= 32, "a secret worth the name: {key:?}");
    let (_, other) = adapter
        .post("/api/users", json!({"username": unique("keyed")}))
        .await;
    assert_ne!(other["data"]["inboxKey"], key, "one key per buyer");

    let drop = adapter
        .create_drop(
            json!({"name": unique("cooling"), "price": 5, "totalStock": 1,
                            "holdSeconds": 30, "cooldownSeconds": 120}),
        )
        .await;
    // Nothing a buyer holds or reads carries the key.
    let buyer_id = id(&buyer["data"]);
    let (_, hold) = adapter.reserve(&id(&drop), &buyer_id).await;
    assert!(!hold.to_string().contains(key), "{hold}");
    let (_, holds) = adapter
        .get(&format!("/api/users/{buyer_id}/reservations"))
        .await;
    assert!(!holds.to_string().contains(key), "{holds}");

    assert_refused(
        &adapter
            .post_as(
                "/api/drops",
                ADMIN_TOKEN,
                json!({"name": unique("no end"), "price": 5, "totalStock": 1, "mode": "draw"}),
            )
            .await,
        422,
        "22023",
        "",
    );
    assert_refused(
        &adapter
            .post_as(
                "/api/drops",
                ADMIN_TOKEN,
                json!({"name": unique("odd"), "price": 5, "totalStock": 1, "mode": "auction"}),
            )
            .await,
        422,
        "22023",
        "",
    );
}

#[tokio::test]
async fn a_cancelled_hold_while_others_wait_puts_its_buyer_in_a_cooldown_with_retry_after() {
    let adapter = Adapter::start().await;
    let (drop, holder, hold) = held_drop(&adapter, 1, 60).await;
    // Two wait: the first gets the unit back as an offer, the second is still waiting after.
    for _ in 0..2 {
        let waiting = adapter.new_buyer().await;
        assert_eq!(join(&adapter, &drop, &waiting).await.0, 201);
    }
    let (status, cancelled) = adapter
        .post(
            &format!("/api/reservations/{hold}/cancel"),
            json!({"userId": holder}),
        )
        .await;
    assert_eq!(status, 200, "{cancelled}");
    let response = adapter
        .http()
        .post(adapter.url("/api/reservations"))
        .json(&json!({"dropId": drop, "userId": holder}))
        .send()
        .await
        .unwrap();
    let retry_after: Option<u64> = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok());
    let refused = read(response).await;
    assert_refused(&refused, 429, "DS022", "again from");
    let seconds = retry_after.expect("Retry-After on a cooldown");
    assert!(
        (1..=60).contains(&seconds),
        "the cooldown (the hold time, 60 s) is what is left: {seconds}"
    );
}

#[tokio::test]
async fn a_buyers_live_holds_are_theirs_to_read() {
    let adapter = Adapter::start().await;
    let (drop, holder, hold) = held_drop(&adapter, 2, 60).await;
    let (status, holds) = adapter
        .get(&format!("/api/users/{holder}/reservations"))
        .await;
    assert_eq!(status, 200, "{holds}");
    let holds = holds["data"].as_array().expect("a list").clone();
    assert_eq!(holds.len(), 1, "{holds:?}");
    assert_eq!(holds[0]["id"], hold);
    assert_eq!(holds[0]["dropId"], drop);
    assert_eq!(holds[0]["userId"], holder);
    assert_eq!(holds[0]["status"], "reserved");
    assert_eq!(holds[0]["offered"], false);
    assert_eq!(holds[0]["quantity"], 2);
    assert!(holds[0]["dropName"]
        .as_str()
        .unwrap()
        .starts_with("waited for"));
    assert!(holds[0]["expiresAt"].is_string());

    // A bought hold is no longer live.
    let (status, sale) = adapter
        .post(
            "/api/purchases",
            json!({"userId": holder, "reservationId": hold}),
        )
        .await;
    assert_eq!(status, 200, "{sale}");
    let (_, after) = adapter
        .get(&format!("/api/users/{holder}/reservations"))
        .await;
    assert_eq!(after["data"], json!([]));
    assert_refused(
        &adapter.get("/api/users/nope/reservations").await,
        400,
        "bad_request",
        "user id",
    );
}

fn buyer_token(user: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": user, "exp": chrono::Utc::now().timestamp() + 3600}),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn in_jwt_mode_buyers_wait_and_read_holds_only_as_themselves() {
    let adapter =
        Adapter::start_with(Options::admin().with("DROPSTOCK_JWT_SECRET", JWT_SECRET)).await;
    let mut buyers = Vec::new();
    for _ in 0..3 {
        let (status, buyer) = adapter
            .post_as(
                "/api/users",
                ADMIN_TOKEN,
                json!({"username": unique("jwt")}),
            )
            .await;
        assert_eq!(status, 201, "{buyer}");
        buyers.push(id(&buyer["data"]));
    }
    let (holder, ada, grace) = (&buyers[0], &buyers[1], &buyers[2]);
    let drop = adapter.open_drop(1).await;
    let (status, hold) = adapter
        .post_as(
            "/api/reservations",
            &buyer_token(holder),
            json!({"dropId": drop}),
        )
        .await;
    assert_eq!(status, 201, "{hold}");

    assert_refused(
        &join(&adapter, &drop, ada).await,
        401,
        "unauthorized",
        "buyer token",
    );
    assert_refused(
        &adapter
            .post_as(
                &waitlist(&drop),
                &buyer_token(ada),
                json!({"userId": grace}),
            )
            .await,
        403,
        "forbidden",
        "userId",
    );
    let (status, entry) = adapter
        .post_as(&waitlist(&drop), &buyer_token(ada), json!({}))
        .await;
    assert_eq!(status, 201, "{entry}");
    assert_eq!(entry["data"]["userId"], ada.as_str());

    // Positions: the token's own, or the length only; never somebody else's.
    let (status, mine) = adapter.get_as(&waitlist(&drop), &buyer_token(ada)).await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine["data"], json!({"position": 1, "waiting": 1}));
    assert_eq!(
        adapter.get(&waitlist(&drop)).await.1["data"],
        json!({"position": null, "waiting": 1})
    );
    assert_refused(
        &adapter
            .get(&format!("{}?userId={ada}", waitlist(&drop)))
            .await,
        401,
        "unauthorized",
        "token",
    );
    assert_refused(
        &adapter
            .get_as(
                &format!("{}?userId={ada}", waitlist(&drop)),
                &buyer_token(grace),
            )
            .await,
        403,
        "forbidden",
        "",
    );

    let holds = format!("/api/users/{holder}/reservations");
    assert_refused(&adapter.get(&holds).await, 401, "unauthorized", "");
    assert_refused(
        &adapter.get_as(&holds, &buyer_token(ada)).await,
        403,
        "forbidden",
        "",
    );
    let (status, own) = adapter.get_as(&holds, &buyer_token(holder)).await;
    assert_eq!(status, 200, "{own}");
    assert_eq!(own["data"][0]["id"], id(&hold["data"]));
}

#[tokio::test]
async fn an_offer_reaches_only_the_connections_that_opened_its_inbox() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let adapter = Adapter::start().await;
    adapter.wait_listening().await;
    let db = connect().await;
    let (ada_key, grace_key) = (unique("ada-key"), unique("grace-key"));
    let drop = new_id();

    // Ada on two connections (one opens the inbox on connect, one by a message), Grace, and a watcher.
    let mut ada = adapter.ws(&format!("?inbox={ada_key}")).await;
    ada.snapshot().await;
    let mut ada_later = adapter.ws("").await;
    ada_later.snapshot().await;
    say(
        &mut ada_later,
        &json!({"type": "subscribe", "inboxKey": ada_key}).to_string(),
    )
    .await;
    ada_later
        .expect(WITHIN, "subscribed", |m| m["type"] == "subscribed")
        .await;
    let mut grace = adapter.ws(&format!("?inbox={grace_key}")).await;
    grace.snapshot().await;
    let mut watcher = adapter.ws("").await;
    watcher.snapshot().await;
    let mut ada_socketio = adapter
        .socketio_with_auth(&json!({"inboxKey": ada_key}))
        .await
        .expect("a Socket.IO client opens its inbox");
    let mut grace_socketio = adapter
        .socketio_with_auth(&json!({"inboxKey": grace_key}))
        .await
        .expect("a Socket.IO client opens its inbox");
    // And one that opens Ada's inbox after connecting, with a `subscribe` event and its acknowledgement.
    let mut ada_socketio_later = adapter
        .socketio_with_auth(&json!({}))
        .await
        .expect("a Socket.IO client without an inbox");
    say(
        &mut ada_socketio_later,
        &format!(r#"421["subscribe",{{"inboxKey":"{ada_key}"}}]"#),
    )
    .await;
    let ack = tokio::time::timeout(WITHIN, async {
        loop {
            match ada_socketio_later.socket.next().await {
                Some(Ok(Message::Text(text))) if text.as_str().starts_with("431") => {
                    return text.as_str().to_owned()
                }
                Some(Ok(_)) => continue,
                other => panic!("no acknowledgement: {other:?}"),
            }
        }
    })
    .await
    .expect("the subscribe event is acknowledged");
    assert_eq!(ack, r#"431[{"ok":true}]"#);

    notify_offer(
        &db,
        &json!({"inbox": inbox_id(&db, &ada_key).await, "dropId": drop,
                "expiresAt": "2026-11-28T10:00:00.25+00:00", "variant": "US 9", "quantity": 2}),
    )
    .await;
    let marker = notify_marker(&db).await;

    let offer = json!({"type": "offer", "dropId": drop, "expiresAt": "2026-11-28T10:00:00.250Z",
                       "variant": "US 9", "quantity": 2});
    for feed in [&mut ada, &mut ada_later] {
        let before = until_marker(feed, &marker).await;
        let offers: Vec<&Value> = before.iter().filter(|m| is_offer(m)).collect();
        assert_eq!(offers, [&offer], "Ada's connections get her offer once");
    }
    for feed in [&mut ada_socketio, &mut ada_socketio_later] {
        let before = until_marker(feed, &marker).await;
        let offers: Vec<&Value> = before.iter().filter(|m| is_offer(m)).collect();
        assert_eq!(
            offers,
            [&json!({"event": "offer", "args": [offer.clone()]})]
        );
    }
    for feed in [&mut grace, &mut watcher, &mut grace_socketio] {
        let before = until_marker(feed, &marker).await;
        assert!(
            !before.iter().any(is_offer),
            "another buyer's offer reached a connection not in her inbox: {before:?}"
        );
    }
    // A key that is not a string, or both credentials, are refused in words; the feed goes on.
    say(
        &mut watcher,
        &json!({"type": "subscribe", "inboxKey": ada_key, "token": "x"}).to_string(),
    )
    .await;
    let error = watcher
        .expect(WITHIN, "an error", |m| m["type"] == "error")
        .await;
    assert!(error["message"].as_str().unwrap().contains("one of them"));
}

#[tokio::test]
async fn in_jwt_mode_a_token_opens_its_buyers_inbox_and_a_bad_one_is_refused() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let adapter =
        Adapter::start_with(Options::admin().with("DROPSTOCK_JWT_SECRET", JWT_SECRET)).await;
    adapter.wait_listening().await;
    let db = connect().await;
    let buyer = new_buyer(&db).await.to_string();
    let inbox: String = db
        .query_one("SELECT dropstock.inbox_of($1::text::uuid)", &[&buyer])
        .await
        .unwrap()
        .get(0);
    assert_eq!(inbox.len(), 64, "{inbox}");

    let mut by_token = adapter.ws(&format!("?token={}", buyer_token(&buyer))).await;
    by_token.snapshot().await;
    let mut socketio = adapter
        .socketio_with_auth(&json!({"token": buyer_token(&buyer)}))
        .await
        .expect("a valid token opens the inbox");
    let refused = adapter
        .socketio_with_auth(&json!({"token": "not-a-jwt"}))
        .await
        .err()
        .expect("a bad token is refused");
    assert!(refused.contains("not a valid JWT"), "{refused}");
    let url = format!("ws://127.0.0.1:{}/ws?token=not-a-jwt", adapter.port);
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("expected 401, got {other:?}"),
    }

    let drop = new_id();
    notify_offer(
        &db,
        &json!({"inbox": inbox, "dropId": drop, "expiresAt": "2026-11-28T10:00:00Z",
                "variant": null, "quantity": 1}),
    )
    .await;
    let offer = by_token.expect(WITHIN, "the buyer's offer", is_offer).await;
    assert_eq!(offer["dropId"], drop.as_str());
    let event = socketio.expect(WITHIN, "the buyer's offer", is_offer).await;
    assert_eq!(event["args"][0]["dropId"], drop.as_str());
}

/// Needs the background worker: it makes the offer and publishes it.
#[tokio::test]
async fn an_offer_reaches_its_buyer_alone_and_is_bought_like_a_hold() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let adapter = Adapter::start().await;
    adapter.wait_listening().await;
    let (drop, holder, hold) = held_drop(&adapter, 1, 60).await;
    let (grace, grace_key) = adapter.new_buyer_with_inbox().await;
    let (bob, bob_key) = adapter.new_buyer_with_inbox().await;
    let mut grace_feed = adapter.ws(&format!("?inbox={grace_key}")).await;
    grace_feed.snapshot().await;
    let mut bob_feed = adapter.ws(&format!("?inbox={bob_key}")).await;
    bob_feed.snapshot().await;
    let mut watcher = adapter.ws(&format!("?drop={drop}")).await;
    watcher.snapshot().await;
    assert_eq!(join(&adapter, &drop, &grace).await.0, 201);
    assert_eq!(join(&adapter, &drop, &bob).await.0, 201);
    let waiting = watcher
        .expect(WITHIN, "a stock message with two waiting", |m| {
            m["type"] == "stock" && m["waiting"] == 2
        })
        .await;
    assert_eq!(waiting["availableStock"], 0);

    let (status, _) = adapter
        .post(
            &format!("/api/reservations/{hold}/cancel"),
            json!({"userId": holder}),
        )
        .await;
    assert_eq!(status, 200);
    let offer = grace_feed.expect(WITHIN, "Grace's offer", is_offer).await;
    assert_eq!(offer["dropId"], drop.as_str());
    assert_eq!(offer["quantity"], 1);
    assert_eq!(offer["variant"], Value::Null);

    // Bob, second in line, hears the line move but never Grace's offer.
    let db = connect().await;
    let marker = notify_marker(&db).await;
    let before = until_marker(&mut bob_feed, &marker).await;
    assert!(!before.iter().any(is_offer), "{before:?}");
    assert_eq!(position(&adapter, &drop, &bob).await["position"], 1);

    let (status, holds) = adapter
        .get(&format!("/api/users/{grace}/reservations"))
        .await;
    assert_eq!(status, 200, "{holds}");
    let offered = &holds["data"][0];
    assert_eq!(offered["dropId"], drop.as_str());
    assert_eq!(offered["offered"], true);
    assert_eq!(offered["expiresAt"], offer["expiresAt"]);
    let (status, sale) = adapter
        .post(
            "/api/purchases",
            json!({"userId": grace, "reservationId": offered["id"]}),
        )
        .await;
    assert_eq!(status, 200, "an offer is bought like any hold: {sale}");
    assert_eq!(sale["data"]["dropId"], drop.as_str());
}

#[tokio::test]
async fn buyers_enter_a_draw_and_the_result_is_public_and_recomputable() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let adapter = Adapter::start().await;
    // Room for the entries and refusals below on a busy machine before entries close.
    let closes = chrono::Utc::now() + chrono::Duration::seconds(8);
    let drop = adapter
        .create_drop(
            json!({"name": unique("draw"), "price": 200, "totalStock": 1, "mode": "draw",
                            "endsAt": closes.to_rfc3339()}),
        )
        .await;
    assert_eq!(drop["mode"], "draw");
    let drop = id(&drop);
    let entries = format!("/api/drops/{drop}/draw/entries");
    let (ada, grace) = (adapter.new_buyer().await, adapter.new_buyer().await);

    let (status, entry) = adapter.post(&entries, json!({"userId": ada})).await;
    assert_eq!(status, 201, "{entry}");
    assert_eq!(entry["data"]["dropId"], drop);
    assert_eq!(entry["data"]["userId"], ada);
    assert_eq!(entry["data"]["quantity"], 1);
    let ada_entry = id(&entry["data"]);
    let (status, again) = adapter.post(&entries, json!({"userId": ada})).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(id(&again["data"]), ada_entry, "one entry per buyer");
    assert_eq!(
        adapter.post(&entries, json!({"userId": grace})).await.0,
        201
    );

    // Not a race: no reserving, no line before the draw; the draw is not run while entries are open.
    assert_refused(&adapter.reserve(&drop, &grace).await, 409, "DS014", "");
    assert_refused(&join(&adapter, &drop, &grace).await, 409, "DS014", "");
    let run = format!("/api/drops/{drop}/draw");
    assert_refused(
        &adapter.post_as(&run, ADMIN_TOKEN, json!({})).await,
        409,
        "DS017",
        "",
    );
    assert_refused(
        &adapter.post(&run, json!({})).await,
        401,
        "unauthorized",
        "admin token",
    );
    let (status, before) = adapter.get(&run).await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(
        before["data"],
        json!({"entries": 2, "drawnAt": null, "seed": null, "winners": null, "order": []})
    );

    // A race drop has no draw.
    let race = adapter.open_drop(1).await;
    assert_refused(
        &adapter
            .post(
                &format!("/api/drops/{race}/draw/entries"),
                json!({"userId": ada}),
            )
            .await,
        409,
        "DS015",
        "",
    );
    assert_refused(
        &adapter.get(&format!("/api/drops/{race}/draw")).await,
        409,
        "DS015",
        "",
    );
    assert_refused(
        &adapter.get(&format!("/api/drops/{}/draw", new_id())).await,
        404,
        "DS001",
        "",
    );

    // Once entries close the worker draws; an admin's draw after that is refused as a second one.
    let drawn = wait_for(Duration::from_secs(20), || async {
        let (_, draw) = adapter.get(&run).await;
        draw["data"]["drawnAt"].is_string().then_some(draw)
    })
    .await
    .expect("the worker draws once entries close");
    let draw = &drawn["data"];
    assert_eq!(draw["entries"], 2);
    assert_eq!(draw["winners"], 1, "one unit: one offer");
    let seed = draw["seed"].as_str().unwrap();
    let order = draw["order"].as_array().unwrap();
    assert_eq!(order.len(), 2);
    assert_eq!(order[0]["place"], 1);
    assert!(
        order.iter().all(|place| place.get("userId").is_none()),
        "usernames only: {order:?}"
    );
    // Anyone recomputes the order from the published seed.
    let db = connect().await;
    for place in order {
        let ticket: String = db
            .query_one(
                "SELECT encode(sha256(convert_to($1, 'UTF8') || uuid_send($2::text::uuid)), 'hex')",
                &[&seed, &place["entryId"].as_str().unwrap()],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(place["ticket"], ticket.as_str());
    }
    assert!(order[0]["ticket"].as_str() < order[1]["ticket"].as_str());
    assert_refused(
        &adapter.post_as(&run, ADMIN_TOKEN, json!({})).await,
        409,
        "DS016",
        "",
    );
    assert_refused(
        &adapter
            .post(&entries, json!({"userId": adapter.new_buyer().await}))
            .await,
        410,
        "DS011",
        "",
    );
}
