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
async fn in_jwt_mode_buyers_act_only_as_themselves() {
    let adapter =
        Adapter::start_with(Options::admin().with("DROPSTOCK_JWT_SECRET", JWT_SECRET)).await;
    let drop = adapter.open_drop(5).await;

    // Creating buyers is the host application's job in this mode: admin token only.
    let name = json!({"username": unique("ada")});
    assert_refused(
        &adapter.post("/api/users", name.clone()).await,
        401,
        "unauthorized",
        "admin token",
    );
    let (status, ada) = adapter.post_as("/api/users", ADMIN_TOKEN, name).await;
    assert_eq!(status, 201, "{ada}");
    let ada = id(&ada["data"]);
    let (_, grace) = adapter
        .post_as(
            "/api/users",
            ADMIN_TOKEN,
            json!({"username": unique("grace")}),
        )
        .await;
    let grace = id(&grace["data"]);

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
