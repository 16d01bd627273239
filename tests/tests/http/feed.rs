//! The adapter's live feed (`GET /ws`) end to end: snapshot on connect, notifications relayed to every
//! client, `resync` after the LISTEN connection is lost, slow clients dropped without holding anyone
//! back, and 1001 on shutdown; and the same feed as Socket.IO events on `/socket.io/`.
//!
//! Most tests stand in for the background worker by sending its `NOTIFY dropstock, '<json>'` themselves, so
//! they test the adapter alone. `a_reservation_reaches_two_screens_within_a_second` needs the real worker
//! (`shared_preload_libraries = 'dropstock'`): it fails if no worker publishes the change.

use std::time::Duration;

use dropstock_tests::adapter::*;
use dropstock_tests::db::*;
use dropstock_tests::faults::terminate_listen_backends;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// The feed tests share one NOTIFY channel with each other (and with every adapter on the cluster): a burst
/// or a killed LISTEN connection in one would delay or cut off the messages another waits for against the
/// clock. They take turns even when the test harness runs them on parallel threads.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn is_stock(drop: &str) -> impl Fn(&Value) -> bool + '_ {
    move |message| message["type"] == "stock" && message["dropId"] == drop
}

fn notice(drop: &str, available: i64, seq: i64, purchases: Value) -> Value {
    json!({"dropId": drop, "availableStock": available, "totalStock": 10, "seq": seq, "purchases": purchases})
}

#[tokio::test]
async fn clients_get_a_snapshot_on_connect() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let adapter = Adapter::start().await;
    let drop = adapter.open_drop(7).await;
    let buyer = adapter.new_buyer().await;
    assert_eq!(adapter.reserve(&drop, &buyer).await.0, 201);

    let mut one = adapter.ws(&format!("?drop={drop}")).await;
    let snapshot = one.snapshot().await;
    let drops = snapshot["drops"].as_array().unwrap();
    assert_eq!(drops.len(), 1, "only the drop asked for: {snapshot}");
    assert_eq!(drops[0]["id"], drop.as_str());
    assert_eq!(drops[0]["availableStock"], 6);
    assert_eq!(drops[0]["totalStock"], 7);

    let mut all = adapter.ws("").await;
    let snapshot = all.snapshot().await;
    let listed = snapshot["drops"].as_array().unwrap();
    assert!(
        listed.iter().any(|item| item["id"] == drop.as_str()),
        "every active drop: {snapshot}"
    );

    // Pings are answered (keepalive), and the feed ignores what clients say.
    all.socket
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Some(Ok(Message::Pong(payload))) = all.socket.next().await {
                return payload;
            }
        }
    })
    .await
    .expect("a pong");
    assert_eq!(&pong[..], b"are you there");
    say(&mut all, "hello").await;

    let metrics = adapter.metrics().await;
    assert!(
        metrics.contains("dropstock_http_websocket_clients 2"),
        "{metrics}"
    );

    for (query, status) in [("?drop=42", 400), (&*format!("?drop={}", new_id()), 404)] {
        let url = format!("ws://127.0.0.1:{}/ws{query}", adapter.port);
        match tokio_tungstenite::connect_async(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), status)
            }
            other => panic!("{query}: expected HTTP {status}, got {other:?}"),
        }
    }
    let plain = adapter.get("/ws").await;
    assert_refused(&plain, 400, "bad_request", "WebSocket");
}

#[tokio::test]
async fn notifications_reach_every_client_of_the_drop() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let adapter = Adapter::start().await;
    adapter.wait_listening().await;
    let db = connect().await;
    let drop = adapter.open_drop(10).await;
    wait_announced(&db, &drop).await;
    let other_drop = new_id();
    let mut first = adapter.ws(&format!("?drop={drop}")).await;
    let mut second = adapter.ws(&format!("?drop={drop}")).await;
    let mut everything = adapter.ws("").await;
    for feed in [&mut first, &mut second, &mut everything] {
        feed.snapshot().await;
    }

    // Another drop's change first: the filtered clients must not see it.
    notify(&db, &notice(&other_drop, 3, 1, json!([]))).await;
    let purchases = json!([
        {"id": new_id(), "createdAt": "2026-11-27T21:30:02.000Z", "user": {"id": new_id(), "username": "grace"}},
        {"id": new_id(), "createdAt": "2026-11-27T21:30:01.000Z", "user": {"id": new_id(), "username": "ada"}},
    ]);
    notify(&db, &notice(&drop, 8, 41, purchases)).await;

    // Clients may hear the worker's notice of this drop's creation first; then the one sent here.
    let within = Duration::from_secs(2);
    for feed in [&mut first, &mut second] {
        let mut seen = Vec::new();
        let stock = loop {
            let message = feed
                .next_message(within)
                .await
                .expect("the stock message with seq 41");
            if message["type"] == "stock" && message["seq"] == 41 {
                break message;
            }
            seen.push(message);
        };
        assert!(
            seen.iter()
                .all(|message| message["type"] == "resync" || message["dropId"] == drop.as_str()),
            "a client of one drop hears only that drop: {seen:?}"
        );
        assert_eq!(
            stock,
            json!({"type": "stock", "dropId": drop, "availableStock": 8, "totalStock": 10, "seq": 41})
        );
        let older = feed.next_message(within).await.expect("a purchase");
        assert_eq!(older["type"], "purchase");
        assert_eq!(older["dropId"], drop.as_str());
        assert_eq!(older["user"]["username"], "ada", "oldest first: {older}");
        assert_eq!(
            older["user"],
            json!({"username": "ada"}),
            "no buyer id in the feed"
        );
        assert_eq!(older["seq"], 41);
        let newer = feed.next_message(within).await.expect("a purchase");
        assert_eq!(newer["user"]["username"], "grace");
        assert_eq!(newer["createdAt"], "2026-11-27T21:30:02.000Z");
    }
    everything
        .expect(within, "the other drop's stock", is_stock(&other_drop))
        .await;
    everything
        .expect(within, "the drop's stock", |m| {
            is_stock(&drop)(m) && m["seq"] == 41
        })
        .await;

    // An unreadable payload is skipped, not relayed, and the feed goes on.
    db.execute("SELECT pg_notify('dropstock', 'not json')", &[])
        .await
        .unwrap();
    notify(&db, &notice(&drop, 7, 42, json!([]))).await;
    let next = first
        .expect(within, "the next stock message", |m| {
            is_stock(&drop)(m) && m["seq"] == 42
        })
        .await;
    assert_eq!(next["availableStock"], 7);
}

/// Needs the background worker: nothing in the adapter or the test publishes these changes.
#[tokio::test]
async fn a_reservation_reaches_two_screens_within_a_second() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let adapter = Adapter::start().await;
    adapter.wait_listening().await;
    let drop = adapter.open_drop(20).await;
    let buyer = adapter.new_buyer().await;
    let mut first = adapter.ws(&format!("?drop={drop}")).await;
    let mut second = adapter.ws(&format!("?drop={drop}")).await;
    first.snapshot().await;
    second.snapshot().await;

    assert_eq!(adapter.reserve(&drop, &buyer).await.0, 201);
    let reserved = std::time::Instant::now();
    let dropped = |message: &Value| message["type"] == "stock" && message["availableStock"] == 19;
    let what = "a stock message with 19 available (is the background worker running? \
                it needs shared_preload_libraries = 'dropstock')";
    let (one, two) = tokio::join!(
        first.expect(Duration::from_secs(1), what, dropped),
        second.expect(Duration::from_secs(1), what, dropped)
    );
    assert!(reserved.elapsed() < Duration::from_secs(1));
    assert_eq!(one["totalStock"], 20);
    assert_eq!(one["seq"], two["seq"]);

    // The sale shows up in both feeds with the buyer's name.
    let (_, hold) = adapter.reserve(&drop, &buyer).await;
    let sale = json!({"userId": buyer, "reservationId": id(&hold["data"])});
    assert_eq!(adapter.post("/api/purchases", sale).await.0, 200);
    let (_, buyer_row) = adapter.get(&format!("/api/drops/{drop}")).await;
    let username = buyer_row["data"]["purchases"][0]["user"]["username"].clone();
    let bought =
        |message: &Value| message["type"] == "purchase" && message["user"]["username"] == username;
    let (one, two) = tokio::join!(
        first.expect(Duration::from_secs(1), "the purchase", bought),
        second.expect(Duration::from_secs(1), "the purchase", bought)
    );
    assert_eq!(one["dropId"], drop.as_str());
    assert_eq!(one["seq"], two["seq"]);
    assert!(one["seq"].as_u64() > Some(0));
}

#[tokio::test]
async fn clients_resync_after_the_listen_connection_is_lost_and_hear_later_changes() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let adapter = Adapter::start().await;
    adapter.wait_listening().await;
    let db = connect().await;
    let drop = adapter.open_drop(10).await;
    wait_announced(&db, &drop).await;
    let mut first = adapter.ws(&format!("?drop={drop}")).await;
    let mut second = adapter.ws("").await;
    first.snapshot().await;
    second.snapshot().await;

    let killed = terminate_listen_backends(&db).await;
    assert!(
        killed > 0,
        "the adapter's LISTEN backend is named dropstock-http-listen"
    );

    let is_resync = |message: &Value| message["type"] == "resync";
    first
        .expect(Duration::from_secs(5), "a resync", is_resync)
        .await;
    second
        .expect(Duration::from_secs(5), "a resync", is_resync)
        .await;

    // The resync is sent once LISTEN is back, so a change published now is heard.
    notify(&db, &notice(&drop, 9, 1000, json!([]))).await;
    for feed in [&mut first, &mut second] {
        let stock = feed
            .expect(
                Duration::from_secs(2),
                "the change sent after the resync",
                |m| is_stock(&drop)(m) && m["seq"] == 1000,
            )
            .await;
        assert_eq!(stock["availableStock"], 9);
    }
    let metrics = adapter.metrics().await;
    assert!(
        !metrics.contains("dropstock_http_listen_reconnects_total 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_client_that_does_not_read_is_dropped_and_holds_nobody_back() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let adapter = Adapter::start().await;
    adapter.wait_listening().await;
    let db = connect().await;
    let drop = adapter.open_drop(10).await;
    wait_announced(&db, &drop).await;
    let mut reader = adapter.ws(&format!("?drop={drop}")).await;
    reader.snapshot().await;
    // Connected, then never read from again: its socket fills and the server's writes to it stall.
    let stalled = adapter.ws_with_small_buffer("").await;

    // More than a stalled socket and the per-client limit hold: 5,000 notices of about 1.3 KB of messages.
    let count = 5_000;
    db.execute(
        "SELECT pg_notify('dropstock', json_build_object(
                    'dropId', $1::text, 'availableStock', 5, 'totalStock', 10, 'seq', n,
                    'purchases', (SELECT json_agg(json_build_object(
                                     'id', gen_random_uuid(), 'createdAt', '2026-11-27T21:30:00.000Z',
                                     'user', json_build_object('id', gen_random_uuid(), 'username', repeat('x', 64))))
                                  FROM generate_series(1, 3)))::text)
           FROM generate_series(1, $2::int) AS n",
        &[&drop, &count],
    )
    .await
    .unwrap();

    // The reader hears the last change (after a resync if it fell behind the burst).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let message = reader
            .next_message(left)
            .await
            .expect("the last stock message within 30 s");
        if message["type"] == "stock" && message["seq"] == count {
            break;
        }
    }

    // The stalled client is cut off, and only the reader stays connected.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = adapter.metrics().await;
        if metrics.contains("dropstock_http_websocket_clients 1\n")
            && !metrics.contains("dropstock_http_websocket_clients_dropped_total 0\n")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled client is still connected:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    std::mem::drop(stalled);
}

#[tokio::test]
async fn sigterm_closes_feeds_with_1001_and_exits_cleanly() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut adapter = Adapter::start_with(Options::admin().process()).await;
    let mut feed = adapter.ws("").await;
    feed.snapshot().await;
    adapter.terminate();
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match feed.socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("a close frame within 5 s");
    assert_eq!(close.expect("a close code").code, CloseCode::Away);
    let status = adapter.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}");
}

/// A sized drop's stock message names the sizes that changed, by label, as the worker publishes them.
#[tokio::test]
async fn a_sized_drops_stock_message_names_the_sizes_that_changed() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let adapter = Adapter::start().await;
    adapter.wait_listening().await;
    let drop = id(&adapter
        .create_drop(
            json!({"name": unique("sized feed"), "price": 5, "variants": {"S": 3, "M": 3, "L": 3}}),
        )
        .await);
    let mut feed = adapter.ws(&format!("?drop={drop}")).await;
    let snapshot = feed.snapshot().await;
    assert_eq!(
        snapshot["drops"][0]["variants"].as_array().map(Vec::len),
        Some(3)
    );
    // The drop's first publication names every size; wait until it is out, so the next names the hold's.
    let db = connect().await;
    let drop_id: uuid::Uuid = drop.parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            db.query_one(
                "SELECT NOT pending FROM dropstock.feed_state WHERE drop_id = $1",
                &[&drop_id],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
        })
        .await,
        "the new drop is published"
    );
    let buyer = adapter.new_buyer().await;
    let (status, hold) = adapter
        .post(
            "/api/reservations",
            json!({"dropId": drop, "userId": buyer, "variant": "M", "quantity": 1}),
        )
        .await;
    assert_eq!(status, 201, "{hold}");
    let stock = feed
        .expect(
            Duration::from_secs(5),
            "a stock message after the hold",
            |m| is_stock(&drop)(m) && m["availableStock"] == 8,
        )
        .await;
    assert_eq!(
        stock["variants"],
        json!([{"label": "M", "availableStock": 2}])
    );
}

#[tokio::test]
async fn socketio_clients_get_the_ws_messages_as_events_and_resync_after_the_listen_connection_is_lost(
) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let adapter = Adapter::start().await;
    adapter.wait_listening().await;
    let db = connect().await;
    let drop = adapter.open_drop(10).await;
    wait_announced(&db, &drop).await;
    let mut ws = adapter.ws(&format!("?drop={drop}")).await;
    ws.snapshot().await;
    let mut client = adapter.socketio().await;
    let metrics = adapter.metrics().await;
    assert!(
        metrics.contains("dropstock_http_socketio_clients 1"),
        "{metrics}"
    );

    let sale = json!([{"id": new_id(), "createdAt": "2026-11-27T21:30:00.000Z",
                       "user": {"id": new_id(), "username": "ada"}}]);
    notify(&db, &notice(&drop, 9, 1000, sale)).await;
    // The replaced client's event carries no payload (other drops' changes may come first: all alike).
    let update = client
        .expect(Duration::from_secs(2), "stock:update", |m| {
            m["event"] == "stock:update"
        })
        .await;
    assert_eq!(update["args"], json!([]));
    let of_drop = |event: &'static str, seq: u64| {
        let drop = drop.clone();
        move |m: &Value| {
            m["event"] == event
                && m["args"][0]["dropId"] == drop.as_str()
                && m["args"][0]["seq"] == seq
        }
    };
    // Each event's one argument is the /ws message itself: the stock change, then the sale.
    for kind in ["stock", "purchase"] {
        let event = client
            .expect(Duration::from_secs(2), kind, of_drop(kind, 1000))
            .await;
        let message = ws
            .expect(Duration::from_secs(2), kind, |m| {
                m["type"] == kind && m["seq"] == 1000
            })
            .await;
        assert_eq!(event["args"], json!([message]));
        if kind == "purchase" {
            assert_eq!(message["user"], json!({"username": "ada"}));
        }
    }
    // The LISTEN connection lost: `paused`, then, once it is back, `resync` and a `stock:update` for
    // clients that only reload on that, and later changes are heard.
    let killed = terminate_listen_backends(&db).await;
    assert!(killed > 0);
    for (event, within) in [("paused", 5), ("resync", 5), ("stock:update", 1)] {
        let told = client
            .expect(Duration::from_secs(within), event, |m| m["event"] == event)
            .await;
        assert_eq!(told["args"], json!([]), "{event} carries no payload");
    }
    notify(&db, &notice(&drop, 8, 1001, json!([]))).await;
    let later = client
        .expect(
            Duration::from_secs(2),
            "the change sent after the resync",
            of_drop("stock", 1001),
        )
        .await;
    assert_eq!(later["args"][0]["availableStock"], 8);
}
