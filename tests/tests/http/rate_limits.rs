//! Abuse: a burst from one buyer, and from one client address, is answered 429 with `Retry-After` and the
//! JSON envelope, before it reaches the database; other buyers and addresses are not slowed; the limit
//! lifts after the time it names. (Honest load never sees a 429: faults/under_load.rs asserts that for
//! every load it runs with the default limits.)

use std::time::{Duration, Instant};

use dropstock_tests::adapter::*;
use dropstock_tests::db::*;
use dropstock_tests::figures::record;
use serde_json::json;

/// Fires `n` requests at once; (status, Retry-After) of each.
async fn burst(
    requests: Vec<reqwest::RequestBuilder>,
) -> Vec<(u16, Option<u64>, serde_json::Value)> {
    let sent = requests.into_iter().map(|request| async move {
        let response = request.send().await.unwrap();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        let (status, body) = read(response).await;
        (status, retry_after, body)
    });
    futures_util::future::join_all(sent).await
}

fn assert_limited(answers: &[(u16, Option<u64>, serde_json::Value)], allowed: usize, whose: &str) {
    let limited: Vec<_> = answers
        .iter()
        .filter(|(status, ..)| *status == 429)
        .collect();
    assert!(
        answers.len() - limited.len() <= allowed,
        "at most {allowed} of the burst get through"
    );
    assert!(!limited.is_empty(), "a burst {whose} is limited");
    for (_, retry_after, body) in limited {
        assert!(
            retry_after.is_some_and(|s| (1..=5).contains(&s)),
            "Retry-After in whole seconds: {retry_after:?}"
        );
        assert_refused(&(429, body.clone()), 429, "rate_limited", whose);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_one_buyer_gets_429_and_others_are_served() {
    let adapter = Adapter::start_with(
        Options::admin()
            .with("DROPSTOCK_RATE_LIMIT_PER_USER", "2")
            .with("DROPSTOCK_RATE_LIMIT_PER_USER_BURST", "5"),
    )
    .await;
    let db = connect().await;
    let drop = adapter.open_drop(100).await;
    let (bot, honest) = (adapter.new_buyer().await, adapter.new_buyer().await);
    let sold_before = stock(&db, uuid::Uuid::parse_str(&drop).unwrap()).await;

    let started = Instant::now();
    let requests = (0..40)
        .map(|_| {
            adapter
                .http()
                .post(adapter.url("/api/reservations"))
                .json(&json!({"dropId": drop, "userId": bot}))
        })
        .collect();
    let answers = burst(requests).await;
    assert_limited(&answers, 7, "for this buyer");
    let limited = answers.iter().filter(|(s, ..)| *s == 429).count();
    // The bot's retries were all the same hold; it took one unit.
    let after = stock(&db, uuid::Uuid::parse_str(&drop).unwrap()).await;
    assert_eq!(after.0, sold_before.0 - 1, "one unit held by the bot");

    // Another buyer at the same moment is served.
    assert_eq!(adapter.reserve(&drop, &honest).await.0, 201);
    // The limit lifts after the time it names (2 per second: a request fits again within a second).
    let lifted = wait_until(Duration::from_secs(3), || async {
        adapter.reserve(&drop, &bot).await.0 == 200
    })
    .await;
    assert!(lifted, "the bot may come back after Retry-After");
    record(
        "abuse 1 per-buyer limit",
        &format!(
            "40 reservations at once by one buyer (limit 2/s, burst 5): {limited} answered 429 with Retry-After, \
             1 unit held, another buyer served at once, lifted within {:.1} s",
            started.elapsed().as_secs_f64()
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_gets_429_but_health_checks_pass() {
    let adapter = Adapter::start_with(
        Options::admin()
            .with("DROPSTOCK_RATE_LIMIT_PER_IP", "20")
            .with("DROPSTOCK_RATE_LIMIT_PER_IP_BURST", "30"),
    )
    .await;
    let requests = (0..120)
        .map(|_| adapter.http().get(adapter.url("/api/drops")))
        .collect();
    let answers = burst(requests).await;
    assert_limited(&answers, 50, "from this address");
    let limited = answers.iter().filter(|(s, ..)| *s == 429).count();
    // Probes from the load balancer are not the client's traffic.
    assert_eq!(adapter.get("/healthz").await.0, 200);
    let metrics = adapter
        .http()
        .get(adapter.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics.text().await.unwrap().contains("status=\"429\""),
        "429s are counted in the metrics"
    );
    let lifted = wait_until(Duration::from_secs(3), || async {
        adapter.get("/api/drops").await.0 == 200
    })
    .await;
    assert!(lifted, "the address may come back after Retry-After");
    record(
        "abuse 2 per-address limit",
        &format!("120 requests at once from one address (limit 20/s, burst 30): {limited} answered 429 with Retry-After, health checks unaffected"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_of_zero_turns_it_off() {
    let adapter = Adapter::start_with(
        Options::admin()
            .with("DROPSTOCK_RATE_LIMIT_PER_IP", "0")
            .with("DROPSTOCK_RATE_LIMIT_PER_USER", "0"),
    )
    .await;
    let buyer = adapter.new_buyer().await;
    let drop = adapter.open_drop(1).await;
    let requests = (0..60)
        .map(|_| {
            adapter
                .http()
                .post(adapter.url("/api/reservations"))
                .json(&json!({"dropId": drop, "userId": buyer}))
        })
        .collect();
    let answers = burst(requests).await;
    assert!(
        answers
            .iter()
            .all(|(status, ..)| *status == 200 || *status == 201),
        "no limit: {:?}",
        answers.iter().map(|(s, ..)| *s).collect::<Vec<_>>()
    );
}
