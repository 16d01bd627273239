//! Connections that cost the adapter without being honest requests: sockets that send nothing, headers and
//! bodies trickled a byte at a time, more connections than the cap, HEAD probes, and a flood of health
//! checks. Each is closed or answered within its configured bound while a normal buyer is still served.

use std::time::{Duration, Instant};

use dropstock_tests::adapter::*;
use dropstock_tests::db::*;
use dropstock_tests::figures::record;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Reads until the server closes the connection or `deadline` passes; what it sent, or None if it kept
/// the connection open past the deadline.
async fn read_until_closed(
    stream: &mut (impl AsyncRead + Unpin),
    deadline: tokio::time::Instant,
) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(received),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

/// The status code of a raw HTTP/1.1 response, if it is one.
fn status_of(response: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(response);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// The JSON body of a raw HTTP/1.1 response with a declared length.
fn body_of(response: &[u8]) -> Value {
    let text = String::from_utf8_lossy(response);
    let (_, body) = text.split_once("\r\n\r\n").unwrap_or(("", ""));
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// One request on a connection of its own: the raw response, read to the server's close.
async fn raw_request(port: u16, request: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    read_until_closed(&mut stream, deadline)
        .await
        .expect("an answer and a close within 10 s")
}

/// The median time of `n` reservations by new buyers, each answered 201.
async fn buyer_latency(adapter: &Adapter, drop: &str, n: usize) -> Duration {
    let mut times = Vec::new();
    for _ in 0..n {
        let buyer = adapter.new_buyer().await;
        let started = Instant::now();
        let (status, answer) = adapter.reserve(drop, &buyer).await;
        times.push(started.elapsed());
        assert_eq!(status, 201, "a normal buyer is served: {answer}");
    }
    times.sort();
    times[n / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_trickling_clients_are_closed_within_their_timeouts_while_buyers_are_served() {
    const IDLE_SOCKETS: usize = 1000;
    const TRICKLED_BODIES: usize = 100;
    const TRICKLED_HEADERS: usize = 50;
    let adapter = Adapter::start_with(
        Options::admin()
            .with("DROPSTOCK_IDLE_TIMEOUT_SECONDS", "1")
            .with("DROPSTOCK_BODY_TIMEOUT_SECONDS", "1"),
    )
    .await;
    let drop = adapter.open_drop(100).await;
    let port = adapter.port;
    let started = tokio::time::Instant::now();

    // Sockets that never send a byte.
    let mut idle = Vec::with_capacity(IDLE_SOCKETS);
    for _ in 0..IDLE_SOCKETS {
        idle.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    // Bodies announced as 64 KiB and sent a byte every 100 ms (64 KiB would take almost two hours), and
    // headers that never end.
    let mut trickles = JoinSet::new();
    for k in 0..TRICKLED_BODIES + TRICKLED_HEADERS {
        trickles.spawn(async move {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let head = if k < TRICKLED_BODIES {
                "POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 65536\r\n\r\n{"
            } else {
                "GET /api/drops HTTP/1.1\r\nHost: x\r\n"
            };
            stream.write_all(head.as_bytes()).await.unwrap();
            let (mut reader, mut writer) = stream.into_split();
            let trickle = tokio::spawn(async move {
                let byte: &[u8] = if k < TRICKLED_BODIES { b" " } else { b"X" };
                while writer.write_all(byte).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let received = read_until_closed(&mut reader, deadline).await;
            trickle.abort();
            (k < TRICKLED_BODIES, received)
        });
    }

    // Meanwhile a buyer is served as usual.
    let latency = buyer_latency(&adapter, &drop, 5).await;
    assert!(
        latency < Duration::from_millis(100),
        "a normal buyer waited {latency:?} (median) beside the slow clients"
    );

    // Every idle socket is closed by the server after the idle timeout (1 s), well within 6 s.
    let deadline = started + Duration::from_secs(6);
    for (k, stream) in idle.iter_mut().enumerate() {
        assert!(
            read_until_closed(stream, deadline).await.is_some(),
            "idle socket {k} still open {:?} after it connected",
            started.elapsed()
        );
    }
    let idle_closed_after = started.elapsed();
    let mut bodies_timed_out = 0;
    while let Some(outcome) = trickles.join_next().await {
        let (body, received) = outcome.unwrap();
        let received = received.expect("a trickling client's connection closed within 10 s");
        if body {
            // The body ran out of time: 408 with the JSON envelope, then the close.
            assert_eq!(
                status_of(&received),
                Some(408),
                "{}",
                String::from_utf8_lossy(&received)
            );
            assert_eq!(body_of(&received)["code"], "request_timeout");
            bodies_timed_out += 1;
        }
    }
    assert_eq!(bodies_timed_out, TRICKLED_BODIES);
    assert_eq!(adapter.get("/healthz").await.0, 200);
    record(
        "edges 1 idle and trickling clients",
        &format!(
            "{IDLE_SOCKETS} silent sockets closed {:.1} s after they connected (idle timeout 1 s), \
             {TRICKLED_BODIES} trickled bodies answered 408 and {TRICKLED_HEADERS} trickled headers closed; \
             a buyer beside them served in {:.1} ms (median of 5)",
            idle_closed_after.as_secs_f64(),
            latency.as_secs_f64() * 1000.0
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_get_503_health_checks_still_answer_and_files_stay_bounded() {
    const CAP: usize = 100;
    const HEALTH_ROOM: usize = 64;
    const REFUSING_ROOM: usize = 256;
    const FLOOD: usize = 1000;
    let mut adapter = Adapter::start_with(
        Options::admin()
            .with("DROPSTOCK_MAX_CONNECTIONS", &CAP.to_string())
            .process(),
    )
    .await;
    let drop = adapter.open_drop(10).await;
    let port = adapter.port;
    let pid = adapter.pid();
    let open_files = move || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|entries| entries.count())
            .unwrap_or(0)
    };

    // Fill the cap with connections that stay open (idle, within the 30 s default).
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    // Once the adapter has taken them all, a buyer's request on a new connection gets 503 ...
    let refused = wait_for(Duration::from_secs(10), || async {
        let response = raw_request(port, "GET /api/drops HTTP/1.1\r\nHost: x\r\n\r\n").await;
        (status_of(&response) == Some(503)).then_some(response)
    })
    .await
    .expect("a request past the cap answered 503");
    assert_eq!(body_of(&refused)["code"], "unavailable");
    // ... while the load balancer's probe still gets its answer.
    let health = raw_request(port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(
        status_of(&health),
        Some(200),
        "{}",
        String::from_utf8_lossy(&health)
    );

    // Past the room kept for health checks too, every connection gets the canned 503 and is closed at
    // once, and the adapter's open files stay bounded however many arrive.
    for _ in 0..HEALTH_ROOM {
        held.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let flooding = flooding.clone();
        tokio::spawn(async move {
            let mut most = 0;
            while flooding.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(open_files());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            most
        })
    };
    let mut flood = JoinSet::new();
    for _ in 0..FLOOD {
        flood.spawn(async move {
            raw_request(port, "GET /api/drops HTTP/1.1\r\nHost: x\r\n\r\n").await
        });
    }
    let mut canned = 0;
    while let Some(response) = flood.join_next().await {
        let response = response.unwrap();
        // The first few may still have found room for health checks; all are refused.
        assert_eq!(
            status_of(&response),
            Some(503),
            "{}",
            String::from_utf8_lossy(&response)
        );
        assert_eq!(body_of(&response)["code"], "unavailable");
        canned += 1;
    }
    flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    let most_files = sampler.await.unwrap();
    // The cap, the room for health checks, the room for refusing gently, and the process's own files.
    assert!(
        most_files < CAP + HEALTH_ROOM + REFUSING_ROOM + 100,
        "the adapter had {most_files} files open with a cap of {CAP} connections"
    );

    // When the held connections go, buyers are served again.
    drop_all(held);
    let buyer = adapter.new_buyer().await;
    let (status, answer) = adapter.reserve(&drop, &buyer).await;
    assert_eq!(status, 201, "{answer}");
    record(
        "edges 2 connection cap",
        &format!(
            "cap {CAP}: past it a request got 503 and /healthz 200; {canned} more connections each got a 503 \
             and were closed; the adapter's open files peaked at {most_files}; buyers served again once \
             connections freed up"
        ),
    );
}

fn drop_all(streams: Vec<TcpStream>) {
    drop(streams);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_wherever_get_does() {
    let adapter = Adapter::start().await;
    let drop = adapter.open_drop(3).await;
    for path in [
        "/".to_owned(),
        "/healthz".to_owned(),
        "/api/drops".to_owned(),
        format!("/api/drops/{drop}"),
        "/openapi.json".to_owned(),
        "/metrics".to_owned(),
    ] {
        let get = adapter.http().get(adapter.url(&path)).send().await.unwrap();
        let head = adapter
            .http()
            .head(adapter.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200, "HEAD {path}");
        assert_eq!(
            head.headers().get("content-type"),
            get.headers().get("content-type"),
            "HEAD {path} describes what GET sends"
        );
        assert!(
            head.bytes().await.unwrap().is_empty(),
            "HEAD {path} has no body"
        );
    }
    let refused = adapter
        .http()
        .head(adapter.url("/api/reservations"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 405);
    assert_eq!(refused.headers()["allow"], "POST, OPTIONS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_health_checks_costs_one_database_check_a_second() {
    let adapter = Adapter::start().await;
    let drop = adapter.open_drop(5).await;
    let checks = |metrics: &str| -> u64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("dropstock_http_database_health_checks_total "))
            .and_then(|value| value.trim().parse().ok())
            .expect("the health check counter")
    };
    let before = checks(&adapter.metrics().await);
    let started = Instant::now();
    let mut probes = JoinSet::new();
    for _ in 0..20 {
        let http = adapter.http().clone();
        let url = adapter.url("/healthz");
        probes.spawn(async move {
            for _ in 0..100 {
                let status = http.get(&url).send().await.unwrap().status();
                assert_eq!(status, 200);
            }
        });
    }
    // A buyer beside the flood is served, not refused for want of a pooled connection.
    let buyer = adapter.new_buyer().await;
    let (status, answer) = adapter.reserve(&drop, &buyer).await;
    assert_eq!(status, 201, "{answer}");
    while let Some(probe) = probes.join_next().await {
        probe.unwrap();
    }
    let elapsed = started.elapsed();
    let made = checks(&adapter.metrics().await) - before;
    assert!(
        made <= elapsed.as_secs() + 2,
        "2,000 probes in {elapsed:?} made {made} database checks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_off_unless_asked_for() {
    let adapter = Adapter::start().await;
    let mut stream = TcpStream::connect(("127.0.0.1", adapter.port))
        .await
        .unwrap();
    // An HTTP/2 client's preface (prior knowledge), then its empty SETTINGS frame.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let answer = read_until_closed(&mut stream, deadline)
        .await
        .expect("the connection is closed at once");
    assert!(answer.is_empty(), "no HTTP/2 answer: {answer:?}");
    assert_eq!(adapter.get("/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_is_served_when_asked_for() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let adapter =
        Adapter::start_with(Options::admin().with("DROPSTOCK_HTTP2", "true").process()).await;
    let stream = TcpStream::connect(("127.0.0.1", adapter.port))
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("an HTTP/2 handshake");
    tokio::spawn(connection);
    // Several requests on one connection, as a load balancer multiplexes them.
    for path in ["/healthz", "/api/drops", "/openapi.json"] {
        let request = hyper::Request::get(format!("http://127.0.0.1:{}{path}", adapter.port))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200, "{path} over HTTP/2");
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice::<Value>(&body).expect("a JSON answer");
    }
}
