//! Who may do what through the adapter: the admin token for creating drops, buyer tokens (JWT mode) for
//! acting as a buyer, and the CORS allow-list.

use dropstock_tests::adapter::*;
use dropstock_tests::db::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

fn drop_body() -> Value {
    json!({"name": unique("guarded"), "price": 12, "totalStock": 2})
}

/// A buyer token as a host application would issue it: HS256 over `sub` and `exp`.
fn token(secret: &str, claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// `POST path` with `body`: refused without the admin token (401), then done with it (201); the answer's data.
async fn only_with_the_admin_token(adapter: &Adapter, path: &str, body: Value) -> Value {
    assert_refused(
        &adapter.post(path, body.clone()).await,
        401,
        "unauthorized",
        "admin token",
    );
    let (status, done) = adapter.post_as(path, ADMIN_TOKEN, body).await;
    assert_eq!(status, 201, "{done}");
    done["data"].clone()
}

/// A buyer registered with the admin token, as the host application does in JWT mode; their id.
async fn admin_made_buyer(adapter: &Adapter, name: &str) -> String {
    let (status, buyer) = adapter
        .post_as("/api/users", ADMIN_TOKEN, json!({"username": unique(name)}))
        .await;
    assert_eq!(status, 201, "{buyer}");
    id(&buyer["data"])
}

fn in_an_hour() -> i64 {
    chrono::Utc::now().timestamp() + 3600
}

fn buyer_token(user: &str) -> String {
    token(JWT_SECRET, json!({"sub": user, "exp": in_an_hour()}))
}

#[tokio::test]
async fn creating_drops_is_refused_until_an_admin_token_is_configured() {
    let adapter = Adapter::start_with(Options::default()).await;
    let refused = adapter.post_as("/api/drops", "anything", drop_body()).await;
    assert_refused(&refused, 403, "admin_disabled", "DROPSTOCK_ADMIN_TOKEN");
    assert_refused(
        &adapter.post("/api/drops", drop_body()).await,
        403,
        "admin_disabled",
        "disabled",
    );
    // Everything else works without it, as in the replaced API.
    assert_eq!(adapter.get("/api/drops").await.0, 200);
    adapter.new_buyer().await;
}

#[tokio::test]
async fn creating_drops_needs_the_admin_token() {
    let adapter = Adapter::start().await;
    let missing = adapter.post("/api/drops", drop_body()).await;
    assert_refused(&missing, 401, "unauthorized", "admin token");
    let wrong = adapter
        .post_as("/api/drops", "not-the-token", drop_body())
        .await;
    assert_refused(&wrong, 401, "unauthorized", "not valid");
    let response = adapter
        .http()
        .post(adapter.url("/api/drops"))
        .json(&drop_body())
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let (status, created) = adapter
        .post_as("/api/drops", ADMIN_TOKEN, drop_body())
        .await;
    assert_eq!(status, 201, "{created}");
}

#[tokio::test]
async fn open_drop_creation_lets_untokened_clients_create_drops_and_says_so_at_start_up() {
    // The replaced client's Create Drop page sends no token, and its own date format.
    let body = json!({"name": unique("open"), "price": 10, "totalStock": 1,
                      "startsAt": "27-11-2026, 09:30 PM"});
    let closed = Adapter::start().await;
    assert_refused(
        &closed.post("/api/drops", body.clone()).await,
        401,
        "unauthorized",
        "admin token",
    );
    let open = Adapter::start_with(
        Options::admin()
            .with("DROPSTOCK_OPEN_DROP_CREATION", "true")
            .process(),
    )
    .await;
    let (status, created) = open.post("/api/drops", body).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["data"]["startsAt"], "2026-11-27T21:30:00.000Z");
    let log = open.log();
    assert!(
        log.lines()
            .any(|line| line.contains("WARN") && line.contains("DROP CREATION IS OPEN")),
        "no start-up warning: {log}"
    );
    // "false" (or 0) leaves it closed.
    let off = Adapter::start_with(Options::admin().with("DROPSTOCK_OPEN_DROP_CREATION", "0")).await;
    assert_eq!(off.post("/api/drops", drop_body()).await.0, 401);
}

#[tokio::test]
async fn only_the_admin_creates_a_buyer_with_a_given_id() {
    let id = new_id();
    let body = json!({"username": unique("fixed"), "id": id});
    let no_admin = Adapter::start_with(Options::default()).await;
    assert_refused(
        &no_admin.post("/api/users", body.clone()).await,
        403,
        "admin_disabled",
        "given id",
    );
    let adapter = Adapter::start().await;
    let created = only_with_the_admin_token(&adapter, "/api/users", body).await;
    assert_eq!(created["id"], id.as_str());
    let again = json!({"username": unique("other"), "id": id});
    assert_refused(
        &adapter.post_as("/api/users", ADMIN_TOKEN, again).await,
        409,
        "DS041",
        "already exists",
    );
    // The buyer is a buyer like any other: it reserves under its id.
    let drop = adapter.open_drop(1).await;
    assert_eq!(adapter.reserve(&drop, &id).await.0, 201);
    // Without an id, anyone may still register, as in the replaced API.
    let (status, _) = adapter
        .post("/api/users", json!({"username": unique("free")}))
        .await;
    assert_eq!(status, 201);
    assert_refused(
        &adapter
            .post("/api/users", json!({"username": unique("bad"), "id": "42"}))
            .await,
        400,
        "bad_request",
        "id must be a UUID",
    );
}

#[tokio::test]
async fn in_jwt_mode_buyers_act_only_as_themselves() {
    let adapter =
        Adapter::start_with(Options::admin().with("DROPSTOCK_JWT_SECRET", JWT_SECRET)).await;
    let drop = adapter.open_drop(5).await;

    // Creating buyers is the host application's job in this mode: admin token only.
    let ada =
        id(
            &only_with_the_admin_token(&adapter, "/api/users", json!({"username": unique("ada")}))
                .await,
        );
    let grace = admin_made_buyer(&adapter, "grace").await;

    // No token, a forged one, an expired one, the wrong algorithm, a sub that is no user id: 401.
    let body = json!({"dropId": drop, "userId": ada});
    assert_refused(
        &adapter.post("/api/reservations", body.clone()).await,
        401,
        "unauthorized",
        "buyer token is required",
    );
    let forged = token(
        "some-other-secret",
        json!({"sub": ada, "exp": in_an_hour()}),
    );
    assert_refused(
        &adapter
            .post_as("/api/reservations", &forged, body.clone())
            .await,
        401,
        "unauthorized",
        "signature",
    );
    let expired = token(
        JWT_SECRET,
        json!({"sub": ada, "exp": chrono::Utc::now().timestamp() - 3600}),
    );
    assert_refused(
        &adapter
            .post_as("/api/reservations", &expired, body.clone())
            .await,
        401,
        "unauthorized",
        "expired",
    );
    let hs512 = encode(
        &Header::new(Algorithm::HS512),
        &json!({"sub": ada, "exp": in_an_hour()}),
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    assert_refused(
        &adapter
            .post_as("/api/reservations", &hs512, body.clone())
            .await,
        401,
        "unauthorized",
        "HS256",
    );
    let no_exp = token(JWT_SECRET, json!({"sub": ada}));
    assert_refused(
        &adapter
            .post_as("/api/reservations", &no_exp, body.clone())
            .await,
        401,
        "unauthorized",
        "exp",
    );
    let odd_sub = token(JWT_SECRET, json!({"sub": "ada", "exp": in_an_hour()}));
    assert_refused(
        &adapter
            .post_as("/api/reservations", &odd_sub, body.clone())
            .await,
        401,
        "unauthorized",
        "sub",
    );

    // Grace's token with Ada's userId: 403, and nothing is reserved.
    let as_grace = buyer_token(&grace);
    let posing = adapter
        .post_as("/api/reservations", &as_grace, body.clone())
        .await;
    assert_refused(&posing, 403, "forbidden", "does not match");
    let (_, one) = adapter.get(&format!("/api/drops/{drop}")).await;
    assert_eq!(one["data"]["availableStock"], 5);

    // Ada's token: with her userId or none at all, the hold is hers.
    let as_ada = buyer_token(&ada);
    let (status, hold) = adapter
        .post_as("/api/reservations", &as_ada, json!({"dropId": drop}))
        .await;
    assert_eq!(status, 201, "{hold}");
    assert_eq!(hold["data"]["userId"], ada.as_str());
    let (status, again) = adapter.post_as("/api/reservations", &as_ada, body).await;
    assert_eq!(status, 200, "{again}");
    let hold = id(&hold["data"]);

    // Grace can neither cancel nor buy Ada's hold, even naming no user.
    let cancel = format!("/api/reservations/{hold}/cancel");
    assert_refused(
        &adapter.post_as(&cancel, &as_grace, json!({})).await,
        403,
        "DS031",
        "another buyer",
    );
    let buy = json!({"reservationId": hold});
    assert_refused(
        &adapter
            .post_as("/api/purchases", &as_grace, buy.clone())
            .await,
        403,
        "DS031",
        "another buyer",
    );
    assert_refused(
        &adapter.post("/api/purchases", buy.clone()).await,
        401,
        "unauthorized",
        "buyer token",
    );
    let (status, sale) = adapter.post_as("/api/purchases", &as_ada, buy).await;
    assert_eq!(status, 200, "{sale}");
    assert_eq!(sale["data"]["userId"], ada.as_str());
}

#[tokio::test]
async fn without_jwt_mode_the_body_user_is_trusted_and_tokens_are_ignored() {
    let adapter = Adapter::start().await;
    let drop = adapter.open_drop(2).await;
    let buyer = adapter.new_buyer().await;
    let someone_else = buyer_token(&new_id());
    let (status, hold) = adapter
        .post_as(
            "/api/reservations",
            &someone_else,
            json!({"dropId": drop, "userId": buyer}),
        )
        .await;
    assert_eq!(status, 201, "{hold}");
    assert_eq!(hold["data"]["userId"], buyer.as_str());
}

#[tokio::test]
async fn browsers_may_call_from_allowed_origins_only() {
    let allowed = "https://shop.example";
    let adapter = Adapter::start_with(Options::admin().with(
        "DROPSTOCK_CORS_ORIGINS",
        &format!("{allowed}, https://other.example"),
    ))
    .await;
    let http = adapter.http();

    let response = http
        .get(adapter.url("/api/drops"))
        .header("origin", allowed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], allowed);
    let response = http
        .get(adapter.url("/api/drops"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());

    let preflight = http
        .request(reqwest::Method::OPTIONS, adapter.url("/api/reservations"))
        .header("origin", allowed)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, authorization",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    let headers = preflight.headers();
    assert_eq!(headers["access-control-allow-origin"], allowed);
    assert!(headers["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert!(headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));

    let refused = http
        .request(reqwest::Method::OPTIONS, adapter.url("/api/reservations"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}

#[tokio::test]
async fn the_feed_refuses_pages_from_origins_off_the_allow_list() {
    let adapter = Adapter::start_with(
        Options::admin().with("DROPSTOCK_CORS_ORIGINS", "https://shop.example"),
    )
    .await;
    let open = |origin: Option<String>| {
        let port = adapter.port;
        async move {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let mut request = format!("ws://127.0.0.1:{port}/ws")
                .into_client_request()
                .unwrap();
            if let Some(origin) = origin {
                request
                    .headers_mut()
                    .insert("origin", origin.parse().unwrap());
            }
            match tokio_tungstenite::connect_async(request).await {
                Ok(_) => 101,
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    response.status().as_u16()
                }
                Err(error) => panic!("{error}"),
            }
        }
    };
    assert_eq!(open(Some("https://evil.example".into())).await, 403);
    assert_eq!(open(Some("https://shop.example".into())).await, 101);
    // The adapter's own page, and clients that are not browsers.
    assert_eq!(
        open(Some(format!("http://127.0.0.1:{}", adapter.port))).await,
        101
    );
    assert_eq!(open(None).await, 101);
}

#[tokio::test]
async fn buyer_tokens_are_checked_for_not_before_issuer_and_audience() {
    let adapter = Adapter::start_with(
        Options::admin()
            .with("DROPSTOCK_JWT_SECRET", JWT_SECRET)
            .with("DROPSTOCK_JWT_ISSUER", "https://shop.example")
            .with("DROPSTOCK_JWT_AUDIENCE", "dropstock"),
    )
    .await;
    let drop = adapter.open_drop(5).await;
    let ada = admin_made_buyer(&adapter, "ada").await;
    let body = json!({"dropId": drop, "userId": ada});
    let now = chrono::Utc::now().timestamp();
    let claims = |extra: Value| {
        let mut claims = json!({"sub": ada, "exp": in_an_hour(), "iss": "https://shop.example", "aud": "dropstock"});
        for (key, value) in extra.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(key);
            } else {
                claims[key] = value.clone();
            }
        }
        token(JWT_SECRET, claims)
    };
    for (what, token, fragment) in [
        (
            "not valid yet",
            claims(json!({"nbf": now + 3600})),
            "not valid yet",
        ),
        (
            "another issuer",
            claims(json!({"iss": "https://evil.example"})),
            "issuer",
        ),
        ("no issuer", claims(json!({"iss": null})), "required claim"),
        (
            "another audience",
            claims(json!({"aud": "someone-else"})),
            "audience",
        ),
        (
            "no audience",
            claims(json!({"aud": null})),
            "required claim",
        ),
    ] {
        let refused = adapter
            .post_as("/api/reservations", &token, body.clone())
            .await;
        assert_refused(&refused, 401, "unauthorized", fragment);
        assert!(refused.1.to_string().len() < 400, "{what}");
    }
    // Valid from a minute ago, for this audience among others, by the expected issuer.
    let good = claims(json!({"nbf": now - 60, "aud": ["other", "dropstock"]}));
    let (status, answer) = adapter.post_as("/api/reservations", &good, body).await;
    assert_eq!(status, 201, "{answer}");
}

#[tokio::test]
async fn without_a_configured_audience_tokens_with_one_are_accepted() {
    let adapter =
        Adapter::start_with(Options::admin().with("DROPSTOCK_JWT_SECRET", JWT_SECRET)).await;
    let drop = adapter.open_drop(5).await;
    let ada = admin_made_buyer(&adapter, "ada").await;
    let with_audience = token(
        JWT_SECRET,
        json!({"sub": ada, "exp": in_an_hour(), "aud": "some-shop"}),
    );
    let (status, answer) = adapter
        .post_as(
            "/api/reservations",
            &with_audience,
            json!({"dropId": drop, "userId": ada}),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
}

/// Every public read and every feed message, searched for a buyer's id after they bought: it appears
/// only in the answers to that buyer's own requests. Without buyer tokens an id is enough to act as the
/// buyer, so it must not be readable by anyone else.
#[tokio::test]
async fn public_reads_and_feed_messages_never_carry_a_buyer_id() {
    let adapter = Adapter::start().await;
    let drop = adapter.open_drop(5).await;
    let buyer = adapter.new_buyer().await;
    let mut everything = adapter.ws("").await;
    let mut one = adapter.ws(&format!("?drop={drop}")).await;
    everything.snapshot().await;
    one.snapshot().await;

    let (status, hold) = adapter.reserve(&drop, &buyer).await;
    assert_eq!(status, 201, "{hold}");
    let (status, sale) = adapter
        .post(
            "/api/purchases",
            json!({"userId": buyer, "reservationId": id(&hold["data"])}),
        )
        .await;
    assert_eq!(status, 200, "{sale}");
    // The buyer's own answers do carry it: they are theirs.
    assert_eq!(sale["data"]["userId"], buyer.as_str());

    let mut seen = Vec::new();
    for feed in [&mut everything, &mut one] {
        let purchase = feed
            .expect(
                std::time::Duration::from_secs(5),
                "the purchase message",
                |message: &Value| {
                    message["type"] == "purchase" && message["dropId"] == drop.as_str()
                },
            )
            .await;
        seen.push(("a purchase message".to_owned(), purchase.to_string()));
    }
    let late = adapter.ws(&format!("?drop={drop}")).await.snapshot().await;
    seen.push(("a snapshot with the sale".to_owned(), late.to_string()));
    for path in [
        "/api/drops".to_owned(),
        format!("/api/drops/{drop}"),
        "/metrics".to_owned(),
        "/openapi.json".to_owned(),
        "/".to_owned(),
    ] {
        let text = adapter
            .http()
            .get(adapter.url(&path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        seen.push((path, text));
    }
    assert!(
        seen[0].1.contains("username"),
        "the purchase message names the buyer"
    );
    for (what, text) in &seen {
        assert!(
            !text.contains(&buyer),
            "{what} carries the buyer's id: {text}"
        );
    }
}
