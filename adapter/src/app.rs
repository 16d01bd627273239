//! The adapter as a whole: what every request handler and WebSocket client shares, how it is built from
//! the configuration, and how it runs until shut down.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Timeouts};
use crate::db::batching::Batcher;
use crate::db::pool::{self, Database, StartupError};
use crate::db::sold_out::SoldOutShortcut;
use crate::feed::hub::Hub;
use crate::feed::relay;
use crate::feed::socketio::{self, SocketIoFeed};
use crate::http::access::Access;
use crate::http::connections::ConnectionCap;
use crate::http::cors::Cors;
use crate::http::health::HealthCheck;
use crate::http::limits::RateLimits;
use crate::http::metrics::Metrics;
use crate::http::server;

pub struct App {
    /// Where the database is, for messages.
    pub database: tokio_postgres::Config,
    /// Where the LISTEN connection goes (outside the pool): the database itself, even when requests go
    /// through a pooler.
    pub listen_database: tokio_postgres::Config,
    /// Connections for requests; the LISTEN connection is not among them.
    pub pool: Database,
    /// Reservations, grouped per drop into one `reserve_items` call each.
    pub holds: Batcher,
    /// Answers "sold out" without the database while the feed says a drop is (see `db::sold_out`).
    pub sold_out: SoldOutShortcut,
    /// Who may create drops and act for which buyer.
    pub access: Access,
    /// Which browser origins may call the API.
    pub cors: Cors,
    /// The feed's fan-out: the relay publishes into it, each WebSocket client reads from it.
    pub hub: Hub,
    /// The database check `/healthz` answers from, shared by probes for a second.
    pub health: HealthCheck,
    /// `/socket.io/`: the feed for Socket.IO clients, fed from the hub.
    pub socketio: SocketIoFeed,
    /// What `/metrics` reports, counted by requests, the relay and WebSocket clients alike.
    pub metrics: Metrics,
    /// Per client address and per buyer: abuse gets 429 before it reaches the database.
    pub limits: RateLimits,
    /// How long the adapter waits for clients and for the database.
    pub timeouts: Timeouts,
    /// The cap on open client connections.
    pub connections: ConnectionCap,
    /// Whether HTTP/2 (cleartext, prior knowledge) is served besides HTTP/1.1.
    pub http2: bool,
    /// How long shutdown waits for in-flight requests and WebSocket closes before giving up on them.
    pub drain: Duration,
    /// Cancelled on shutdown: WebSocket clients close with 1001 and the LISTEN task stops.
    pub shutdown: CancellationToken,
    /// WebSocket client tasks (and the Socket.IO relay, which closes its clients on shutdown). Once
    /// upgraded they are no longer hyper connections, so the graceful shutdown of the HTTP server does
    /// not wait for them; this does.
    pub sockets: TaskTracker,
}

impl App {
    /// Opens the pool and checks that the database answers and has the extension, so a misconfigured
    /// adapter says what is wrong at once instead of answering 503 to every request.
    pub async fn connect(config: &Config) -> Result<Arc<App>, StartupError> {
        let database = pool::parse_url(&config.database_url)?;
        let timeouts = config.timeouts();
        let pool = pool::open(
            &database,
            usize::from(config.pool_size),
            timeouts.database,
            config.statements,
        )?;
        let listen_database = match &config.listen_database_url {
            Some(url) if !url.is_empty() => pool::parse_url(url)?,
            _ => database.clone(),
        };
        pool::check(&pool, &database).await?;
        let metrics = Metrics::new();
        // The Socket.IO feed opens inboxes through the app it is part of.
        Ok(Arc::new_cyclic(|app| App {
            database,
            listen_database,
            holds: Batcher::new(pool.clone(), metrics.batching.clone()),
            sold_out: SoldOutShortcut::new(pool.clone()),
            pool,
            access: Access::new(config.admin_token(), config.jwt_rules())
                .with_open_drop_creation(config.open_drop_creation),
            cors: Cors::new(&config.cors_origins),
            hub: Hub::new(),
            socketio: SocketIoFeed::new(&metrics.socketio_clients, app.clone()),
            metrics,
            health: HealthCheck::default(),
            limits: config.rate_limits(),
            drain: config.drain(),
            timeouts,
            connections: ConnectionCap::fitted(
                config.max_connections as usize,
                usize::from(config.pool_size),
            ),
            http2: config.http2,
            shutdown: CancellationToken::new(),
            sockets: TaskTracker::new(),
        }))
    }
}

/// Runs the adapter on `listener` (HTTP, the WebSocket and Socket.IO feeds and their LISTEN relay) until `shutdown`
/// completes, then drains and closes the pool. Tests start it on a free port and stop it by completing
/// `shutdown`.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let relay = tokio::spawn(relay::run(app.clone()));
    app.sockets.spawn(socketio::run(app.clone()));
    server::run(listener, app.clone(), shutdown).await;
    let _ = relay.await;
    app.pool.close();
}
