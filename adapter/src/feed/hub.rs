//! The in-process fan-out from the one LISTEN connection to every WebSocket client, and the messages the
//! clients receive.
//!
//! A `tokio::sync::broadcast` channel holds the last `CAPACITY` events once, shared by all clients: memory
//! stays bounded however many clients connect or how slow they are. A client that falls more than
//! `CAPACITY` events behind loses the oldest ones and is told to `resync` (reload its state over REST).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use uuid::Uuid;

use crate::db::models::DropView;

/// About ten seconds of a busy cluster: one notification per changed drop per 100 ms tick.
const CAPACITY: usize = 1024;

/// What the background worker publishes with `NOTIFY dropstock, '<json>'`, once per changed drop per tick.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notice {
    pub drop_id: Uuid,
    pub available_stock: i64,
    pub total_stock: i64,
    pub seq: u64,
    /// New sales since the previous notice of this drop, newest first.
    #[serde(default)]
    pub purchases: Vec<NoticePurchase>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NoticePurchase {
    pub id: Uuid,
    /// The worker writes PostgreSQL's JSON timestamp (`2026-11-27T21:30:00.123456+00:00`); clients get the
    /// same spelling as from the REST API.
    #[serde(serialize_with = "crate::db::models::timestamp")]
    pub created_at: DateTime<Utc>,
    pub user: NoticeBuyer,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct NoticeBuyer {
    pub id: Uuid,
    pub username: String,
}

/// One thing every client is told. The text frames are serialised once here, not once per client.
#[derive(Debug)]
pub enum FeedEvent {
    Drop {
        drop_id: Uuid,
        frames: Vec<Utf8Bytes>,
    },
    Resync,
}

pub const RESYNC_FRAME: &str = r#"{"type":"resync"}"#;

#[derive(Serialize)]
#[serde(tag = "type", rename = "snapshot")]
struct Snapshot<'a> {
    drops: &'a [DropView],
}

#[derive(Serialize)]
#[serde(tag = "type", rename = "stock", rename_all = "camelCase")]
struct StockMessage {
    drop_id: Uuid,
    available_stock: i64,
    total_stock: i64,
    seq: u64,
}

#[derive(Serialize)]
#[serde(tag = "type", rename = "purchase", rename_all = "camelCase")]
struct PurchaseMessage<'a> {
    drop_id: Uuid,
    id: Uuid,
    #[serde(serialize_with = "crate::db::models::timestamp")]
    created_at: DateTime<Utc>,
    user: &'a NoticeBuyer,
    seq: u64,
}

pub fn snapshot_frame(drops: &[DropView]) -> Utf8Bytes {
    to_frame(&Snapshot { drops })
}

fn to_frame(message: &impl Serialize) -> Utf8Bytes {
    // Our own message structs always serialise.
    serde_json::to_string(message).unwrap_or_default().into()
}

impl FeedEvent {
    /// The stock change first (it is what every screen shows), then one `purchase` per new sale, oldest
    /// first, so a client that prepends each to its feed ends with the newest on top.
    pub fn from_notice(notice: &Notice) -> Self {
        let mut frames = Vec::with_capacity(1 + notice.purchases.len());
        frames.push(to_frame(&StockMessage {
            drop_id: notice.drop_id,
            available_stock: notice.available_stock,
            total_stock: notice.total_stock,
            seq: notice.seq,
        }));
        for sale in notice.purchases.iter().rev() {
            frames.push(to_frame(&PurchaseMessage {
                drop_id: notice.drop_id,
                id: sale.id,
                created_at: sale.created_at,
                user: &sale.user,
                seq: notice.seq,
            }));
        }
        FeedEvent::Drop {
            drop_id: notice.drop_id,
            frames,
        }
    }
}

pub struct Feed {
    sender: broadcast::Sender<Arc<FeedEvent>>,
    listening: AtomicBool,
}

impl Feed {
    pub fn new() -> Self {
        Feed {
            sender: broadcast::Sender::new(CAPACITY),
            listening: AtomicBool::new(false),
        }
    }

    /// Clients subscribe before they read their snapshot, so no change between the two is lost (at worst a
    /// change already in the snapshot arrives once more, and `seq` tells).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FeedEvent>> {
        self.sender.subscribe()
    }

    pub fn publish(&self, event: FeedEvent) {
        // An error only means nobody is connected right now.
        let _ = self.sender.send(Arc::new(event));
    }

    pub fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Ordering::Relaxed);
    }

    /// Whether the LISTEN connection is up, for `/healthz`.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_a_notice_into_stock_then_purchases_oldest_first() {
        let notice: Notice = serde_json::from_str(
            r#"{"dropId":"6f1c2a9e-8a47-4a57-9f53-0f6f6b1f2c11","availableStock":12,"totalStock":100,"seq":57,
                "purchases":[
                  {"id":"00000000-0000-0000-0000-000000000002","createdAt":"2026-11-27T21:30:01.5+00:00",
                   "user":{"id":"00000000-0000-0000-0000-0000000000b2","username":"grace"}},
                  {"id":"00000000-0000-0000-0000-000000000001","createdAt":"2026-11-27T21:30:00.000Z",
                   "user":{"id":"00000000-0000-0000-0000-0000000000b1","username":"ada"}}]}"#,
        )
        .unwrap();
        let FeedEvent::Drop { frames, .. } = FeedEvent::from_notice(&notice) else {
            panic!("expected a drop event");
        };
        let messages: Vec<serde_json::Value> = frames
            .iter()
            .map(|frame| serde_json::from_str(frame.as_str()).unwrap())
            .collect();
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[0]["type"], "stock");
        assert_eq!(messages[0]["availableStock"], 12);
        assert_eq!(messages[0]["totalStock"], 100);
        assert_eq!(messages[0]["seq"], 57);
        assert_eq!(messages[1]["type"], "purchase");
        assert_eq!(messages[1]["user"]["username"], "ada");
        assert_eq!(messages[2]["user"]["username"], "grace");
        assert_eq!(messages[2]["createdAt"], "2026-11-27T21:30:01.500Z");
        assert_eq!(
            messages[2]["dropId"],
            "6f1c2a9e-8a47-4a57-9f53-0f6f6b1f2c11"
        );
    }
}
