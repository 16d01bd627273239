//! The adapter's REST API end to end: the real `dropstock-http` process against the real cluster. Every
//! endpoint's success shape, every refusal with its status, code and message, malformed input, and the
//! database becoming unreachable.

use std::time::Duration;

use dropstock_tests::adapter::*;
use dropstock_tests::db::*;
use serde_json::{json, Value};

fn drop_in<'a>(list: &'a Value, drop: &str) -> &'a Value {
    list["data"]
        .as_array()
        .expect("data is a list")
        .iter()
        .find(|item| item["id"] == drop)
        .unwrap_or_else(|| panic!("drop {drop} not listed"))
}

#[tokio::test]
async fn a_buyer_lists_reserves_and_buys_with_the_replaced_apis_shapes() {
    let adapter = Adapter::start().await;
    let name = unique("sneaker drop");
    let created = adapter
        .create_drop(json!({"name": name, "price": 180.5, "totalStock": 3, "startsAt": "2020-01-01T10:00:00Z"}))
        .await;
    assert_eq!(created["name"], name);
    assert_eq!(created["price"], 180.5);
    assert_eq!(created["totalStock"], 3);
    assert_eq!(created["availableStock"], 3);
    assert_eq!(created["startsAt"], "2020-01-01T10:00:00.000Z");
    assert_eq!(created["holdSeconds"], 60);
    assert_eq!(created["perUserLimit"], 1);
    assert_eq!(created["purchases"], json!([]));
    let drop = id(&created);

    let (status, user) = adapter
        .post(
            "/api/users",
            json!({"username": format!("  {}  ", unique("ada"))}),
        )
        .await;
    assert_eq!(status, 201, "{user}");
    assert_eq!(user["success"], true);
    let username = user["data"]["username"].as_str().unwrap().to_owned();
    assert!(
        username.starts_with("ada-"),
        "the name is trimmed: {username:?}"
    );
    assert!(user["data"]["createdAt"].is_string());
    let buyer = id(&user["data"]);

    let (status, hold) = adapter.reserve(&drop, &buyer).await;
    assert_eq!(status, 201, "a new hold: {hold}");
    assert_eq!(hold["success"], true);
    let hold = &hold["data"];
    assert_eq!(hold["dropId"], drop);
    assert_eq!(hold["userId"], buyer);
    assert_eq!(hold["status"], "reserved");
    for field in ["expiresAt", "createdAt"] {
        let at = hold[field].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(at).is_ok(),
            "{field} is RFC 3339: {at}"
        );
    }
    let (status, again) = adapter.reserve(&drop, &buyer).await;
    assert_eq!(status, 200, "the same hold again: {again}");
    assert_eq!(again["data"]["id"], hold["id"]);

    let listed = adapter.get("/api/drops").await;
    assert_eq!(listed.0, 200);
    assert_eq!(listed.1["success"], true);
    let item = drop_in(&listed.1, &drop);
    assert_eq!(item["availableStock"], 2, "one unit held: {item}");
    assert_eq!(item["totalStock"], 3);
    assert_eq!(item["price"], 180.5);

    let hold_id = id(hold);
    let (status, sale) = adapter
        .post(
            "/api/purchases",
            json!({"userId": buyer, "reservationId": hold_id}),
        )
        .await;
    assert_eq!(status, 200, "{sale}");
    assert_eq!(sale["success"], true);
    assert_eq!(sale["message"], "Purchased successfully");
    assert_eq!(sale["data"]["reservationId"], hold_id);
    assert_eq!(sale["data"]["dropId"], drop);
    assert_eq!(sale["data"]["userId"], buyer);
    assert_eq!(sale["data"]["price"], 180.5);
    let (status, retry) = adapter
        .post(
            "/api/purchases",
            json!({"userId": buyer, "reservationId": hold_id}),
        )
        .await;
    assert_eq!(status, 200, "a retry returns the same sale: {retry}");
    assert_eq!(retry["data"]["id"], sale["data"]["id"]);

    let (status, one) = adapter.get(&format!("/api/drops/{drop}")).await;
    assert_eq!(status, 200, "{one}");
    let one = &one["data"];
    assert_eq!(one["availableStock"], 2);
    assert_eq!(one["soldStock"], 1);
    let feed = one["purchases"].as_array().unwrap();
    assert_eq!(feed.len(), 1);
    assert_eq!(feed[0]["id"], sale["data"]["id"]);
    // Public reads name buyers by username only: an id is the buyer's to keep.
    assert_eq!(feed[0]["user"], json!({"username": username}));
    assert!(feed[0]["createdAt"].is_string());
    let listed = adapter.get("/api/drops").await;
    assert_eq!(
        drop_in(&listed.1, &drop)["purchases"][0]["user"]["username"],
        username.as_str()
    );
}

#[tokio::test]
async fn cancelling_a_hold_gives_the_unit_back() {
    let adapter = Adapter::start().await;
    let drop = adapter.open_drop(1).await;
    let (ada, grace) = (adapter.new_buyer().await, adapter.new_buyer().await);
    let (_, hold) = adapter.reserve(&drop, &ada).await;
    let hold = id(&hold["data"]);
    assert_refused(
        &adapter.reserve(&drop, &grace).await,
        409,
        "DS020",
        "sold out",
    );

    let (status, cancelled) = adapter
        .post(
            &format!("/api/reservations/{hold}/cancel"),
            json!({"userId": ada}),
        )
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["data"]["status"], "cancelled");
    assert_eq!(cancelled["data"]["id"], hold);
    let (_, one) = adapter.get(&format!("/api/drops/{drop}")).await;
    assert_eq!(one["data"]["availableStock"], 1);
    assert_eq!(
        adapter.reserve(&drop, &grace).await.0,
        201,
        "the unit is free again"
    );
}

#[tokio::test]
async fn start_times_in_the_replaced_apis_format_are_read_as_utc() {
    let adapter = Adapter::start().await;
    let created = adapter
        .create_drop(json!({"name": unique("later"), "price": 10, "totalStock": 5,
                            "startsAt": "27-11-2099, 09:30 PM", "holdSeconds": 30, "perUserLimit": 2}))
        .await;
    assert_eq!(created["startsAt"], "2099-11-27T21:30:00.000Z");
    assert_eq!(created["holdSeconds"], 30);
    assert_eq!(created["perUserLimit"], 2);
    let buyer = adapter.new_buyer().await;
    assert_refused(
        &adapter.reserve(&id(&created), &buyer).await,
        409,
        "DS010",
        "has not started",
    );
}

#[tokio::test]
async fn every_refusal_has_its_status_code_and_message() {
    let adapter = Adapter::start().await;
    let (ada, grace) = (adapter.new_buyer().await, adapter.new_buyer().await);
    let nobody = new_id();

    // Unknown things: 404.
    assert_refused(
        &adapter.reserve(&new_id(), &ada).await,
        404,
        "DS001",
        "does not exist",
    );
    assert_refused(
        &adapter.get(&format!("/api/drops/{}", new_id())).await,
        404,
        "DS001",
        "does not exist",
    );
    let drop = adapter.open_drop(1).await;
    assert_refused(
        &adapter.reserve(&drop, &nobody).await,
        404,
        "DS002",
        "does not exist",
    );
    let missing_hold = json!({"userId": ada, "reservationId": new_id()});
    assert_refused(
        &adapter.post("/api/purchases", missing_hold).await,
        404,
        "DS003",
        "does not exist",
    );

    // Ended drop: 410.
    let ended = adapter
        .create_drop(json!({"name": unique("ended"), "price": 1, "totalStock": 1,
                            "startsAt": "2020-01-01T00:00:00Z", "endsAt": "2020-01-02T00:00:00Z"}))
        .await;
    assert_refused(
        &adapter.reserve(&id(&ended), &ada).await,
        410,
        "DS011",
        "has ended",
    );

    // Another buyer's hold: 403. Sold out: 409.
    let (_, hold) = adapter.reserve(&drop, &ada).await;
    let hold = id(&hold["data"]);
    assert_refused(
        &adapter
            .post(
                "/api/purchases",
                json!({"userId": grace, "reservationId": hold}),
            )
            .await,
        403,
        "DS031",
        "belongs to another buyer",
    );
    assert_refused(
        &adapter
            .post(
                &format!("/api/reservations/{hold}/cancel"),
                json!({"userId": grace}),
            )
            .await,
        403,
        "DS031",
        "belongs to another buyer",
    );
    assert_refused(
        &adapter.reserve(&drop, &grace).await,
        409,
        "DS020",
        "sold out",
    );

    // Bought: cancelling is 409, buying again past the limit is 409.
    assert_eq!(
        adapter
            .post(
                "/api/purchases",
                json!({"userId": ada, "reservationId": hold})
            )
            .await
            .0,
        200
    );
    assert_refused(
        &adapter
            .post(
                &format!("/api/reservations/{hold}/cancel"),
                json!({"userId": ada}),
            )
            .await,
        409,
        "DS033",
        "already purchased",
    );
    let roomy = adapter.open_drop(10).await;
    let (_, first) = adapter.reserve(&roomy, &ada).await;
    let first = id(&first["data"]);
    assert_eq!(
        adapter
            .post(
                "/api/purchases",
                json!({"userId": ada, "reservationId": first})
            )
            .await
            .0,
        200
    );
    assert_refused(
        &adapter.reserve(&roomy, &ada).await,
        409,
        "DS021",
        "limit of 1 per buyer",
    );

    // Cancelled hold: 410.
    let (_, second) = adapter.reserve(&roomy, &grace).await;
    let second = id(&second["data"]);
    adapter
        .post(
            &format!("/api/reservations/{second}/cancel"),
            json!({"userId": grace}),
        )
        .await;
    assert_refused(
        &adapter
            .post(
                "/api/purchases",
                json!({"userId": grace, "reservationId": second}),
            )
            .await,
        410,
        "DS032",
        "was cancelled",
    );

    // Expired hold: 410, decided by the database clock.
    let brief = adapter
        .create_drop(
            json!({"name": unique("brief"), "price": 1, "totalStock": 1, "holdSeconds": 1}),
        )
        .await;
    let (_, short) = adapter.reserve(&id(&brief), &ada).await;
    let short = id(&short["data"]);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_refused(
        &adapter
            .post(
                "/api/purchases",
                json!({"userId": ada, "reservationId": short}),
            )
            .await,
        410,
        "DS030",
        "expired",
    );

    // Taken username: 409. Invalid values the extension checks: 422.
    let name = unique("taken");
    assert_eq!(
        adapter
            .post("/api/users", json!({"username": name}))
            .await
            .0,
        201
    );
    assert_refused(
        &adapter.post("/api/users", json!({"username": name})).await,
        409,
        "DS040",
        "already taken",
    );
    assert_refused(
        &adapter.post("/api/users", json!({"username": "   "})).await,
        422,
        "22023",
        "must not be empty",
    );
    let zero = adapter
        .post_as(
            "/api/drops",
            ADMIN_TOKEN,
            json!({"name": unique("none"), "price": 1, "totalStock": 0}),
        )
        .await;
    assert_refused(&zero, 422, "22023", "total stock must be at least 1");
    let negative = adapter
        .post_as(
            "/api/drops",
            ADMIN_TOKEN,
            json!({"name": unique("cheap"), "price": -1, "totalStock": 1}),
        )
        .await;
    assert_refused(&negative, 422, "22023", "price must be");
}

#[tokio::test]
async fn malformed_requests_get_400_naming_the_field() {
    let adapter = Adapter::start().await;
    let buyer = adapter.new_buyer().await;
    let drop = adapter.open_drop(5).await;
    let post_raw = |path: &str, body: &'static str| {
        let request = adapter
            .http()
            .post(adapter.url(path))
            .header("content-type", "application/json")
            .body(body);
        async move { read(request.send().await.unwrap()).await }
    };

    assert_refused(
        &post_raw("/api/reservations", "{\"dropId\": ").await,
        400,
        "bad_request",
        "not valid JSON",
    );
    assert_refused(
        &post_raw("/api/reservations", "[1, 2]").await,
        400,
        "bad_request",
        "must be a JSON object",
    );
    assert_refused(
        &post_raw("/api/reservations", "").await,
        400,
        "bad_request",
        "dropId is required",
    );
    assert_refused(
        &adapter
            .post("/api/reservations", json!({"userId": buyer}))
            .await,
        400,
        "bad_request",
        "dropId is required",
    );
    assert_refused(
        &adapter
            .post("/api/reservations", json!({"dropId": drop}))
            .await,
        400,
        "bad_request",
        "userId is required",
    );
    assert_refused(
        &adapter
            .post("/api/reservations", json!({"dropId": 42, "userId": buyer}))
            .await,
        400,
        "bad_request",
        "dropId must be a UUID",
    );
    assert_refused(
        &adapter
            .post(
                "/api/reservations",
                json!({"dropId": drop, "userId": "ada"}),
            )
            .await,
        400,
        "bad_request",
        "userId must be a UUID",
    );
    assert_refused(
        &adapter
            .post("/api/purchases", json!({"userId": buyer}))
            .await,
        400,
        "bad_request",
        "reservationId is required",
    );
    assert_refused(
        &adapter.post("/api/users", json!({"username": 7})).await,
        400,
        "bad_request",
        "username must be a string",
    );
    let drops = |body: Value| adapter.post_as("/api/drops", ADMIN_TOKEN, body);
    assert_refused(
        &drops(json!({"name": "x", "price": "cheap", "totalStock": 1})).await,
        400,
        "bad_request",
        "price must be a number",
    );
    assert_refused(
        &drops(json!({"name": "x", "price": 1, "totalStock": 1.5})).await,
        400,
        "bad_request",
        "totalStock must be a whole number",
    );
    assert_refused(
        &drops(json!({"price": 1, "totalStock": 1})).await,
        400,
        "bad_request",
        "name is required",
    );
    assert_refused(
        &drops(json!({"name": "x", "price": 1, "totalStock": 1, "startsAt": "next friday"})).await,
        400,
        "bad_request",
        "startsAt must be",
    );
    assert_refused(
        &adapter.get("/api/drops/not-a-uuid").await,
        400,
        "bad_request",
        "drop id must be a UUID",
    );
    assert_refused(
        &adapter
            .post(
                "/api/reservations/not-a-uuid/cancel",
                json!({"userId": buyer}),
            )
            .await,
        400,
        "bad_request",
        "reservation id must be a UUID",
    );

    // Nothing was reserved by any of it.
    let (_, one) = adapter.get(&format!("/api/drops/{drop}")).await;
    assert_eq!(one["data"]["availableStock"], 5);

    // Size, routes and methods.
    let big = json!({"username": "x".repeat(70 * 1024)});
    assert_refused(
        &adapter.post("/api/users", big).await,
        413,
        "payload_too_large",
        "64 KiB",
    );
    assert_refused(
        &adapter.get("/api/nothing").await,
        404,
        "not_found",
        "/api/nothing",
    );
    let response = adapter
        .http()
        .delete(adapter.url("/api/drops"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "GET, HEAD, POST, OPTIONS");
    assert_refused(&read(response).await, 405, "method_not_allowed", "DELETE");
    let response = adapter
        .http()
        .get(adapter.url("/api/reservations"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "POST, OPTIONS");
    assert_refused(&read(response).await, 405, "method_not_allowed", "GET");
}

#[tokio::test]
async fn health_metrics_openapi_and_page_answer() {
    let adapter = Adapter::start().await;
    let (status, health) = adapter.get("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(health["data"]["status"], "ok");
    assert_eq!(health["data"]["database"], "ok");

    adapter.get("/api/drops").await;
    adapter.get("/api/no-such-thing").await;
    let metrics = adapter.metrics().await;
    for line in [
        r#"dropstock_http_requests_total{method="GET",route="/api/drops",status="200"} 1"#,
        r#"dropstock_http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        "dropstock_http_request_duration_seconds_bucket",
        "dropstock_http_websocket_clients 0",
        "dropstock_http_notifications_relayed_total",
    ] {
        assert!(metrics.contains(line), "metrics lack {line:?}:\n{metrics}");
    }

    let (status, openapi) = adapter.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3."));
    let paths = openapi["paths"].as_object().unwrap();
    let documented: Vec<(&str, &str)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (path.as_str(), method.as_str()))
        })
        .collect();
    let served = [
        ("/api/drops", "get"),
        ("/api/drops", "post"),
        ("/api/drops/{id}", "get"),
        ("/api/drops/{id}/waitlist", "get"),
        ("/api/drops/{id}/waitlist", "post"),
        ("/api/drops/{id}/waitlist/leave", "post"),
        ("/api/drops/{id}/draw", "get"),
        ("/api/drops/{id}/draw", "post"),
        ("/api/drops/{id}/draw/entries", "post"),
        ("/api/users/{id}/reservations", "get"),
        ("/api/reservations", "post"),
        ("/api/reservations/{id}/cancel", "post"),
        ("/api/reservations/{id}/extend", "post"),
        ("/api/purchases", "post"),
        ("/api/users", "post"),
        ("/healthz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/ws", "get"),
        ("/socket.io/", "get"),
        ("/socket.io/", "post"),
        ("/", "get"),
    ];
    for endpoint in served {
        assert!(
            documented.contains(&endpoint),
            "{endpoint:?} is not documented"
        );
    }
    for endpoint in &documented {
        assert!(
            served.contains(endpoint),
            "{endpoint:?} is documented but not served"
        );
    }

    let page = adapter.http().get(adapter.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("dropstock"));
}

#[tokio::test]
async fn database_unreachable_means_503_and_recovery_after() {
    let relay = Relay::start().await;
    let adapter = Adapter::start_with(Options {
        database_url: Some(relay.url()),
        ..Options::admin()
    })
    .await;
    assert_eq!(adapter.get("/api/drops").await.0, 200);

    relay.cut();
    assert_refused(
        &adapter.get("/api/drops").await,
        503,
        "unavailable",
        "database",
    );
    assert_refused(
        &adapter.get("/healthz").await,
        503,
        "unavailable",
        "database",
    );
    let buyer = new_id();
    assert_refused(
        &adapter.reserve(&new_id(), &buyer).await,
        503,
        "unavailable",
        "database",
    );

    relay.restore();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = adapter.get("/api/drops").await;
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn refuses_to_start_without_database_or_extension() {
    let unreachable = format!("postgresql://postgres@127.0.0.1:{}/postgres", free_port());
    let output = std::process::Command::new(binary())
        .env("DATABASE_URL", &unreachable)
        .env("DROPSTOCK_LISTEN", format!("127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("cannot reach the database") && stderr.contains("refused"),
        "{stderr}"
    );

    // A database of the same cluster without the extension.
    let db = connect().await;
    let scratch = "dropstock_adapter_no_extension";
    let exists = db
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&scratch])
        .await
        .unwrap();
    if exists.is_none() {
        // Two test runs may race here; the loser's "already exists" is fine.
        let _ = db
            .batch_execute(&format!("CREATE DATABASE {scratch}"))
            .await;
    }
    let mut config: tokio_postgres::Config = database_url().parse().unwrap();
    config.dbname(scratch);
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let output = std::process::Command::new(binary())
        .env(
            "DATABASE_URL",
            format!("postgresql://postgres@127.0.0.1:{port}/{scratch}"),
        )
        .env("DROPSTOCK_LISTEN", format!("127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("extension is not installed")
            && stderr.contains("CREATE EXTENSION dropstock"),
        "{stderr}"
    );
}

/// Whether any of `fields` is in the object `value`.
fn has_any(value: &Value, fields: &[&str]) -> bool {
    fields.iter().any(|field| value.get(field).is_some())
}

/// A drop sold by size, end to end: created from sizes alone, listed with each size's stock, reserved
/// by size and quantity (all or nothing), refused by size, extended once, bought whole.
#[tokio::test]
async fn a_sized_drop_is_reserved_by_size_and_quantity() {
    let adapter = Adapter::start().await;
    let created = adapter
        .create_drop(json!({"name": unique("sized drop"), "price": 150, "perUserLimit": 3, "maxExtensions": 1,
                            "variants": {"US 8": 2, " US 9 ": 1}}))
        .await;
    assert_eq!(created["totalStock"], 3);
    assert_eq!(created["maxExtensions"], 1);
    assert_eq!(
        created["variants"],
        json!([{"label": "US 8", "totalStock": 2, "availableStock": 2},
               {"label": "US 9", "totalStock": 1, "availableStock": 1}])
    );
    let drop = id(&created);
    let buyer = adapter.new_buyer().await;
    let ask = |body: Value| adapter.post("/api/reservations", body);

    assert_refused(
        &ask(json!({"dropId": drop, "userId": buyer})).await,
        422,
        "DS012",
        "choose a size",
    );
    assert_refused(
        &ask(json!({"dropId": drop, "userId": buyer, "variant": "US 14"})).await,
        422,
        "DS013",
        "US 14",
    );
    assert_refused(
        &ask(json!({"dropId": drop, "userId": buyer, "variant": "US 9", "quantity": 2})).await,
        409,
        "DS020",
        r#"only 1 left of size "US 9""#,
    );
    assert_refused(
        &ask(json!({"dropId": drop, "userId": buyer, "variant": "US 8", "quantity": 0})).await,
        422,
        "22023",
        "quantity",
    );
    assert_eq!(
        ask(json!({"dropId": drop, "userId": buyer, "variant": "US 8", "quantity": "two"}))
            .await
            .0,
        400
    );

    let (status, hold) =
        ask(json!({"dropId": drop, "userId": buyer, "variant": "US 8", "quantity": 2})).await;
    assert_eq!(status, 201, "{hold}");
    let hold = &hold["data"];
    assert_eq!(
        (&hold["variant"], &hold["quantity"]),
        (&json!("US 8"), &json!(2))
    );
    let (_, shown) = adapter.get(&format!("/api/drops/{drop}")).await;
    assert_eq!(shown["data"]["variants"][0]["availableStock"], 0);
    assert_eq!(shown["data"]["availableStock"], 1);

    let extend = format!("/api/reservations/{}/extend", id(hold));
    let (status, extended) = adapter.post(&extend, json!({"userId": buyer})).await;
    assert_eq!(status, 200, "{extended}");
    let moved =
        chrono::DateTime::parse_from_rfc3339(extended["data"]["expiresAt"].as_str().unwrap())
            .unwrap()
            - chrono::DateTime::parse_from_rfc3339(hold["expiresAt"].as_str().unwrap()).unwrap();
    assert_eq!(moved.num_seconds(), 60, "one more hold time");
    assert_eq!(extended["data"]["variant"], "US 8");
    assert_refused(
        &adapter.post(&extend, json!({"userId": buyer})).await,
        409,
        "DS034",
        "already extended 1 times",
    );

    let (status, sale) = adapter
        .post(
            "/api/purchases",
            json!({"reservationId": id(hold), "userId": buyer}),
        )
        .await;
    assert_eq!(status, 200, "{sale}");
    assert_eq!(
        (&sale["data"]["variant"], &sale["data"]["quantity"]),
        (&json!("US 8"), &json!(2))
    );
    assert_refused(
        &ask(json!({"dropId": drop, "userId": buyer, "variant": "US 9", "quantity": 2})).await,
        409,
        "DS021",
        "1 more at most",
    );
}

/// A drop without sizes reads, reserves and sells without any of the new fields (the ones it always had
/// are pinned by the test above and the views' own), and refuses an extension it never allowed.
#[tokio::test]
async fn a_drop_without_sizes_answers_as_it_always_did() {
    let adapter = Adapter::start().await;
    let drop = adapter
        .create_drop(json!({"name": unique("plain drop"), "price": 10, "totalStock": 2}))
        .await;
    assert!(!has_any(&drop, &["variants", "maxExtensions"]), "{drop}");
    let buyer = adapter.new_buyer().await;
    let (status, hold) = adapter.reserve(&id(&drop), &buyer).await;
    assert_eq!(status, 201);
    assert!(!has_any(&hold["data"], &["variant", "quantity"]), "{hold}");
    assert_refused(
        &adapter
            .post(
                &format!("/api/reservations/{}/extend", id(&hold["data"])),
                json!({"userId": buyer}),
            )
            .await,
        409,
        "DS034",
        "cannot be extended",
    );
    let (status, sale) = adapter
        .post(
            "/api/purchases",
            json!({"reservationId": id(&hold["data"]), "userId": buyer}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(!has_any(&sale["data"], &["variant", "quantity"]), "{sale}");
    // Without sizes the stock is required, as it always was.
    assert_refused(
        &adapter
            .post_as(
                "/api/drops",
                ADMIN_TOKEN,
                json!({"name": "no stock", "price": 1}),
            )
            .await,
        400,
        "bad_request",
        "totalStock is required",
    );
}
