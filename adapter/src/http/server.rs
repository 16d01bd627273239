//! Accepting connections and shutting down gracefully: when `shutdown` completes (the binary ties it to
//! SIGTERM and Ctrl-C) the server stops accepting, lets in-flight requests finish, closes WebSockets with
//! 1001 "going away", and returns.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::app::App;
use crate::http::limits::ClientAddr;
use crate::http::routes;

/// A client that has not sent its request headers by then is holding a connection for nothing.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves HTTP on `listener` until `shutdown` completes, then drains for at most `app.drain`.
pub async fn run(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let drain = app.drain;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Usually out of file descriptors: wait a moment rather than spin.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ClientAddr(peer.ip()));
                    routes::handle(request, app.clone())
                });
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                let connection = graceful.watch(connection.into_owned());
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
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
