//! `/socket.io/`: the live feed for Socket.IO clients, the protocol the replaced Node/Express backend
//! spoke, so its web client (`socket.io-client` 4.x, `io(BASE)`) gets live updates unchanged.
//!
//! The protocol (Engine.IO v4: long-polling, the upgrade to WebSocket, pings, packet framing) is
//! `socketioxide`'s, a tower/hyper service this module calls from the router; what is ours is what goes
//! out. One task, [`run`], reads the same fan-out as `/ws` and broadcasts each event to every Socket.IO
//! client in the default namespace `/`, serialised once for all of them:
//!
//! - `stock:update`, no payload: something about a drop changed (stock or buyers); the replaced client
//!   reloads `GET /api/drops` on it.
//! - `stock` and `purchase`: the `/ws` messages of the same names, the very JSON `/ws` sends (one
//!   serialisation in `messages` serves both), so a newer client can update without reloading.
//! - `paused`, no payload: the feed has stopped (the LISTEN connection is lost); what a client shows may
//!   go stale until the `resync` that follows reconnection.
//! - `resync`, no payload: changes may have been missed (the LISTEN connection was re-established);
//!   `stock:update` follows it, so the replaced client reloads too.
//!
//! There is no snapshot on connect, as there was none in the replaced backend: a client reads
//! `GET /api/drops` once connected.
//!
//! A buyer's offers (`offer`, the `/ws` message) go to the sockets that opened the buyer's inbox and no
//! other: with `auth: {inboxKey}` (or `{token}` in JWT mode) when connecting, refused with a connect
//! error when the token is not valid, or later with a `subscribe` event carrying the same object (its
//! acknowledgement says `{ok}` or `{ok: false, message}`). Each inbox is a room, `inbox:<id>`, and the
//! relay emits an offer to that room only.
//!
//! Like the rest of the adapter:
//! - Origins: with an allow-list, a page may connect only from its own origin or a listed one, as on
//!   `/ws` (browsers do not apply CORS to WebSockets, so the adapter checks `Origin` itself).
//! - Limits: every poll and every upgrade comes through the adapter's own accept loop and router, under
//!   the per-address rate limit and the request deadline (plus one ping interval, which a long poll may
//!   wait by design).
//! - The connection cap: Engine.IO keeps the request a session began with (its extensions included) for
//!   as long as the session lives, so each client holds the place under the cap of the connection it
//!   connected on until it disconnects, whether it goes on polling or upgrades to a WebSocket.
//! - Shutdown: every client is disconnected and the drain waits for their transports to close.

use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::Service as _;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::value::RawValue;
use socketioxide::extract::{AckSender, Data, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::service::SocketIoService;
use socketioxide::SocketIo;
use tokio::sync::broadcast::error::RecvError;

use crate::app::App;
use crate::feed::hub::FeedEvent;
use crate::feed::inbox::{self, Credential};
use crate::http::cors::Cors;
use crate::http::errors::ApiError;
use crate::http::input::BODY_LIMIT;
use crate::http::respond::Body;

/// The path the replaced backend served and `socket.io-client` uses by default.
pub const PATH: &str = "/socket.io";

/// The event the replaced client listens to: "reload the drops". It carries no payload.
pub const STOCK_UPDATE: &str = "stock:update";

/// How often Engine.IO pings (Socket.IO's default): a long poll with nothing to send is answered with the
/// ping at the latest, so it is what a poll may wait on top of the request deadline.
pub const PING_INTERVAL: Duration = Duration::from_secs(25);

/// Packets waiting for one client before further broadcasts skip it: room for a burst as large as the
/// hub's own buffer. A polling client takes all that waits with each poll.
const MAX_QUEUED_PACKETS: usize = 1024;

/// No payload: an empty argument list (`42["stock:update"]`), not `null`.
const NO_PAYLOAD: &[u8; 0] = &[];

/// The Socket.IO endpoint: the service that speaks the protocol, and the handle to broadcast through.
pub struct SocketIoFeed {
    service: SocketIoService<engineioxide::service::NotFoundService>,
    io: SocketIo,
}

impl SocketIoFeed {
    /// Builds the endpoint; `clients` counts the connected clients for `/metrics`; `app` is the app this
    /// feed is part of (a weak reference: the app owns the feed), for opening inboxes.
    pub fn new(clients: &Gauge, app: Weak<App>) -> Self {
        let (service, io) = SocketIo::builder()
            .req_path(PATH)
            .ping_interval(PING_INTERVAL)
            .max_buffer_size(MAX_QUEUED_PACKETS)
            // Clients send nothing but pings and their namespace connect: a request body's limit is plenty.
            .max_payload(BODY_LIMIT as u64)
            .ws_max_message_size(BODY_LIMIT)
            .ws_max_frame_size(BODY_LIMIT)
            .build_svc();
        let clients = clients.clone();
        let subscribing = app.clone();
        let connected = async move |socket: SocketRef| {
            clients.inc();
            let clients = clients.clone();
            socket.on_disconnect(async move || {
                clients.dec();
            });
            let app = subscribing.clone();
            socket.on(
                "subscribe",
                async move |socket: SocketRef,
                            Data(auth): Data<serde_json::Value>,
                            ack: AckSender| {
                    let answer = match open_inbox(&app, &auth).await {
                        Ok(Some(room)) => {
                            // One inbox per socket: the one opened last.
                            socket.leave_all();
                            socket.join(room);
                            serde_json::json!({ "ok": true })
                        }
                        Ok(None) => serde_json::json!({ "ok": false,
                            "message": "subscribe with {inboxKey} or {token}" }),
                        Err(error) => serde_json::json!({ "ok": false, "message": error.message }),
                    };
                    let _ = ack.send(&answer);
                },
            );
        };
        // Runs before the client is told it is connected: once it is, its inbox is open.
        let open_on_connect = async move |socket: SocketRef,
                                          TryData(auth): TryData<serde_json::Value>|
                    -> Result<(), String> {
            let Ok(auth) = auth else { return Ok(()) };
            match open_inbox(&app, &auth).await {
                Ok(Some(room)) => {
                    socket.join(room);
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(error) => Err(error.message),
            }
        };
        io.ns("/", connected.with(open_on_connect));
        SocketIoFeed { service, io }
    }

    /// Answers one request under `/socket.io/`: a poll, a post of packets, or the WebSocket upgrade.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        cors: &Cors,
    ) -> Result<Response<Body>, ApiError> {
        // Polls are CORS requests, but a WebSocket is not, so the feed checks the page's origin itself,
        // by the rule `/ws` follows.
        if !cors.allows_socket(request.headers()) {
            return Err(ApiError::forbidden(
                "this page's origin may not open the feed: it is not in DROPSTOCK_CORS_ORIGINS",
            ));
        }
        let response = match self.service.call(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        // Engine.IO answers are complete when returned (a long poll waits before answering, not while
        // sending), so the body is collected into the adapter's own body type without waiting.
        let (parts, body) = response.into_parts();
        let bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        };
        Ok(Response::from_parts(parts, Full::new(bytes)))
    }

    /// Sends one event to every connected client. A client that is gone, or whose queue is full, misses
    /// it; `stock:update` carries no state, so the next one sets it right.
    async fn emit(&self, event: &str, payload: &(impl serde::Serialize + ?Sized)) {
        if let Err(error) = self.io.emit(event, payload).await {
            tracing::debug!(%error, event, "a Socket.IO broadcast did not reach every client");
        }
    }

    async fn emit_frame(&self, event: &str, frame: &str) {
        // The frame is JSON `messages` wrote; borrowing it as raw JSON sends it as it is.
        match serde_json::from_str::<&RawValue>(frame) {
            Ok(raw) => self.emit(event, raw).await,
            Err(error) => tracing::warn!(%error, event, "feed frame is not JSON"),
        }
    }

    async fn resync(&self, app: &App) {
        app.metrics.resyncs.inc();
        self.emit("resync", NO_PAYLOAD).await;
        self.emit(STOCK_UPDATE, NO_PAYLOAD).await;
    }
}

/// The room of the inbox `auth` opens (`{inboxKey}` or `{token}`), if it names one.
async fn open_inbox(app: &Weak<App>, auth: &serde_json::Value) -> Result<Option<String>, ApiError> {
    let text = |name: &str| {
        auth.get(name)
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    let credential = match (text("inboxKey"), text("token")) {
        (Some(key), _) => Credential::Key(key),
        (None, Some(token)) => Credential::Token(token),
        (None, None) => return Ok(None),
    };
    let app = app
        .upgrade()
        .ok_or_else(|| ApiError::unavailable("the adapter is shutting down"))?;
    let id = inbox::open(&app, &credential).await?;
    Ok(Some(room_of(&id)))
}

fn room_of(inbox: &str) -> String {
    format!("inbox:{inbox}")
}

/// Relays the fan-out to Socket.IO clients until shutdown, then disconnects them all and waits for their
/// transports to close (the caller runs this among `app.sockets`, which the shutdown drain waits for).
pub async fn run(app: Arc<App>) {
    let feed = &app.socketio;
    let mut events = app.hub.subscribe();
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => break,
            event = events.recv() => match event {
                Ok(event) => match &*event {
                    FeedEvent::Drop { frames, .. } => {
                        feed.emit(STOCK_UPDATE, NO_PAYLOAD).await;
                        // `messages::notice_frames` puts the stock change first, then the sales.
                        if let Some((stock, sales)) = frames.split_first() {
                            feed.emit_frame("stock", stock.as_str()).await;
                            for sale in sales {
                                feed.emit_frame("purchase", sale.as_str()).await;
                            }
                        }
                    }
                    FeedEvent::Offer { inbox, frame } => {
                        match serde_json::from_str::<&RawValue>(frame.as_str()) {
                            Ok(raw) => {
                                if let Err(error) = feed.io.to(room_of(inbox)).emit("offer", raw).await {
                                    tracing::debug!(%error, "an offer did not reach its inbox's sockets");
                                }
                            }
                            Err(error) => tracing::warn!(%error, "offer frame is not JSON"),
                        }
                    }
                    FeedEvent::Resync => feed.resync(&app).await,
                    FeedEvent::Paused => feed.emit("paused", NO_PAYLOAD).await,
                },
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "the Socket.IO relay fell behind the feed; clients told to resync");
                    feed.resync(&app).await;
                }
                Err(RecvError::Closed) => break,
            },
        }
    }
    feed.io.close().await;
}
