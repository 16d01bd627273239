//! Accepting connections and shutting down gracefully: when `shutdown` completes (the binary ties it to
//! SIGTERM and Ctrl-C) the server stops accepting, lets in-flight requests finish, closes WebSockets with
//! 1001 "going away", and returns.
//!
//! No connection holds resources for free: each takes a slot under the cap (`connections`); one that
//! sends nothing is closed after the idle timeout, measured from the start (`first_bytes`, since
//! hyper's own header timer only starts once the protocol is known), between keep-alive requests and
//! while headers trickle in (hyper's header timer). Bodies and whole requests have deadlines of their
//! own (`input`, `routes`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};

use crate::app::App;
use crate::http::connections::{Admission, BeyondCap, Slot, FULL_RESPONSE};
use crate::http::limits::ClientAddr;
use crate::http::routes;

/// What every HTTP/2 client connection opens with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Streams one HTTP/2 connection may run at once.
const H2_MAX_STREAMS: u32 = 256;

/// Serves HTTP on `listener` until `shutdown` completes, then drains for at most `app.drain`.
pub async fn run(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let drain = app.drain;
    let idle = app.timeouts.idle;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(idle);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .keep_alive_interval(Some(idle / 2))
        .keep_alive_timeout(idle / 2);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // The cap keeps the process below its file limit, so this is rare: wait a moment
                        // rather than spin.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (slot, beyond_cap) = match app.connections.admit() {
                    Admission::Served(slot) => (slot, false),
                    Admission::HealthOnly(slot) => (slot, true),
                    Admission::Refused(gently) => {
                        app.metrics.connections_refused.inc();
                        match gently {
                            Some(slot) => {
                                tokio::spawn(refuse(stream, slot));
                            }
                            // One non-blocking write into an empty socket buffer, and close.
                            None => drop(stream.try_write(FULL_RESPONSE)),
                        }
                        continue;
                    }
                };
                if beyond_cap {
                    app.metrics.connections_refused.inc();
                }
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let builder = builder.clone();
                // Taken here, before shutdown can begin, so that shutdown waits for this connection.
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let start = tokio::select! {
                        start = tokio::time::timeout(idle, first_bytes(&stream)) => start,
                        _ = app.shutdown.cancelled() => return,
                    };
                    match start {
                        Ok(Ok(Start::Http1)) => {}
                        Ok(Ok(Start::Http2)) if app.http2 => {}
                        // Closed, failed, silent for the idle timeout, or HTTP/2 while it is off.
                        _ => return,
                    }
                    let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                        request.extensions_mut().insert(ClientAddr(peer.ip()));
                        request.extensions_mut().insert(slot.clone());
                        if beyond_cap {
                            request.extensions_mut().insert(BeyondCap);
                        }
                        routes::handle(request, app.clone())
                    });
                    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    if let Err(error) = watcher.watch(connection.into_owned()).await {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }

    tracing::info!("shutting down: draining requests and closing WebSockets");
    drop(listener);
    app.shutdown.cancel();
    app.sockets.close();
    let drained = tokio::time::timeout(drain, async {
        graceful.shutdown().await;
        app.sockets.wait().await;
    })
    .await;
    match drained {
        Ok(()) => tracing::info!("shut down cleanly"),
        Err(_) => tracing::warn!(
            seconds = drain.as_secs(),
            "requests still running after the drain time; exiting anyway"
        ),
    }
}

/// How long a refused connection is given to take its 503 before it is closed.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Answers a connection past the cap with the canned 503 and closes it so that the answer arrives: the
/// write side is shut first and what the client sent is read and dropped for a moment, since closing a
/// socket with unread data resets it and the client would see the reset instead of the 503.
async fn refuse(mut stream: TcpStream, slot: Slot) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _slot = slot;
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(FULL_RESPONSE).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// How a connection starts.
enum Start {
    Closed,
    Http1,
    Http2,
}

/// Waits for the client's first bytes, far enough to tell HTTP/1 from HTTP/2's preface, without
/// consuming them (hyper reads them next).
async fn first_bytes(stream: &TcpStream) -> std::io::Result<Start> {
    let mut seen = [0u8; 24];
    loop {
        let n = stream.peek(&mut seen).await?;
        if n == 0 {
            return Ok(Start::Closed);
        }
        if !H2_PREFACE.starts_with(&seen[..n]) {
            return Ok(Start::Http1);
        }
        if n == H2_PREFACE.len() {
            return Ok(Start::Http2);
        }
        // Part of the preface so far: peeking again at once would return the same bytes, so wait for
        // more. Only HTTP/2 clients (and requests beginning "PR") take this path.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
