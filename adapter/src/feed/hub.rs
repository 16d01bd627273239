//! The in-process fan-out from the one LISTEN connection to every WebSocket client (and to the Socket.IO
//! relay, which passes each event on to every Socket.IO client).
//!
//! A `tokio::sync::broadcast` channel holds the last `CAPACITY` events once, shared by all clients: memory
//! stays bounded however many clients connect or how slow they are. A client that falls more than
//! `CAPACITY` events behind loses the oldest ones and is told to `resync` (reload its state over REST).
//!
//! Offers travel the same channel, tagged with their inbox: every client task sees each one and passes it
//! on only if it opened that inbox. One ordered stream keeps an offer in its place among the stock
//! changes, and an offer is rare next to them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use uuid::Uuid;

use crate::feed::messages;
use crate::feed::notice::Notice;

/// About ten seconds of a busy cluster: one notice per changed drop per 100 ms tick.
const CAPACITY: usize = 1024;

/// One event of the feed, its frames already serialised: for every client, or (an offer) for one inbox's.
#[derive(Debug)]
pub enum FeedEvent {
    Drop {
        /// Lets a client that watches one drop skip the others without reading their frames.
        drop_id: Uuid,
        /// The `stock` frame first, then one `purchase` frame per new sale.
        frames: Vec<Utf8Bytes>,
        /// Whether a later `stock` frame of the drop says all that this one says: true unless it names
        /// sizes, since a frame names only the sizes that changed, and every such change must reach the
        /// client. A client that has fallen behind skips replaceable stock frames (never sales).
        replaceable: bool,
    },
    /// An offer for the clients that opened `inbox`, and for no one else: every client task sees the
    /// event and drops it unless the inbox is its own.
    Offer {
        /// The inbox id (hex sha256 of the buyer's inbox key).
        inbox: Arc<str>,
        frame: Utf8Bytes,
    },
    Resync,
    /// The LISTEN connection is lost: clients are told their view may go stale.
    Paused,
}

impl FeedEvent {
    /// `labels`: the drop's size labels, element i - 1 for variant i (empty for a drop without sizes).
    pub fn from_notice(notice: &Notice, labels: &[String]) -> Self {
        FeedEvent::Drop {
            drop_id: notice.drop_id,
            frames: messages::notice_frames(notice, labels),
            replaceable: notice.variants.is_empty(),
        }
    }
}

pub struct Hub {
    sender: broadcast::Sender<Arc<FeedEvent>>,
    /// Whether the LISTEN connection is up, for `/healthz`.
    listening: AtomicBool,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        Hub {
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
