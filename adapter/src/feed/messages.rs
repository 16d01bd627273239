//! What WebSocket clients receive, as text frames: `snapshot` on connect (saying whether the feed is
//! live), then `stock` and `purchase` per notice, `paused` when the feed stops being live, and `resync`
//! when changes may have been missed (which also means it is live again). Frames are serialised once here,
//! not once per client; the Socket.IO feed sends the same `stock` and `purchase` frames as its events'
//! payloads. Buyers appear by username only: an id is the buyer's to keep (without buyer tokens, whoever
//! knows it can act as them).

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use uuid::Uuid;

use crate::db::models::DropView;
use crate::feed::notice::{InboxNotice, Notice};

/// Tells a client to reload its state over REST: the LISTEN connection was lost, or it fell behind.
pub const RESYNC_FRAME: &str = r#"{"type":"resync"}"#;
/// Tells a client the feed has stopped (the LISTEN connection is lost): what it shows may go stale until
/// the `resync` that follows reconnection.
pub const PAUSED_FRAME: &str = r#"{"type":"paused"}"#;
/// Tells a client its inbox is open on this connection: offers for it come here from now on.
pub const SUBSCRIBED_FRAME: &str = r#"{"type":"subscribed"}"#;

/// Tells a client why what it sent was not done (an inbox key or token that does not open an inbox).
pub fn error_frame(message: &str) -> Utf8Bytes {
    #[derive(Serialize)]
    #[serde(tag = "type", rename = "error")]
    struct Refusal<'a> {
        message: &'a str,
    }
    to_frame(&Refusal { message })
}

/// The `offer` message for the buyer whose inbox the notice names.
pub fn offer_frame(offer: &InboxNotice) -> Utf8Bytes {
    to_frame(&OfferMessage {
        drop_id: offer.drop_id,
        expires_at: offer.expires_at,
        variant: offer.variant.as_deref(),
        quantity: offer.quantity,
    })
}

#[derive(Serialize)]
#[serde(tag = "type", rename = "snapshot")]
struct Snapshot<'a> {
    drops: &'a [DropView],
    /// False while the adapter is not listening: changes will not arrive until a `resync`.
    live: bool,
}

#[derive(Serialize)]
#[serde(tag = "type", rename = "stock", rename_all = "camelCase")]
struct StockMessage<'a> {
    drop_id: Uuid,
    available_stock: i64,
    total_stock: i64,
    seq: u64,
    /// A sized drop's sizes that changed; left out for a drop without sizes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    variants: Vec<StockVariant<'a>>,
    /// Buyers waiting on the drop, as the notice said.
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting: Option<i64>,
    /// Rises each time the drop's line changed, as the notice said.
    #[serde(skip_serializing_if = "Option::is_none")]
    line_seq: Option<i64>,
}

/// To one buyer only: the waiting list made them a hold. The hold itself (its id, to buy it) is read
/// over REST, `GET /api/users/{id}/reservations`: the feed never carries what acting on it needs.
#[derive(Serialize)]
#[serde(tag = "type", rename = "offer", rename_all = "camelCase")]
struct OfferMessage<'a> {
    drop_id: Uuid,
    #[serde(serialize_with = "crate::db::models::timestamp")]
    expires_at: DateTime<Utc>,
    variant: Option<&'a str>,
    quantity: i32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StockVariant<'a> {
    label: &'a str,
    available_stock: i64,
}

#[derive(Serialize)]
#[serde(tag = "type", rename = "purchase", rename_all = "camelCase")]
struct SaleMessage<'a> {
    drop_id: Uuid,
    id: Uuid,
    #[serde(serialize_with = "crate::db::models::timestamp")]
    created_at: DateTime<Utc>,
    #[serde(rename = "user")]
    buyer: PublicBuyer<'a>,
    seq: u64,
}

/// A buyer as everybody may see them.
#[derive(Serialize)]
struct PublicBuyer<'a> {
    username: &'a str,
}

/// The first frame a client gets: the drops it watches, as `GET /api/drops` lists them, and whether
/// changes to them will follow.
pub fn snapshot_frame(drops: &[DropView], live: bool) -> Utf8Bytes {
    to_frame(&Snapshot { drops, live })
}

/// The stock change first (it is what every screen shows), then one `purchase` per new sale, oldest
/// first, so a client that prepends each to its feed ends with the newest on top. `labels` names the
/// sizes: element i - 1 for variant i.
pub fn notice_frames(notice: &Notice, labels: &[String]) -> Vec<Utf8Bytes> {
    let mut frames = Vec::with_capacity(1 + notice.sales.len());
    frames.push(to_frame(&StockMessage {
        drop_id: notice.drop_id,
        available_stock: notice.available_stock,
        total_stock: notice.total_stock,
        seq: notice.seq,
        variants: notice
            .variants
            .iter()
            .filter_map(|size| {
                let label = labels.get(usize::try_from(size.0).ok()?.checked_sub(1)?)?;
                Some(StockVariant {
                    label,
                    available_stock: size.1,
                })
            })
            .collect(),
        waiting: notice.waiting,
        line_seq: notice.line_seq,
    }));
    for sale in notice.sales.iter().rev() {
        frames.push(to_frame(&SaleMessage {
            drop_id: notice.drop_id,
            id: sale.id,
            created_at: sale.created_at,
            buyer: PublicBuyer {
                username: &sale.buyer.username,
            },
            seq: notice.seq,
        }));
    }
    frames
}

fn to_frame(message: &impl Serialize) -> Utf8Bytes {
    // Our own message structs always serialise.
    serde_json::to_string(message).unwrap_or_default().into()
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
        let messages: Vec<serde_json::Value> = notice_frames(&notice, &[])
            .iter()
            .map(|frame| serde_json::from_str(frame.as_str()).unwrap())
            .collect();
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[0]["type"], "stock");
        assert_eq!(messages[0]["availableStock"], 12);
        assert_eq!(messages[0]["totalStock"], 100);
        assert_eq!(messages[0]["seq"], 57);
        assert!(
            messages[0].get("variants").is_none(),
            "a drop without sizes"
        );
        assert_eq!(messages[1]["type"], "purchase");
        assert_eq!(messages[1]["user"]["username"], "ada");
        assert_eq!(messages[2]["user"]["username"], "grace");
        // Usernames only: a buyer's id is theirs alone.
        for message in &messages[1..] {
            assert_eq!(message["user"].as_object().unwrap().len(), 1, "{message}");
        }
        assert_eq!(messages[2]["createdAt"], "2026-11-27T21:30:01.500Z");
        assert_eq!(
            messages[2]["dropId"],
            "6f1c2a9e-8a47-4a57-9f53-0f6f6b1f2c11"
        );
    }

    #[test]
    fn passes_the_waiting_count_on_and_offers_name_no_buyer() {
        let notice: Notice = serde_json::from_str(
            r#"{"dropId":"6f1c2a9e-8a47-4a57-9f53-0f6f6b1f2c11","availableStock":0,"totalStock":9,"seq":3,"waiting":4}"#,
        )
        .unwrap();
        let stock: serde_json::Value =
            serde_json::from_str(notice_frames(&notice, &[])[0].as_str()).unwrap();
        assert_eq!(stock["waiting"], 4);
        let offer: InboxNotice = serde_json::from_str(
            r#"{"inbox":"ab12","dropId":"6f1c2a9e-8a47-4a57-9f53-0f6f6b1f2c11",
                "expiresAt":"2026-11-27T21:30:00.5+00:00","variant":null,"quantity":2}"#,
        )
        .unwrap();
        let message: serde_json::Value =
            serde_json::from_str(offer_frame(&offer).as_str()).unwrap();
        assert_eq!(
            message,
            serde_json::json!({"type": "offer", "dropId": "6f1c2a9e-8a47-4a57-9f53-0f6f6b1f2c11",
                               "expiresAt": "2026-11-27T21:30:00.500Z", "variant": null, "quantity": 2})
        );
    }

    #[test]
    fn names_the_sizes_that_changed() {
        let notice: Notice = serde_json::from_str(
            r#"{"dropId":"6f1c2a9e-8a47-4a57-9f53-0f6f6b1f2c11","availableStock":7,"totalStock":9,"seq":3,
                "purchases":[],"variants":[[2, 0], [3, 4]]}"#,
        )
        .unwrap();
        let labels = ["US 8", "US 9", "US 10"].map(str::to_owned);
        let stock: serde_json::Value =
            serde_json::from_str(notice_frames(&notice, &labels)[0].as_str()).unwrap();
        assert_eq!(
            stock["variants"],
            serde_json::json!([{"label": "US 9", "availableStock": 0}, {"label": "US 10", "availableStock": 4}])
        );
    }
}
