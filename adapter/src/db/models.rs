//! The JSON shapes the API answers with (camelCase, as the replaced API named them) and the extension's
//! own SQL types they are read from.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use uuid::Uuid;

/// `dropstock.reservation_status`. Queries read it as text (`status::text`): requests then use built-in
/// types only, which an unnamed statement can decode without looking the type up (see `queries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldStatus {
    Reserved,
    #[serde(rename = "purchased")]
    Sold,
    Expired,
    Cancelled,
}

impl HoldStatus {
    /// The enum's SQL label; an unknown one (a label added to the type) is an error, never a guess.
    pub fn from_label(label: &str) -> Option<Self> {
        Some(match label {
            "reserved" => HoldStatus::Reserved,
            "purchased" => HoldStatus::Sold,
            "expired" => HoldStatus::Expired,
            "cancelled" => HoldStatus::Cancelled,
            _ => return None,
        })
    }
}

/// One of a drop's latest sales, as `dropstock.recent_purchase` spells it in JSON (queries read the
/// `recent_purchase[]` column as `to_json(…)`, a built-in type).
#[derive(Debug, Clone, Deserialize)]
pub struct RecentSale {
    pub id: Uuid,
    #[serde(rename = "user_id")]
    pub buyer_id: Uuid,
    pub username: String,
    pub created_at: DateTime<Utc>,
}

/// One size of a sized drop and its stock, as `dropstock.variant_stock` spells it in JSON (queries read
/// the `variant_stock[]` column as `to_json(…)`, a built-in type, as they do the latest sales).
#[derive(Debug, Clone, Deserialize)]
pub struct VariantStock {
    pub variant: i16,
    pub label: Option<String>,
    pub total_stock: i32,
    pub available_stock: i32,
    pub held_stock: i32,
    pub sold_stock: i32,
}

/// Timestamps go out as JavaScript's `Date.prototype.toISOString()` writes them
/// (`2026-11-27T21:30:00.000Z`), which clients of the replaced API parse already.
pub fn timestamp<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

pub fn optional_timestamp<S: Serializer>(
    at: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => timestamp(at, serializer),
        None => serializer.serialize_none(),
    }
}

/// A drop as listed by `GET /api/drops`: exact stock and the three most recent buyers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DropView {
    pub id: Uuid,
    pub name: String,
    pub price: f64,
    pub total_stock: i32,
    pub available_stock: i32,
    pub held_stock: i32,
    pub sold_stock: i32,
    #[serde(serialize_with = "timestamp")]
    pub starts_at: DateTime<Utc>,
    #[serde(serialize_with = "optional_timestamp")]
    pub ends_at: Option<DateTime<Utc>>,
    pub hold_seconds: i32,
    #[serde(rename = "perUserLimit")]
    pub per_buyer_limit: i32,
    #[serde(serialize_with = "timestamp")]
    pub created_at: DateTime<Utc>,
    /// The three latest sales, newest first.
    #[serde(rename = "purchases")]
    pub sales: Vec<RecentSaleView>,
    /// How many times a hold may be extended; left out when never, as before extensions existed.
    #[serde(skip_serializing_if = "is_zero")]
    pub max_extensions: i32,
    /// A sized drop's sizes, in the extension's order; left out for a drop without sizes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<SizeView>,
    /// `draw` for a drop sold by a draw; left out for a race (first come, first served), as before draws.
    #[serde(skip_serializing_if = "is_race")]
    pub mode: String,
    /// Buyers in the drop's waiting list; left out when nobody waits.
    #[serde(skip_serializing_if = "is_zero")]
    pub waiting: i32,
}

fn is_zero(value: &i32) -> bool {
    *value == 0
}

fn is_race(mode: &str) -> bool {
    mode == "race"
}

/// One size of a drop, as drops list them.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SizeView {
    pub label: String,
    pub total_stock: i32,
    pub available_stock: i32,
}

impl From<VariantStock> for SizeView {
    fn from(size: VariantStock) -> Self {
        SizeView {
            label: size.label.unwrap_or_default(),
            total_stock: size.total_stock,
            available_stock: size.available_stock,
        }
    }
}

/// The size and the units of a hold or a sale. Left out of the JSON for one unit of a drop without
/// sizes, so such holds and sales read exactly as before sizes existed.
#[derive(Debug, Clone, Serialize)]
pub struct Units {
    /// The size's label; null on a drop without sizes.
    pub variant: Option<String>,
    pub quantity: i32,
}

impl Units {
    pub fn of(variant: Option<String>, quantity: i32) -> Option<Units> {
        (variant.is_some() || quantity != 1).then_some(Units { variant, quantity })
    }
}

/// One entry of a drop's `purchases` list.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecentSaleView {
    pub id: Uuid,
    #[serde(serialize_with = "timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(rename = "user")]
    pub buyer: BuyerRef,
}

/// A buyer as a public read names them: by name only. Ids go to their owner alone (the answers to
/// their own requests): without buyer tokens, whoever knows an id can act as that buyer.
#[derive(Debug, Clone, Serialize)]
pub struct BuyerRef {
    pub username: String,
}

impl From<RecentSale> for RecentSaleView {
    fn from(sale: RecentSale) -> Self {
        RecentSaleView {
            id: sale.id,
            created_at: sale.created_at,
            buyer: BuyerRef {
                username: sale.username,
            },
        }
    }
}

/// A hold, as `POST /api/reservations` and the cancel endpoint answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HoldView {
    pub id: Uuid,
    pub drop_id: Uuid,
    #[serde(rename = "userId")]
    pub buyer_id: Uuid,
    pub status: HoldStatus,
    #[serde(serialize_with = "timestamp")]
    pub expires_at: DateTime<Utc>,
    #[serde(serialize_with = "timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(flatten)]
    pub units: Option<Units>,
}

/// A sale, as `POST /api/purchases` answers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SaleView {
    pub id: Uuid,
    /// The hold the sale was made from.
    #[serde(rename = "reservationId")]
    pub hold_id: Uuid,
    pub drop_id: Uuid,
    #[serde(rename = "userId")]
    pub buyer_id: Uuid,
    /// Per unit.
    pub price: f64,
    #[serde(serialize_with = "timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(flatten)]
    pub units: Option<Units>,
}

/// A buyer, as `POST /api/users` answers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuyerView {
    pub id: Uuid,
    pub username: String,
    #[serde(serialize_with = "timestamp")]
    pub created_at: DateTime<Utc>,
    /// The secret that opens the buyer's inbox on the feed. Answered once, to the request that created
    /// the buyer, and nowhere else: whoever holds it reads the buyer's offers.
    pub inbox_key: String,
}

/// A buyer's place in a drop's waiting list, as `POST /api/drops/{id}/waitlist` answers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaitlistEntryView {
    pub drop_id: Uuid,
    #[serde(rename = "userId")]
    pub buyer_id: Uuid,
    /// 1 = next in line.
    pub position: i32,
    /// The sizes waited for, by label (any of them will do); null on a drop without sizes.
    pub variants: Option<Vec<String>>,
    pub quantity: i32,
    #[serde(serialize_with = "timestamp")]
    pub joined_at: DateTime<Utc>,
    /// Made by this call (true), or the place the buyer already had.
    #[serde(skip)]
    pub fresh: bool,
}

/// A buyer's place in a drop's line and the line's length, as `GET /api/drops/{id}/waitlist` answers.
#[derive(Debug, Clone, Serialize)]
pub struct WaitlistView {
    /// 1 = next in line; null when the buyer is not waiting (or none was named).
    pub position: Option<i32>,
    /// Buyers waiting on the drop.
    pub waiting: i32,
}

/// What leaving a waiting list did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeftView {
    pub drop_id: Uuid,
    #[serde(rename = "userId")]
    pub buyer_id: Uuid,
    /// Whether the buyer was waiting (false: nothing to leave).
    pub left: bool,
}

/// A buyer's entry into a draw, as `POST /api/drops/{id}/draw/entries` answers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrawEntryView {
    pub id: Uuid,
    pub drop_id: Uuid,
    #[serde(rename = "userId")]
    pub buyer_id: Uuid,
    pub variants: Option<Vec<String>>,
    pub quantity: i32,
    #[serde(serialize_with = "timestamp")]
    pub entered_at: DateTime<Utc>,
    #[serde(skip)]
    pub fresh: bool,
}

/// A draw's state and, once drawn, its result, as `GET /api/drops/{id}/draw` answers. Public: entries
/// are named by username only.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrawView {
    pub entries: i32,
    #[serde(serialize_with = "optional_timestamp")]
    pub drawn_at: Option<DateTime<Utc>>,
    /// Published once drawn, so anyone can recompute the order.
    pub seed: Option<String>,
    /// Entries that got an offer when the draw ran.
    pub winners: Option<i32>,
    /// The entries in the order drawn; empty before the draw.
    pub order: Vec<DrawPlace>,
}

/// One row of `dropstock.draw_result`, as it spells itself in JSON (read as `json_agg`, a built-in type).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrawPlace {
    pub place: i32,
    #[serde(alias = "entry_id")]
    pub entry_id: Uuid,
    pub username: String,
    pub variants: Option<Vec<String>>,
    pub quantity: i32,
    /// hex sha256(seed || entry id): the key the order sorts by.
    pub ticket: String,
}

/// One of a buyer's live holds, as `GET /api/users/{id}/reservations` lists them: a hold with its drop's
/// name, and whether the waiting list offered it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuyerHoldView {
    pub id: Uuid,
    pub drop_id: Uuid,
    pub drop_name: String,
    #[serde(rename = "userId")]
    pub buyer_id: Uuid,
    pub status: HoldStatus,
    #[serde(serialize_with = "timestamp")]
    pub expires_at: DateTime<Utc>,
    #[serde(serialize_with = "timestamp")]
    pub created_at: DateTime<Utc>,
    /// Made for the buyer when their turn in the waiting list came, not asked for.
    pub offered: bool,
    #[serde(flatten)]
    pub units: Option<Units>,
}

/// What `POST /api/drops` hands to `dropstock.create_drop`. Optional fields left out fall back to the
/// extension's own defaults, so those live in one place.
#[derive(Debug, Clone)]
pub struct NewDrop {
    pub name: String,
    /// The price as the client wrote it (a JSON number), passed to SQL as text so `numeric` gets the exact
    /// decimal rather than a binary float's nearest value.
    pub price: String,
    /// Required without sizes; with them, None (their sum) or their sum.
    pub total_stock: Option<i32>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub hold_seconds: Option<i32>,
    pub per_buyer_limit: Option<i32>,
    /// The sizes and their stock, as the JSON object the client sent (checked by the extension).
    pub variants: Option<String>,
    pub max_extensions: Option<i32>,
    /// `race` (first come, first served) or `draw` (entries, then a drawn order).
    pub mode: Option<String>,
    pub cooldown_seconds: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(value: &serde_json::Value) -> Vec<&str> {
        let mut keys: Vec<&str> = value
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        keys
    }

    /// Clients of the replaced API read these names; the Rust names may say hold, buyer and sale, the
    /// wire must not.
    #[test]
    fn views_keep_the_replaced_api_field_names() {
        let at = DateTime::parse_from_rfc3339("2026-11-27T21:30:00.5Z")
            .unwrap()
            .with_timezone(&Utc);
        let id = Uuid::nil();
        let drop = serde_json::to_value(DropView {
            id,
            name: "hoodie".to_owned(),
            price: 65.0,
            total_stock: 50,
            available_stock: 49,
            held_stock: 0,
            sold_stock: 1,
            starts_at: at,
            ends_at: None,
            hold_seconds: 60,
            per_buyer_limit: 1,
            created_at: at,
            sales: vec![RecentSaleView::from(RecentSale {
                id,
                buyer_id: id,
                username: "ada".to_owned(),
                created_at: at,
            })],
            max_extensions: 0,
            variants: Vec::new(),
            mode: "race".to_owned(),
            waiting: 0,
        })
        .unwrap();
        assert_eq!(
            keys(&drop),
            [
                "availableStock",
                "createdAt",
                "endsAt",
                "heldStock",
                "holdSeconds",
                "id",
                "name",
                "perUserLimit",
                "price",
                "purchases",
                "soldStock",
                "startsAt",
                "totalStock"
            ]
        );
        assert_eq!(drop["startsAt"], "2026-11-27T21:30:00.500Z");
        assert_eq!(keys(&drop["purchases"][0]), ["createdAt", "id", "user"]);
        assert_eq!(keys(&drop["purchases"][0]["user"]), ["username"]);

        let hold = serde_json::to_value(HoldView {
            id,
            drop_id: id,
            buyer_id: id,
            status: HoldStatus::Sold,
            expires_at: at,
            created_at: at,
            units: Units::of(None, 1),
        })
        .unwrap();
        assert_eq!(
            keys(&hold),
            ["createdAt", "dropId", "expiresAt", "id", "status", "userId"]
        );
        assert_eq!(hold["status"], "purchased");

        let sale = serde_json::to_value(SaleView {
            id,
            hold_id: id,
            drop_id: id,
            buyer_id: id,
            price: 65.0,
            created_at: at,
            units: Units::of(None, 1),
        })
        .unwrap();
        assert_eq!(
            keys(&sale),
            [
                "createdAt",
                "dropId",
                "id",
                "price",
                "reservationId",
                "userId"
            ]
        );

        let buyer = serde_json::to_value(BuyerView {
            id,
            username: "ada".to_owned(),
            created_at: at,
            inbox_key: "secret".to_owned(),
        })
        .unwrap();
        assert_eq!(keys(&buyer), ["createdAt", "id", "inboxKey", "username"]);
    }

    #[test]
    fn sizes_and_quantities_show_only_when_used() {
        let at = Utc::now();
        let hold = |units| {
            serde_json::to_value(HoldView {
                id: Uuid::nil(),
                drop_id: Uuid::nil(),
                buyer_id: Uuid::nil(),
                status: HoldStatus::Reserved,
                expires_at: at,
                created_at: at,
                units,
            })
            .unwrap()
        };
        let plain = hold(Units::of(None, 1));
        assert!(plain.get("variant").is_none() && plain.get("quantity").is_none());
        let sized = hold(Units::of(Some("US 9".to_owned()), 1));
        assert_eq!(
            (&sized["variant"], &sized["quantity"]),
            (&"US 9".into(), &1.into())
        );
        let two = hold(Units::of(None, 2));
        assert_eq!(
            (&two["variant"], &two["quantity"]),
            (&serde_json::Value::Null, &2.into())
        );
    }
}
