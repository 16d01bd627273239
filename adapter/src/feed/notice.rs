//! The worker's wire format: what `dropstock.publish_changes()` sends with `NOTIFY dropstock, '<json>'`,
//! once per changed drop per tick. It is the extension's format, not the clients': `messages` turns it
//! into what clients receive.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One notice: a drop's stock now, and the sales not announced before.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notice {
    pub drop_id: Uuid,
    pub available_stock: i64,
    pub total_stock: i64,
    /// Rises by one per notice of a drop, so a client can tell a repeat or a gap.
    pub seq: u64,
    /// New sales since the previous notice of this drop, newest first.
    #[serde(default, rename = "purchases")]
    pub sales: Vec<NoticeSale>,
    /// A sized drop's sizes whose available units changed since its previous notice (all of them in
    /// its first), by variant number: labels would not fit the payload limit, numbers do.
    #[serde(default)]
    pub variants: Vec<NoticeVariant>,
    /// Buyers waiting on the drop (its waiting list's length); absent from an older extension's notices.
    #[serde(default)]
    pub waiting: Option<i64>,
    /// Rises each time the line changed; a buyer in it asks for their position only then.
    #[serde(default, rename = "lineSeq")]
    pub line_seq: Option<i64>,
}

/// One offer, as `NOTIFY dropstock_inbox, '<json>'` carries it: for whoever opened the inbox it names, and
/// nobody else. It names no buyer and no hold (any role may LISTEN); the inbox id is a hash of the buyer's
/// secret inbox key, so hearing it does not let anyone open the inbox.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InboxNotice {
    /// `encode(sha256(inbox key), 'hex')`.
    pub inbox: String,
    pub drop_id: Uuid,
    #[serde(serialize_with = "crate::db::models::timestamp")]
    pub expires_at: DateTime<Utc>,
    /// The size's label; null on a drop without sizes.
    pub variant: Option<String>,
    pub quantity: i32,
}

/// One size in a notice, `[variant, availableStock]`; variant i is the i-th size the drop lists.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
pub struct NoticeVariant(pub i16, pub i64);

/// One sale in a notice.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NoticeSale {
    pub id: Uuid,
    /// The worker writes PostgreSQL's JSON timestamp (`2026-11-27T21:30:00.123456+00:00`); clients get the
    /// same spelling as from the REST API.
    #[serde(serialize_with = "crate::db::models::timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(rename = "user")]
    pub buyer: NoticeBuyer,
}

/// The buyer of a sale, as the feed shows them: by name only (the worker leaves ids out, and an id it
/// sent anyway would be ignored here).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct NoticeBuyer {
    pub username: String,
}
