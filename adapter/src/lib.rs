//! dropstock-http: the HTTP adapter in front of the dropstock extension (REST, WebSocket and Socket.IO feeds,
//! live page).
//!
//! The adapter holds no state that matters: any number of copies can run side by side, each with its own
//! pool and its own LISTEN connection. The `dropstock-http` binary parses flags and signals and calls
//! [`serve`]; tests do the same in-process on a free port:
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use clap::Parser;
//! let config = dropstock_http::Config::try_parse_from([
//!     "dropstock-http",
//!     "--database-url",
//!     "postgresql://postgres@127.0.0.1:5544/postgres",
//! ])?;
//! let app = dropstock_http::App::connect(&config).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(dropstock_http::serve(listener, app, async {
//!     let _ = stopped.await;
//! }));
//! // … requests …
//! let _ = stop.send(());
//! server.await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - [`config`]: the flags and environment variables, with their defaults.
//! - `app`: [`App`], what every request and WebSocket client shares; [`App::connect`] builds it and
//!   checks the database; [`serve`] runs the HTTP server and the LISTEN relay until shutdown.
//! - [`http`]: everything about requests and responses.
//!   - [`http::server`]: the accept loop, the idle timeout from the first byte, and the graceful shutdown.
//!   - [`http::connections`]: the cap on open connections, with room kept for health checks.
//!   - [`http::routes`]: the router, one handler per endpoint, errors turned into responses in one place.
//!   - [`http::input`]: reading request bodies (JSON only, within their deadline) and queries, with a 400
//!     that names the field.
//!   - [`http::respond`]: writing responses (the success envelope, JSON, text); depends on nothing else.
//!   - [`http::errors`]: [`http::errors::ApiError`] and the SQLSTATE → HTTP status table.
//!   - [`http::access`]: the admin token and buyer tokens (JWT).
//!   - [`http::health`]: `/healthz`, one database check a second shared by every probe.
//!   - [`http::cors`], [`http::limits`] (rate limits per address and per buyer), [`http::metrics`]
//!     (Prometheus), [`http::openapi`] (the OpenAPI document), [`http::page`] (the drop page, compiled in).
//! - [`db`]: everything about the database.
//!   - [`db::pool`]: the connection pool, the deadline of every call, and the start-up checks.
//!   - [`db::queries`]: one function per SQL call the API makes, prepared or unnamed (behind a pooler).
//!   - [`db::batching`]: requests to reserve in one drop share one `reserve_items` call.
//!   - [`db::models`]: the JSON views rows are read into, with the replaced API's field names.
//! - [`feed`]: the live feed of stock changes.
//!   - [`feed::relay`]: the one LISTEN connection (stock notices and offers), reconnected with backoff.
//!   - [`feed::notice`]: the worker's notice formats (the NOTIFY payloads, stock and offer).
//!   - [`feed::inbox`]: opening a buyer's inbox (their offers) with their inbox key or buyer token.
//!   - [`feed::hub`]: the fan-out from the relay to every client, bounded in memory.
//!   - [`feed::messages`]: what clients receive (`snapshot`, `stock`, `purchase`, `paused`, `resync`, and
//!     `offer` to one inbox's connections).
//!   - [`feed::websocket`]: the `/ws` endpoint, one task per client.
//!   - [`feed::socketio`]: the `/socket.io/` endpoint (Socket.IO, as the replaced backend served it, through
//!     `socketioxide`): one task relays the hub to every client as `stock:update`, `stock`, `purchase`
//!     `paused` and `resync` events.
//!
//! # Words
//!
//! The code uses one word per thing; the public API keeps the replaced system's names (`reservation`,
//! `user`, `purchase` in paths, JSON fields and SQL functions).
//!
//! - **hold**: units of one size kept for one buyer until it expires, is bought or is cancelled (the
//!   API's "reservation"); to **reserve** is to ask for one.
//! - **size**: one variant of a drop sold by size, named by its label (the API's "variant"); a hold's
//!   **units** are its "quantity".
//! - **buyer**: a person who holds and buys (the API's "user").
//! - **sale**: a hold turned into a purchase (the API's "purchase").
//! - **feed**: the stream of stock changes and sales clients watch over `/ws` or `/socket.io/`.
//! - **notice**: one `NOTIFY dropstock` payload from the extension's worker.
//! - **waiting list** (a drop's **line**): buyers waiting for units of a sold-out drop, in order; a
//!   buyer's **position** is their place in it (the API's "waitlist").
//! - **offer**: a hold the waiting list made for the buyer whose turn came; bought like any hold.
//! - **draw**: a drop sold by lot: buyers **enter** it, a seeded hash orders the entries, and the order
//!   becomes its line.
//! - **inbox**: a buyer's private part of the feed, where their offers arrive; opened with the buyer's
//!   **inbox key**, named by its hash (the **inbox id**).

mod app;
pub mod config;
pub mod db;
pub mod feed;
pub mod http;

pub use app::{serve, App};
pub use config::Config;
pub use db::pool::StartupError;
