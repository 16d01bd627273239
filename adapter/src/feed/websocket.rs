//! `GET /ws`: the live feed. A snapshot on connect, then `stock`, `purchase` and `resync` messages from
//! the fan-out, one task per client; and, to a client that opened a buyer's inbox (`?inbox=<key>` or
//! `?token=<jwt>` on connect, or a `subscribe` message after), that buyer's `offer`s, to it alone.
//!
//! A client never slows anyone else: it reads the shared broadcast at its own pace; if it falls too far
//! behind it gets `resync`, and if its socket stops draining (a write stalls for `WRITE_TIMEOUT`, or the
//! unsent bytes pass `MAX_UNSENT`) it is disconnected.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use uuid::Uuid;

use crate::app::App;
use crate::db::queries;
use crate::feed::hub::FeedEvent;
use crate::feed::inbox::{self, Credential};
use crate::feed::messages::{self, PAUSED_FRAME, RESYNC_FRAME, SUBSCRIBED_FRAME};
use crate::http::connections::Slot;
use crate::http::errors::ApiError;
use crate::http::input::{drop_filter, query_value};
use crate::http::respond::{self, Body};

/// How often the server pings; browsers answer pings by themselves.
const PING_EVERY: Duration = Duration::from_secs(20);
/// A client heard nothing from (not even a pong) for this long is gone.
const SILENCE_LIMIT: Duration = Duration::from_secs(60);
/// A write that cannot reach the client's socket for this long means the client is not reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes waiting for a stalled socket, per client, before it is dropped: room for a large snapshot.
const MAX_UNSENT: usize = 2 * 1024 * 1024;
/// The feed is one-way; what a client may send is pongs and small control messages.
const MAX_INCOMING: usize = 64 * 1024;

type Socket = WebSocketStream<TokioIo<Upgraded>>;

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|part| part.trim().eq_ignore_ascii_case(token))
}

/// Checks the handshake, reads the snapshot while still able to answer with a plain HTTP error (404 for an
/// unknown drop, 503 when the database is down), then switches protocols.
pub async fn upgrade(
    mut request: Request<Incoming>,
    app: Arc<App>,
) -> Result<Response<Body>, ApiError> {
    let headers = request.headers();
    if !has_token(headers, header::CONNECTION, "upgrade")
        || !has_token(headers, header::UPGRADE, "websocket")
    {
        return Err(ApiError::bad_request(
            "/ws is a WebSocket endpoint: send Connection: Upgrade and Upgrade: websocket",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(ApiError::bad_request("Sec-WebSocket-Version must be 13"));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(ApiError::bad_request("Sec-WebSocket-Key is required"));
    };
    if !app.cors.allows_socket(headers) {
        return Err(ApiError::forbidden(
            "this page's origin may not open the feed: it is not in DROPSTOCK_CORS_ORIGINS",
        ));
    }
    let accept = derive_accept_key(key.as_bytes());
    // The connection's place under the cap, kept for as long as the socket lives.
    let slot = request.extensions().get::<Slot>().cloned();
    let filter = drop_filter(request.uri().query())?;
    // An inbox opened on connect is open before the snapshot is read: no offer made after the client
    // connected can pass it by.
    let inbox = match credential_on_connect(&request, &app) {
        Some(credential) => Some(inbox::open(&app, &credential).await?),
        None => None,
    };

    // Subscribe first: a change that lands while the snapshot is read is then delivered, not lost.
    let events = app.hub.subscribe();
    let drops = {
        let client = app.pool.connection().await?;
        match filter {
            Some(drop_id) => vec![queries::drop_status(&client, drop_id).await?],
            None => queries::active_drops(&client).await?,
        }
    };
    let snapshot = messages::snapshot_frame(&drops, app.hub.is_listening());

    let on_upgrade = hyper::upgrade::on(&mut request);
    let client_app = app.clone();
    app.sockets.spawn(async move {
        let _slot = slot;
        match on_upgrade.await {
            Ok(upgraded) => {
                // Small socket buffers: the feed's messages are a few hundred bytes and a watcher sends
                // next to nothing, and the 128 KiB defaults cost 10,000 watchers over a gigabyte of
                // memory. A buffer grows when a bigger frame comes; these are what every idle watcher
                // keeps (4 KiB ones: 104 MiB for 10,000 watchers, measured).
                let config = WebSocketConfig::default()
                    .read_buffer_size(1024)
                    .write_buffer_size(1024)
                    .max_write_buffer_size(MAX_UNSENT)
                    .max_message_size(Some(MAX_INCOMING))
                    .max_frame_size(Some(MAX_INCOMING));
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                serve(socket, snapshot, events, filter, inbox, &client_app).await;
            }
            Err(error) => tracing::debug!(%error, "WebSocket upgrade did not complete"),
        }
    });

    let mut response = respond::empty(StatusCode::SWITCHING_PROTOCOLS);
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).map_err(|error| ApiError::internal(&error))?,
    );
    Ok(response)
}

/// The inbox a client asks for in its handshake: `?inbox=<key>`, or in JWT mode `?token=<jwt>` or an
/// `Authorization: Bearer` header (clients other than browsers can send one).
fn credential_on_connect(request: &Request<Incoming>, app: &App) -> Option<Credential> {
    let query = request.uri().query();
    if let Some(key) = query_value(query, "inbox") {
        return Some(Credential::Key(key));
    }
    if let Some(token) = query_value(query, "token") {
        return Some(Credential::Token(token));
    }
    if !app.access.jwt_mode() {
        return None;
    }
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| Credential::Token(token.trim().to_owned()))
}

/// What a client may send: `{"type":"subscribe","inboxKey":"…"}` or `{"type":"subscribe","token":"…"}`
/// opens that inbox on the connection (instead of any opened before). Keeps the key out of URLs, which
/// proxies log.
#[derive(serde::Deserialize)]
#[serde(tag = "type", rename = "subscribe", rename_all = "camelCase")]
struct Subscribe {
    inbox_key: Option<String>,
    token: Option<String>,
}

/// Opens the inbox a `subscribe` message names; the frame that answers it.
async fn subscribe(text: &str, inbox: &mut Option<Arc<str>>, app: &App) -> Option<Message> {
    let request: Subscribe = serde_json::from_str(text).ok()?;
    let credential = match (request.inbox_key, request.token) {
        (Some(key), None) => Credential::Key(key),
        (None, Some(token)) => Credential::Token(token),
        _ => {
            return Some(Message::Text(messages::error_frame(
                "subscribe with inboxKey or token, one of them",
            )))
        }
    };
    let frame = match inbox::open(app, &credential).await {
        Ok(opened) => {
            *inbox = Some(opened);
            Utf8Bytes::from_static(SUBSCRIBED_FRAME)
        }
        Err(error) => messages::error_frame(&error.message),
    };
    Some(Message::Text(frame))
}

/// Counts a connected client for as long as it lives, however its task ends.
struct Connected<'a>(&'a App);

impl<'a> Connected<'a> {
    fn new(app: &'a App) -> Self {
        app.metrics.ws_clients.inc();
        Connected(app)
    }
}

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.metrics.ws_clients.dec();
    }
}

#[derive(Debug)]
enum SendFailed {
    Stalled,
    Closed,
}

async fn send(
    socket: &mut Socket,
    messages: impl IntoIterator<Item = Message>,
) -> Result<(), SendFailed> {
    let write = async {
        for message in messages {
            socket.feed(message).await?;
        }
        socket.flush().await
    };
    match timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(())) => Ok(()),
        // Unsent bytes past MAX_UNSENT is a stall too.
        Ok(Err(tokio_tungstenite::tungstenite::Error::WriteBufferFull(_))) | Err(_) => {
            Err(SendFailed::Stalled)
        }
        Ok(Err(_)) => Err(SendFailed::Closed),
    }
}

/// The `resync` frame, counted.
fn resync(resyncs: &Counter) -> Message {
    resyncs.inc();
    Message::Text(Utf8Bytes::from_static(RESYNC_FRAME))
}

/// Events a client reads at once: the one that woke it and those already queued behind it.
const BATCH: usize = 64;

/// The event that woke a client and the events queued behind it (up to `BATCH`); None when the client
/// fell so far behind that some were lost.
fn waiting_behind(
    first: Arc<FeedEvent>,
    events: &mut broadcast::Receiver<Arc<FeedEvent>>,
) -> Option<Vec<Arc<FeedEvent>>> {
    let mut batch = vec![first];
    while batch.len() < BATCH {
        match events.try_recv() {
            Ok(event) => batch.push(event),
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            Err(TryRecvError::Lagged(_)) => return None,
        }
    }
    Some(batch)
}

/// What a batch of events sends this client, in order. A client that has fallen behind (a fan-out to
/// thousands of sockets takes longer than the gap between two notices) gets only the latest `stock`
/// frame of each drop, with every sale: it sends fewer frames and catches up, where sending each stale
/// level would keep it behind. A stock frame that names sizes is always sent (`replaceable`).
fn frames_for(
    batch: &[Arc<FeedEvent>],
    filter: Option<Uuid>,
    inbox: Option<&str>,
    resyncs: &Counter,
) -> Vec<Message> {
    let mut outgoing = Vec::new();
    for (at, event) in batch.iter().enumerate() {
        match &**event {
            FeedEvent::Drop {
                drop_id,
                frames,
                replaceable,
            } if filter.is_none_or(|wanted| wanted == *drop_id) => {
                let superseded = *replaceable
                    && batch[at + 1..].iter().any(|later| {
                        matches!(&**later, FeedEvent::Drop { drop_id: same, .. } if same == drop_id)
                    });
                // The stock frame comes first (`messages::notice_frames`); the sales after it.
                let skip = usize::from(superseded);
                outgoing.extend(frames.iter().skip(skip).cloned().map(Message::Text));
            }
            FeedEvent::Drop { .. } => {}
            FeedEvent::Offer { inbox: to, frame } if inbox == Some(&**to) => {
                outgoing.push(Message::Text(frame.clone()));
            }
            FeedEvent::Offer { .. } => {}
            FeedEvent::Resync => outgoing.push(resync(resyncs)),
            FeedEvent::Paused => {
                outgoing.push(Message::Text(Utf8Bytes::from_static(PAUSED_FRAME)));
            }
        }
    }
    outgoing
}

async fn serve(
    mut socket: Socket,
    snapshot: Utf8Bytes,
    mut events: broadcast::Receiver<Arc<FeedEvent>>,
    filter: Option<Uuid>,
    mut inbox: Option<Arc<str>>,
    app: &App,
) {
    let _connected = Connected::new(app);
    if send(&mut socket, [Message::Text(snapshot)]).await.is_err() {
        return;
    }
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    let mut last_heard = Instant::now();
    loop {
        let outgoing = tokio::select! {
            _ = app.shutdown.cancelled() => {
                let goodbye = CloseFrame { code: CloseCode::Away, reason: "server shutting down".into() };
                let _ = timeout(CLOSE_TIMEOUT, socket.close(Some(goodbye))).await;
                return;
            }
            incoming = socket.next() => match incoming {
                // tungstenite answers pings and close frames itself; the one command is `subscribe`.
                Some(Ok(message)) => {
                    last_heard = Instant::now();
                    let reply = match message {
                        Message::Text(text) => subscribe(text.as_str(), &mut inbox, app).await,
                        _ => None,
                    };
                    match reply {
                        Some(reply) => vec![reply],
                        None => continue,
                    }
                }
                Some(Err(_)) | None => return,
            },
            event = events.recv() => match event {
                Ok(event) => match waiting_behind(event, &mut events) {
                    Some(batch) => {
                        let outgoing = frames_for(&batch, filter, inbox.as_deref(), &app.metrics.resyncs);
                        if outgoing.is_empty() {
                            continue;
                        }
                        outgoing
                    }
                    None => {
                        tracing::debug!("WebSocket client fell behind; sending resync");
                        vec![resync(&app.metrics.resyncs)]
                    }
                },
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "WebSocket client fell behind; sending resync");
                    vec![resync(&app.metrics.resyncs)]
                }
                Err(RecvError::Closed) => return,
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > SILENCE_LIMIT {
                    tracing::debug!("WebSocket client silent too long; dropping it");
                    return;
                }
                vec![Message::Ping(Bytes::new())]
            }
        };
        match send(&mut socket, outgoing).await {
            Ok(()) => {}
            Err(SendFailed::Stalled) => {
                app.metrics.slow_clients_dropped.inc();
                tracing::debug!("WebSocket client not draining its socket; dropping it");
                return;
            }
            Err(SendFailed::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(drop_id: Uuid, stock: &str, sales: &[&str], replaceable: bool) -> Arc<FeedEvent> {
        let frames = std::iter::once(stock)
            .chain(sales.iter().copied())
            .map(Utf8Bytes::from)
            .collect();
        Arc::new(FeedEvent::Drop {
            drop_id,
            frames,
            replaceable,
        })
    }

    fn texts(messages: Vec<Message>) -> Vec<String> {
        messages
            .into_iter()
            .map(|message| message.into_text().expect("a text frame").to_string())
            .collect()
    }

    #[test]
    fn a_client_behind_gets_the_latest_stock_of_each_drop_and_every_sale() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let batch = [
            notice(a, "a1", &["a1 sale"], true),
            notice(b, "b1", &[], true),
            notice(a, "a2", &[], true),
            notice(a, "a3", &["a3 sale x", "a3 sale y"], true),
        ];
        let resyncs = Counter::default();
        assert_eq!(
            texts(frames_for(&batch, None, None, &resyncs)),
            ["a1 sale", "b1", "a3", "a3 sale x", "a3 sale y"]
        );
        // A client watching one drop sees only its own.
        assert_eq!(texts(frames_for(&batch, Some(b), None, &resyncs)), ["b1"]);
    }

    #[test]
    fn a_stock_frame_that_names_sizes_is_never_skipped() {
        let a = Uuid::new_v4();
        let batch = [
            notice(a, "M sold out", &[], false),
            notice(a, "L sold out", &[], false),
            notice(a, "total only", &[], true),
        ];
        assert_eq!(
            texts(frames_for(&batch, None, None, &Counter::default())),
            ["M sold out", "L sold out", "total only"]
        );
    }

    #[test]
    fn offers_and_resyncs_keep_their_place() {
        let a = Uuid::new_v4();
        let batch = [
            notice(a, "a1", &[], true),
            Arc::new(FeedEvent::Offer {
                inbox: Arc::from("mine"),
                frame: Utf8Bytes::from("offer"),
            }),
            Arc::new(FeedEvent::Offer {
                inbox: Arc::from("theirs"),
                frame: Utf8Bytes::from("not mine"),
            }),
            Arc::new(FeedEvent::Resync),
            notice(a, "a2", &[], true),
        ];
        let resyncs = Counter::default();
        assert_eq!(
            texts(frames_for(&batch, None, Some("mine"), &resyncs)),
            ["offer", RESYNC_FRAME, "a2"]
        );
        assert_eq!(resyncs.get(), 1);
    }
}
