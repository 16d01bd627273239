//! WebSocket watchers on `/ws?drop=<id>`, or Socket.IO watchers on `/socket.io/` (Engine.IO v4 over
//! WebSocket, spoken by hand: a handful of packet types), and the timing of the stock feed: a few REST
//! clients reserve on the drop at a steady rate and note the instant each new hold's answer returned (the
//! commit is before it); every watcher notes when each `stock` message (or `stock` event) arrived. Afterwards each hold is matched, for every
//! watcher, with the first message whose `availableStock` reflects it (the drop is fresh and only these
//! clients take from it, so the n-th hold is reflected once `totalStock - availableStock >= n`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::http::Connection;
use super::latency::{Buckets, Samples, Summary};

/// Which feed a watcher reads.
#[derive(Debug, Clone, Copy)]
pub enum Protocol {
    /// `/ws?drop=<id>`: the drop's stock comes in the snapshot.
    WebSocket,
    /// `/socket.io/`: no snapshot, and every drop's events; the watchers connect to a drop no hold has
    /// been taken from yet, so its stock is `total_stock` until the holds start.
    SocketIo { total_stock: i64 },
}

/// What one watcher saw: its snapshot's stock, then every stock level it was told with its arrival time.
#[derive(Debug, Default)]
pub struct WatcherLog {
    pub snapshot_available: i64,
    pub changes: Vec<(Instant, i64)>,
    pub resyncs: u64,
    /// Why the feed ended before the watcher was told to stop, if it did.
    pub lost: Option<String>,
}

pub struct Watchers {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<WatcherLog>>,
    pub connect_time: Duration,
}

/// Connects `count` watchers to one drop, at most `at_once` handshakes (each costs the adapter a snapshot
/// query) in flight, and returns once every one has its snapshot.
pub async fn connect(
    address: SocketAddr,
    drop_id: Uuid,
    count: usize,
    at_once: usize,
    protocol: Protocol,
) -> Result<Watchers, String> {
    let started = Instant::now();
    let (stop, stopped) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(at_once));
    let url = match protocol {
        Protocol::WebSocket => format!("ws://{address}/ws?drop={drop_id}"),
        Protocol::SocketIo { .. } => format!("ws://{address}/socket.io/?EIO=4&transport=websocket"),
    };
    let mut pending = Vec::with_capacity(count);
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        let gate = gate.clone();
        let url = url.clone();
        let stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            watcher(url, protocol, drop_id, gate, ready, stopped).await
        }));
        pending.push(is_ready);
    }
    for is_ready in pending {
        match is_ready.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                let _ = stop.send(true);
                return Err(format!("a watcher could not connect: {error}"));
            }
            Err(_) => {
                let _ = stop.send(true);
                return Err("a watcher task ended before connecting".to_owned());
            }
        }
    }
    Ok(Watchers {
        stop,
        tasks,
        connect_time: started.elapsed(),
    })
}

impl Watchers {
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Closes every socket and returns what each watcher saw.
    pub async fn close(self) -> Vec<WatcherLog> {
        let _ = self.stop.send(true);
        let mut logs = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            if let Ok(log) = task.await {
                logs.push(log);
            }
        }
        logs
    }
}

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text message, answering nothing (tungstenite answers WebSocket pings itself).
async fn next_text(socket: &mut Socket, during: &str) -> Result<String, String> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(format!("{during}: {error}")),
            None => return Err(format!("closed {during}")),
        }
    }
}

/// Reads the feed up to where stock changes start to count: the snapshot's stock on `/ws`; on Socket.IO
/// the Engine.IO open packet (`0{…}`), then the namespace connect (`40` out, `40{…}` back).
async fn handshake(socket: &mut Socket, protocol: Protocol) -> Result<i64, String> {
    match protocol {
        Protocol::WebSocket => {
            let text = next_text(socket, "before the snapshot").await?;
            let snapshot: serde_json::Value =
                serde_json::from_str(&text).map_err(|error| format!("snapshot: {error}"))?;
            snapshot["drops"][0]["availableStock"]
                .as_i64()
                .ok_or_else(|| "the snapshot has no availableStock".to_owned())
        }
        Protocol::SocketIo { total_stock } => {
            socketio_handshake(socket).await?;
            Ok(total_stock)
        }
    }
}

/// A Socket.IO client's start on a WebSocket to `/socket.io/?EIO=4&transport=websocket`: the Engine.IO
/// open packet (`0{…}`) in, the default namespace's connect (`40`) out, its answer (`40{…}`) in.
pub async fn socketio_handshake(socket: &mut Socket) -> Result<(), String> {
    let open = next_text(socket, "before the Engine.IO open packet").await?;
    if !open.starts_with("0{") {
        return Err(format!("not an Engine.IO open packet: {open}"));
    }
    socket
        .send(Message::Text("40".into()))
        .await
        .map_err(|error| format!("namespace connect: {error}"))?;
    loop {
        let packet = next_text(socket, "before the namespace connect answer").await?;
        if packet.starts_with("40") {
            return Ok(());
        }
        if packet.starts_with("44") {
            return Err(format!("namespace connect refused: {packet}"));
        }
    }
}

async fn watcher(
    url: String,
    protocol: Protocol,
    drop_id: Uuid,
    gate: Arc<Semaphore>,
    ready: tokio::sync::oneshot::Sender<Result<(), String>>,
    mut stopped: watch::Receiver<bool>,
) -> WatcherLog {
    let mut log = WatcherLog::default();
    let socket = {
        let _permit = gate.acquire().await;
        let connected = async {
            // tungstenite's default buffers are 128 KiB each way per socket: 10,000 watchers would take
            // 2.5 GiB on the client side for messages of a hundred bytes.
            let config = WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(4096);
            let (mut socket, _) =
                tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true)
                    .await
                    .map_err(|error| format!("connect: {error}"))?;
            let available = handshake(&mut socket, protocol).await?;
            Ok::<_, String>((socket, available))
        };
        match tokio::time::timeout(Duration::from_secs(30), connected).await {
            Ok(Ok((socket, available))) => {
                log.snapshot_available = available;
                socket
            }
            Ok(Err(error)) => {
                let _ = ready.send(Err(error));
                return log;
            }
            Err(_) => {
                let _ = ready.send(Err("not connected within 30 s".to_owned()));
                return log;
            }
        }
    };
    let _ = ready.send(Ok(()));
    let mut socket = socket;
    // Socket.IO carries every drop's events; only this drop's count.
    let drop_text = drop_id.to_string();
    loop {
        tokio::select! {
            _ = stopped.changed() => {
                let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
                return log;
            }
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let text = text.as_str();
                    let ours = matches!(protocol, Protocol::WebSocket) || text.contains(&drop_text);
                    if let Some(available) = stock_level(text).filter(|_| ours) {
                        log.changes.push((Instant::now(), available));
                    } else if text.starts_with(r#"{"type":"resync""#) || text.starts_with(r#"42["resync""#) {
                        log.resyncs += 1;
                    } else if text == "2" {
                        // An Engine.IO ping: a client that does not answer is disconnected.
                        if let Err(error) = socket.send(Message::Text("3".into())).await {
                            log.lost = Some(error.to_string());
                            return log;
                        }
                    }
                }
                // tungstenite answers pings itself while reading.
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    log.lost = Some(error.to_string());
                    return log;
                }
                None => {
                    log.lost = Some("closed by the adapter".to_owned());
                    return log;
                }
            }
        }
    }
}

/// `availableStock` of a `stock` message, found without parsing the whole message: with 10,000 watchers
/// on two cores, the watchers' own parsing would otherwise count as feed delay.
fn stock_level(text: &str) -> Option<i64> {
    if !text.contains(r#""type":"stock""#) {
        return None;
    }
    let rest = &text[text.find(r#""availableStock":"#)? + r#""availableStock":"#.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The writers' side: new holds at a steady total `rate`, spread over `writers` keep-alive connections.
pub struct Commits {
    /// When each new hold's answer returned, in order.
    pub instants: Vec<Instant>,
    pub refused: u64,
}

pub async fn steady_holds(
    address: SocketAddr,
    drop_id: Uuid,
    buyers: Arc<Vec<Uuid>>,
    writers: usize,
    rate: f64,
    duration: Duration,
) -> Commits {
    let instants = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let period = Duration::from_secs_f64(writers as f64 / rate);
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let (instants, refused, next, buyers) = (
            instants.clone(),
            refused.clone(),
            next.clone(),
            buyers.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut connection = Connection::new(address);
            // Writers take turns, so the holds arrive evenly rather than in bursts of `writers`.
            let offset = period.mul_f64(writer as f64 / writers as f64);
            let mut every = tokio::time::interval_at(started + offset, period);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while started.elapsed() < duration {
                every.tick().await;
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(buyer) = buyers.get(index) else {
                    break;
                };
                let body = format!(r#"{{"userId":"{buyer}","dropId":"{drop_id}"}}"#);
                match connection.post_json("/api/reservations", body).await {
                    Ok(answer) if answer.status.as_u16() == 201 => {
                        let returned = Instant::now();
                        instants
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(returned);
                    }
                    _ => {
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let mut instants = std::mem::take(&mut *instants.lock().unwrap_or_else(|e| e.into_inner()));
    // Two writers' answers can return out of commit order; the earliest return is matched with the first
    // unit taken, which never makes a delay look shorter than the slower of the two.
    instants.sort_unstable();
    Commits {
        instants,
        refused: refused.load(std::sync::atomic::Ordering::Relaxed),
    }
}

/// Delay from each hold's commit to each watcher's receipt of the stock level that reflects it.
#[derive(Debug, Default)]
pub struct FeedReport {
    pub watchers: usize,
    pub delays: Summary,
    /// Holds a watcher was never told about (it lost its feed, or the run ended first).
    pub missed: u64,
    /// Matches whose message arrived before the hold's answer did (counted as zero delay).
    pub before_answer: u64,
    pub resyncs: u64,
    pub lost_feeds: usize,
    /// Per hold, the delay to the first watcher told: the worker's tick, NOTIFY and the adapter's relay,
    /// without the fan-out.
    pub first_watcher: Summary,
    /// Per stock level, from the first watcher's receipt to the last one's: the fan-out itself.
    pub fan_out: Summary,
}

pub fn feed_delays(total_stock: i64, commits: &[Instant], logs: &[WatcherLog]) -> FeedReport {
    let mut buckets = Buckets::new();
    let mut report = FeedReport {
        watchers: logs.len(),
        ..FeedReport::default()
    };
    let mut first_told: Vec<Option<Instant>> = vec![None; commits.len()];
    let mut levels: HashMap<i64, (Instant, Instant)> = HashMap::new();
    for log in logs {
        report.resyncs += log.resyncs;
        report.lost_feeds += usize::from(log.lost.is_some());
        let mut reflected = (total_stock - log.snapshot_available).max(0) as usize;
        for &(arrived, available) in &log.changes {
            let level = levels.entry(available).or_insert((arrived, arrived));
            level.0 = level.0.min(arrived);
            level.1 = level.1.max(arrived);
            let taken = ((total_stock - available).max(0) as usize).min(commits.len());
            for (index, &committed) in commits.iter().enumerate().take(taken).skip(reflected) {
                if arrived < committed {
                    report.before_answer += 1;
                }
                buckets.record(arrived.saturating_duration_since(committed));
                let first = &mut first_told[index];
                *first = Some(first.map_or(arrived, |seen| seen.min(arrived)));
            }
            reflected = reflected.max(taken);
        }
        report.missed += (commits.len() - reflected.min(commits.len())) as u64;
    }
    report.delays = buckets.summary();
    let mut first_watcher = Samples::default();
    for (committed, first) in commits.iter().zip(&first_told) {
        if let Some(first) = first {
            first_watcher.record(first.saturating_duration_since(*committed));
        }
    }
    report.first_watcher = first_watcher.summary();
    let mut fan_out = Samples::default();
    for (first, last) in levels.values() {
        fan_out.record(*last - *first);
    }
    report.fan_out = fan_out.summary();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stock_level_of_socketio_stock_events() {
        assert_eq!(
            stock_level(
                r#"42["stock",{"type":"stock","dropId":"x","availableStock":12,"totalStock":100,"seq":4}]"#
            ),
            Some(12)
        );
        assert_eq!(stock_level(r#"42["stock:update"]"#), None);
    }

    #[test]
    fn reads_the_stock_level_of_stock_messages_only() {
        assert_eq!(
            stock_level(
                r#"{"type":"stock","dropId":"x","availableStock":97,"totalStock":100,"seq":4}"#
            ),
            Some(97)
        );
        assert_eq!(
            stock_level(r#"{"type":"purchase","availableStock":1}"#),
            None
        );
    }

    #[test]
    fn each_hold_is_matched_with_the_first_level_that_reflects_it() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let commits = [at(0), at(10), at(20)];
        let log = WatcherLog {
            snapshot_available: 100,
            changes: vec![(at(50), 98), (at(150), 97)],
            ..WatcherLog::default()
        };
        let report = feed_delays(100, &commits, &[log]);
        // Delays 50, 40 (the first message) and 130 (the second).
        assert_eq!(report.delays.count, 3);
        assert_eq!(report.delays.max, Duration::from_millis(130));
        assert_eq!(report.missed, 0);
    }
}
