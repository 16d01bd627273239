//! What every request handler and WebSocket client shares.

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::db::batching::Batcher;
use crate::feed::hub::Hub;
use crate::http::access::Access;
use crate::http::cors::Cors;
use crate::http::limits::RateLimits;
use crate::http::metrics::Metrics;

pub struct App {
    pub pool: Pool,
    /// Reservations, grouped per drop into one `reserve_items` call each.
    pub reservations: Batcher,
    pub access: Access,
    pub cors: Cors,
    pub hub: Hub,
    pub metrics: Metrics,
    /// Per client address and per buyer: abuse gets 429 before it reaches the database.
    pub limits: RateLimits,
    /// Cancelled on SIGTERM: WebSocket clients close with 1001 and the LISTEN task stops.
    pub shutdown: CancellationToken,
    /// WebSocket client tasks. Once upgraded they are no longer hyper connections, so the graceful
    /// shutdown of the HTTP server does not wait for them; this does.
    pub sockets: TaskTracker,
}
