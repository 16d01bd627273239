//! Hostile input through the real adapter, table-driven: wrong types, missing and extra fields, huge,
//! negative and non-finite numbers, ids that are not UUIDs, SQL fragments and odd Unicode, invalid dates,
//! empty and oversized bodies, wrong content types, and garbage on the WebSocket. Each gets its documented
//! 4xx with a JSON message, and the database is exactly as it was (row counts and stock compared).
//! rest.rs covers one case per field; this is the adversarial breadth beside it.

use std::time::Duration;

use dropstock_tests::adapter::*;
use dropstock_tests::db::*;
use dropstock_tests::figures::record;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// Everything a hostile request could have changed.
async fn snapshot(db: &tokio_postgres::Client, drop: &str) -> Vec<String> {
    let counts = db
        .query_one(
            "SELECT (SELECT count(*) FROM dropstock.users), (SELECT count(*) FROM dropstock.drops),
                    (SELECT count(*) FROM dropstock.reservations), (SELECT count(*) FROM dropstock.purchases),
                    (SELECT coalesce(sum(total_stock), 0) FROM dropstock.drops),
                    (SELECT string_agg(status::text, ',' ORDER BY id) FROM dropstock.reservations WHERE drop_id = $1::text::uuid)",
            &[&drop],
        )
        .await
        .unwrap();
    let stock = stock(db, uuid::Uuid::parse_str(drop).unwrap()).await;
    vec![
        format!("users {}", counts.get::<_, i64>(0)),
        format!("drops {}", counts.get::<_, i64>(1)),
        format!("reservations {}", counts.get::<_, i64>(2)),
        format!("purchases {}", counts.get::<_, i64>(3)),
        format!("total stock {}", counts.get::<_, i64>(4)),
        format!("holds {:?}", counts.get::<_, Option<String>>(5)),
        format!("drop stock {stock:?}"),
    ]
}

/// One hostile request: what is sent, and the status and code it must get.
struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    admin: bool,
    status: u16,
    code: &'static str,
}

fn case(
    what: &'static str,
    path: &str,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        what,
        method: "POST",
        path: path.to_owned(),
        content_type: Some("application/json"),
        body: body.into(),
        admin: false,
        status,
        code,
    }
}

fn admin(mut case: Case) -> Case {
    case.admin = true;
    case
}

fn typed(mut case: Case, content_type: &'static str) -> Case {
    case.content_type = Some(content_type);
    case
}

fn untyped(mut case: Case) -> Case {
    case.content_type = None;
    case
}

fn method(mut case: Case, method: &'static str) -> Case {
    case.method = method;
    case
}

fn text(value: Value) -> String {
    value.to_string()
}

/// Sends a request whose declared length is far over the limit, with no body behind it, on a raw socket:
/// the adapter must refuse it from the headers alone rather than wait for 100 MB.
async fn declared_too_large(adapter: &Adapter) -> (u16, Value) {
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", adapter.port))
        .await
        .unwrap();
    socket
        .write_all(
            b"POST /api/users HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Content-Length: 104857600\r\n\r\n{\"username\":",
        )
        .await
        .unwrap();
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut buffer = [0u8; 4096];
    loop {
        let read = tokio::time::timeout_at(deadline, socket.read(&mut buffer))
            .await
            .expect("an answer to a declared 100 MB body within 5 s")
            .unwrap();
        received.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&received).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length || read == 0 {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (status, serde_json::from_str(body).unwrap_or(Value::Null));
            }
        }
        assert!(read > 0, "connection closed without an answer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_their_4xx_and_change_nothing() {
    let adapter = Adapter::start().await;
    let db = connect().await;
    let drop = adapter.open_drop(5).await;
    let (ada, grace) = (adapter.new_buyer().await, adapter.new_buyer().await);
    let (_, hold) = adapter.reserve(&drop, &ada).await;
    let hold = id(&hold["data"]);
    let nil = "00000000-0000-0000-0000-000000000000";
    let as_ada = |drop_id: Value| text(json!({"dropId": drop_id, "userId": ada}));
    let buy = |reservation: Value| text(json!({"userId": ada, "reservationId": reservation}));
    let user = |name: Value| text(json!({"username": name}));
    let new_drop = |field: &str, value: Value| {
        let mut body = json!({"name": unique("hostile"), "price": 10, "totalStock": 5});
        body[field] = value;
        text(body)
    };
    let rtl = format!("\u{202e}{}", "x".repeat(64));
    let cancel_path = format!("/api/reservations/{hold}/cancel");
    let reservations = "/api/reservations";
    let purchases = "/api/purchases";

    let cases = vec![
        // Reservations: every way to get the ids wrong.
        case(
            "dropId a number",
            reservations,
            as_ada(json!(42)),
            400,
            "bad_request",
        ),
        case(
            "dropId negative",
            reservations,
            as_ada(json!(-1)),
            400,
            "bad_request",
        ),
        case(
            "dropId an array",
            reservations,
            as_ada(json!([drop])),
            400,
            "bad_request",
        ),
        case(
            "dropId an object",
            reservations,
            as_ada(json!({"id": drop})),
            400,
            "bad_request",
        ),
        case(
            "dropId a boolean",
            reservations,
            as_ada(json!(true)),
            400,
            "bad_request",
        ),
        case(
            "dropId null",
            reservations,
            as_ada(Value::Null),
            400,
            "bad_request",
        ),
        case(
            "no userId",
            reservations,
            text(json!({"dropId": drop})),
            400,
            "bad_request",
        ),
        case("no fields", reservations, "{}", 400, "bad_request"),
        case(
            "dropId not a UUID",
            reservations,
            as_ada(json!("abc")),
            400,
            "bad_request",
        ),
        case(
            "dropId SQL",
            reservations,
            as_ada(json!("'; DROP TABLE dropstock.drops; --")),
            400,
            "bad_request",
        ),
        case(
            "dropId UUID then SQL",
            reservations,
            as_ada(json!(format!("{drop}' OR '1'='1"))),
            400,
            "bad_request",
        ),
        case(
            "dropId NUL",
            reservations,
            as_ada(json!("\u{0}")),
            400,
            "bad_request",
        ),
        case(
            "dropId RTL override",
            reservations,
            as_ada(json!(format!("\u{202e}{drop}"))),
            400,
            "bad_request",
        ),
        case(
            "dropId zero-width space inside",
            reservations,
            as_ada(json!(format!("{}\u{200b}{}", &drop[..8], &drop[8..]))),
            400,
            "bad_request",
        ),
        case(
            "dropId emoji",
            reservations,
            as_ada(json!("👟👟👟")),
            400,
            "bad_request",
        ),
        case(
            "unknown drop",
            reservations,
            as_ada(json!(nil)),
            404,
            "DS001",
        ),
        case(
            "extra fields and an unknown buyer",
            reservations,
            text(
                json!({"dropId": drop, "userId": new_id(), "status": "purchased", "price": 0, "isAdmin": true}),
            ),
            404,
            "DS002",
        ),
        // Purchases: numbers where ids go, and someone else's hold.
        case(
            "reservationId 1e400",
            purchases,
            r#"{"userId":"x","reservationId":1e400}"#,
            400,
            "bad_request",
        ),
        case(
            "reservationId NaN",
            purchases,
            r#"{"reservationId":NaN}"#,
            400,
            "bad_request",
        ),
        case(
            "reservationId Infinity",
            purchases,
            r#"{"reservationId":Infinity}"#,
            400,
            "bad_request",
        ),
        case(
            "reservationId -1e308",
            purchases,
            buy(json!(-1e308)),
            400,
            "bad_request",
        ),
        case(
            "userId an array",
            purchases,
            text(json!({"userId": [ada], "reservationId": hold})),
            400,
            "bad_request",
        ),
        case(
            "another buyer's hold",
            purchases,
            text(json!({"userId": grace, "reservationId": hold})),
            403,
            "DS031",
        ),
        case("unknown hold", purchases, buy(json!(nil)), 404, "DS003"),
        // Cancel: the id in the path.
        case(
            "hold id SQL in the path",
            "/api/reservations/'%20OR%201=1--/cancel",
            text(json!({"userId": ada})),
            400,
            "bad_request",
        ),
        case(
            "hold id NUL in the path",
            "/api/reservations/%00/cancel",
            text(json!({"userId": ada})),
            400,
            "bad_request",
        ),
        case(
            "cancel with an empty userId",
            &cancel_path,
            text(json!({"userId": ""})),
            400,
            "bad_request",
        ),
        case(
            "cancel someone else's hold",
            &cancel_path,
            text(json!({"userId": grace})),
            403,
            "DS031",
        ),
        // Buyers' names.
        case(
            "username a number",
            "/api/users",
            user(json!(7)),
            400,
            "bad_request",
        ),
        case(
            "username an object",
            "/api/users",
            user(json!({"$ne": null})),
            400,
            "bad_request",
        ),
        case(
            "username empty",
            "/api/users",
            user(json!("")),
            422,
            "22023",
        ),
        case(
            "username 65 characters",
            "/api/users",
            user(json!("x".repeat(65))),
            422,
            "22023",
        ),
        case(
            "username 65 emoji",
            "/api/users",
            user(json!("👟".repeat(65))),
            422,
            "22023",
        ),
        case(
            "username with NUL",
            "/api/users",
            user(json!("ada\u{0}admin")),
            400,
            "bad_request",
        ),
        case(
            "username of zero-width joiners, too long",
            "/api/users",
            user(json!("\u{200d}".repeat(100))),
            422,
            "22023",
        ),
        case(
            "username RTL override, too long",
            "/api/users",
            user(json!(rtl)),
            422,
            "22023",
        ),
        // Drops (with the admin token): numbers and dates out of every range.
        admin(case(
            "price a string",
            "/api/drops",
            new_drop("price", json!("cheap")),
            400,
            "bad_request",
        )),
        admin(case(
            "price \"NaN\"",
            "/api/drops",
            new_drop("price", json!("NaN")),
            400,
            "bad_request",
        )),
        admin(case(
            "price 1e20",
            "/api/drops",
            new_drop("price", json!(1e20)),
            422,
            "22023",
        )),
        admin(case(
            "price negative",
            "/api/drops",
            new_drop("price", json!(-0.01)),
            422,
            "22023",
        )),
        admin(case(
            "totalStock negative",
            "/api/drops",
            new_drop("totalStock", json!(-5)),
            422,
            "22023",
        )),
        admin(case(
            "totalStock 2^31",
            "/api/drops",
            new_drop("totalStock", json!(2147483648i64)),
            400,
            "bad_request",
        )),
        admin(case(
            "totalStock 1e300",
            "/api/drops",
            new_drop("totalStock", json!(1e300)),
            400,
            "bad_request",
        )),
        admin(case(
            "totalStock a string",
            "/api/drops",
            new_drop("totalStock", json!("10")),
            400,
            "bad_request",
        )),
        admin(case(
            "holdSeconds 0",
            "/api/drops",
            new_drop("holdSeconds", json!(0)),
            422,
            "22023",
        )),
        admin(case(
            "holdSeconds a day and a second",
            "/api/drops",
            new_drop("holdSeconds", json!(86401)),
            422,
            "22023",
        )),
        admin(case(
            "perUserLimit negative",
            "/api/drops",
            new_drop("perUserLimit", json!(-1)),
            422,
            "22023",
        )),
        admin(case(
            "startsAt 30 February",
            "/api/drops",
            new_drop("startsAt", json!("2026-02-30T10:00:00Z")),
            400,
            "bad_request",
        )),
        admin(case(
            "startsAt 31-02 legacy",
            "/api/drops",
            new_drop("startsAt", json!("31-02-2026, 09:30 PM")),
            400,
            "bad_request",
        )),
        admin(case(
            "startsAt a number",
            "/api/drops",
            new_drop("startsAt", json!(1700000000)),
            400,
            "bad_request",
        )),
        admin(case(
            "startsAt SQL",
            "/api/drops",
            new_drop("startsAt", json!("now()'); DROP TABLE dropstock.drops; --")),
            400,
            "bad_request",
        )),
        admin(case(
            "endsAt before startsAt",
            "/api/drops",
            text(
                json!({"name": unique("hostile"), "price": 1, "totalStock": 1,
            "startsAt": "2030-01-01T00:00:00Z", "endsAt": "2029-01-01T00:00:00Z"}),
            ),
            422,
            "22023",
        )),
        admin(case(
            "name with NUL",
            "/api/drops",
            new_drop("name", json!("drop\u{0}")),
            400,
            "bad_request",
        )),
        admin(case(
            "name 5000 characters",
            "/api/drops",
            new_drop("name", json!("x".repeat(5000))),
            422,
            "22023",
        )),
        // Bodies and content types.
        admin(case("empty body", "/api/drops", "", 400, "bad_request")),
        case("body null", reservations, "null", 400, "bad_request"),
        case(
            "body a string",
            reservations,
            "\"dropId\"",
            400,
            "bad_request",
        ),
        case(
            "body not UTF-8",
            reservations,
            vec![b'{', 0xff, 0xfe, b'}'],
            400,
            "bad_request",
        ),
        case(
            "body nested 200 deep",
            "/api/users",
            format!("{}{}", "[".repeat(200), "]".repeat(200)),
            400,
            "bad_request",
        ),
        case(
            "body truncated",
            reservations,
            "{\"dropId\": \"",
            400,
            "bad_request",
        ),
        case(
            "body 70 KiB",
            "/api/users",
            user(json!("x".repeat(70 * 1024))),
            413,
            "payload_too_large",
        ),
        // Bodies that are not declared JSON: 415, even when they hold JSON. A page on another site can
        // make a browser send these three types without asking first (no CORS preflight).
        typed(
            case(
                "form-encoded",
                "/api/users",
                "username=mallory",
                415,
                "unsupported_media_type",
            ),
            "application/x-www-form-urlencoded",
        ),
        typed(
            case(
                "XML",
                reservations,
                "<reservation drop=\"1\"/>",
                415,
                "unsupported_media_type",
            ),
            "text/xml",
        ),
        typed(
            case(
                "multipart garbage",
                "/api/users",
                "--x\r\nContent-Disposition: form-data\r\n\r\n--x--",
                415,
                "unsupported_media_type",
            ),
            "multipart/form-data; boundary=x",
        ),
        typed(
            case(
                "cross-site text/plain buyer",
                "/api/users",
                text(json!({"username": "mallory"})),
                415,
                "unsupported_media_type",
            ),
            "text/plain",
        ),
        typed(
            case(
                "cross-site text/plain hold",
                reservations,
                text(json!({"dropId": drop, "userId": ada})),
                415,
                "unsupported_media_type",
            ),
            "text/plain;charset=UTF-8",
        ),
        typed(
            case(
                "cross-site form purchase",
                purchases,
                text(json!({"reservationId": hold, "userId": ada})),
                415,
                "unsupported_media_type",
            ),
            "application/x-www-form-urlencoded",
        ),
        admin(typed(
            case(
                "text/plain drop",
                "/api/drops",
                text(json!({"name": "x", "price": 1, "totalStock": 1})),
                415,
                "unsupported_media_type",
            ),
            "text/plain",
        )),
        untyped(case(
            "JSON without a content type",
            reservations,
            text(json!({"dropId": drop, "userId": ada})),
            415,
            "unsupported_media_type",
        )),
        // Routes and methods.
        method(
            case("TRACE", purchases, "", 405, "method_not_allowed"),
            "TRACE",
        ),
        method(
            case(
                "DELETE a drop",
                &format!("/api/drops/{drop}"),
                "",
                405,
                "method_not_allowed",
            ),
            "DELETE",
        ),
        method(
            case(
                "path traversal",
                "/page/..%2f..%2fetc%2fpasswd",
                "",
                404,
                "not_found",
            ),
            "GET",
        ),
        method(
            case(
                "drop id SQL in the path",
                "/api/drops/1%20OR%201=1",
                "",
                400,
                "bad_request",
            ),
            "GET",
        ),
        method(
            case("feed without upgrade", "/ws", "", 400, "bad_request"),
            "GET",
        ),
    ];

    let before = snapshot(&db, &drop).await;
    let mut tried = 0;
    for case in &cases {
        let mut request = adapter
            .http()
            .request(case.method.parse().unwrap(), adapter.url(&case.path))
            .body(case.body.clone());
        if let Some(content_type) = case.content_type {
            request = request.header("content-type", content_type);
        }
        if case.admin {
            request = request.bearer_auth(ADMIN_TOKEN);
        }
        let (status, body) = read(request.send().await.unwrap()).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (case.status, Some(case.code)),
            "{}: {body}",
            case.what
        );
        assert_eq!(body["success"], false, "{}: {body}", case.what);
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}: a message for people: {body}",
            case.what
        );
        tried += 1;
    }

    // Requests a client library would not send.
    let declared = declared_too_large(&adapter).await;
    assert_refused(&declared, 413, "payload_too_large", "64 KiB");
    tried += 1;
    let upgrade = |query: &str| {
        adapter
            .http()
            .get(adapter.url(&format!("/ws{query}")))
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
    };
    let feed_cases = [
        ("?drop=abc", 400, "bad_request"),
        (&format!("?drop={nil}") as &str, 404, "DS001"),
        ("?drop=%27%3B%20DROP%20TABLE%20x", 400, "bad_request"),
    ];
    for (query, status, code) in feed_cases {
        let answer = read(upgrade(query).send().await.unwrap()).await;
        assert_eq!(
            (answer.0, answer.1["code"].as_str()),
            (status, Some(code)),
            "/ws{query}: {}",
            answer.1
        );
        tried += 1;
    }
    let old_version = adapter
        .http()
        .get(adapter.url("/ws"))
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "8")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
    let answer = read(old_version.send().await.unwrap()).await;
    assert_refused(&answer, 400, "bad_request", "13");
    tried += 1;

    // Garbage frames on a live feed: the feed has no commands, so the adapter ignores them or drops that
    // one client; it never answers with a change, and keeps serving everyone else.
    let frames: Vec<(&str, Message)> = vec![
        (
            "text that is not JSON",
            Message::Text("'; DROP TABLE dropstock.drops; --".into()),
        ),
        (
            "a JSON command",
            Message::Text(text(json!({"type": "reserve", "dropId": drop, "userId": ada})).into()),
        ),
        (
            "binary garbage",
            Message::Binary(vec![0xff, 0x00, 0xfe, 0x01].into()),
        ),
        (
            "a frame over 64 KiB",
            Message::Text("x".repeat(100 * 1024).into()),
        ),
    ];
    for (what, frame) in frames {
        let mut feed = adapter.ws(&format!("?drop={drop}")).await;
        feed.snapshot().await;
        let _ = feed.socket.send(frame).await;
        // Whatever comes back within a moment shows the stock where it was.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout_at(deadline, feed.socket.next()).await
        {
            if let Message::Text(text) = message {
                let message: Value = serde_json::from_str(text.as_str()).unwrap();
                // The worker may still be publishing the setup's hold (4 of 5 left); nothing else.
                if message["type"] == "stock" {
                    assert_eq!(
                        message["availableStock"], 4,
                        "{what} moved stock: {message}"
                    );
                }
            }
        }
        tried += 1;
    }
    // Raw bytes that are not a WebSocket frame at all, after a valid handshake.
    let mut feed = adapter.ws("").await;
    if let tokio_tungstenite::MaybeTlsStream::Plain(stream) = feed.socket.get_mut() {
        let _ = stream
            .write_all(&[0x00, 0x01, 0x02, 0xff, 0xff, 0xff, 0xff])
            .await;
    }
    tried += 1;
    assert_eq!(
        adapter.get("/healthz").await.0,
        200,
        "the adapter still serves"
    );

    let after = snapshot(&db, &drop).await;
    assert_eq!(before, after, "hostile requests changed the database");
    record(
        "input 1 hostile requests",
        &format!("{tried} hostile inputs tried ({} table rows, {} raw or WebSocket), every one a 4xx with a JSON message or ignored by the feed, 0 rows changed", cases.len(), tried - cases.len()),
    );
}

/// Names that are odd but valid are data, not code: stored and returned byte for byte, and harmless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_but_valid_names_are_stored_verbatim() {
    let adapter = Adapter::start().await;
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let names = [
        format!("Robert'); DROP TABLE dropstock.users; -- {tag}"),
        format!("\u{202e}gnp.exe {tag}"),
        format!("ad\u{200b}a {tag}"),
        format!("👟🔥 {tag}"),
        format!("$1 OR 1=1 /* {tag} */"),
        format!("\\\\x00 {tag}"),
    ];
    for name in &names {
        let (status, answer) = adapter.post("/api/users", json!({"username": name})).await;
        assert_eq!(status, 201, "{name:?}: {answer}");
        assert_eq!(answer["data"]["username"], name.as_str(), "stored verbatim");
    }
    let db = connect().await;
    let stored: i64 = db
        .query_one(
            "SELECT count(*) FROM dropstock.users WHERE username LIKE '%' || $1 || '%'",
            &[&tag],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, names.len() as i64);
    assert_eq!(
        adapter.get("/api/drops").await.0,
        200,
        "the tables are all still there"
    );
}
