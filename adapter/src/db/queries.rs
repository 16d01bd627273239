//! One function per SQL call the API makes. Every decision (stock, limits, expiry, ownership) is made by
//! the extension; these only pass arguments and read rows.

use chrono::{DateTime, Utc};
use deadpool_postgres::Object;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::db::models::{
    BuyerView, DropView, Elements, HoldView, NewDrop, RecentSales, SaleView, Units, VariantStock,
};
use crate::db::DbError;

/// The call (evaluated anew each time) made again while `retry_again` says so; its last outcome. A
/// macro rather than a function taking a closure: the call's future borrows the client and the
/// arguments, and a closure cannot hand such a future back as `Send`.
macro_rules! retrying {
    ($call:expr) => {{
        let mut attempt = 1;
        loop {
            match $call.await {
                Err(error) if retry_again(&error, &mut attempt) => continue,
                outcome => break outcome,
            }
        }
    }};
}

pub async fn extension_installed(client: &Object) -> Result<bool, DbError> {
    let statement = client
        .prepare_cached(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'dropstock')",
        )
        .await?;
    Ok(client.query_one(&statement, &[]).await?.get(0))
}

/// The columns of `dropstock.drop_summaries`, with the price as float8: JSON has only one kind of number,
/// and prices of at most 12 digits with 2 decimals survive the trip exactly.
const SUMMARY_COLUMNS: &str =
    "id, name, price::float8, total_stock, available_stock, held_stock, sold_stock, \
     starts_at, ends_at, hold_seconds, per_user_limit, created_at, recent_purchases, max_extensions, variants";

fn drop_view(row: &Row) -> Result<DropView, tokio_postgres::Error> {
    let sales: RecentSales = row.try_get(12)?;
    let sizes: Elements<VariantStock> = row.try_get(14)?;
    Ok(DropView {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        price: row.try_get(2)?,
        total_stock: row.try_get(3)?,
        available_stock: row.try_get(4)?,
        held_stock: row.try_get(5)?,
        sold_stock: row.try_get(6)?,
        starts_at: row.try_get(7)?,
        ends_at: row.try_get(8)?,
        hold_seconds: row.try_get(9)?,
        per_buyer_limit: row.try_get(10)?,
        created_at: row.try_get(11)?,
        sales: sales.0.into_iter().map(Into::into).collect(),
        max_extensions: row.try_get(13)?,
        variants: sizes.0.into_iter().map(Into::into).collect(),
    })
}

pub async fn active_drops(client: &Object) -> Result<Vec<DropView>, DbError> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM dropstock.active_drops()"
        ))
        .await?;
    let rows = client.query(&statement, &[]).await?;
    Ok(rows.iter().map(drop_view).collect::<Result<_, _>>()?)
}

pub async fn drop_status(client: &Object, drop_id: Uuid) -> Result<DropView, DbError> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM dropstock.drop_status($1)"
        ))
        .await?;
    Ok(drop_view(
        &client.query_one(&statement, &[&drop_id]).await?,
    )?)
}

/// Calls `create_drop` with named arguments for the fields given, so the ones left out take the
/// extension's defaults, and answers the new drop as `drop_status` shows it (a sized drop's sizes are
/// numbered and trimmed by the extension). Each spelling of the call is prepared once per connection.
pub async fn create_drop(client: &Object, drop: &NewDrop) -> Result<DropView, DbError> {
    let mut arguments = vec![
        "name => $1".to_owned(),
        "price => $2::text::numeric".to_owned(),
        "total_stock => $3".to_owned(),
    ];
    let mut values: Vec<&(dyn postgres_types::ToSql + Sync)> =
        vec![&drop.name, &drop.price, &drop.total_stock];
    let optional: [(&str, Option<&(dyn postgres_types::ToSql + Sync)>); 6] = [
        ("starts_at", drop.starts_at.as_ref().map(|v| v as _)),
        ("ends_at", drop.ends_at.as_ref().map(|v| v as _)),
        ("hold_seconds", drop.hold_seconds.as_ref().map(|v| v as _)),
        (
            "per_user_limit",
            drop.per_buyer_limit.as_ref().map(|v| v as _),
        ),
        ("variants", drop.variants.as_ref().map(|v| v as _)),
        (
            "max_extensions",
            drop.max_extensions.as_ref().map(|v| v as _),
        ),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            values.push(value);
            // The sizes travel as JSON text, read as jsonb by the extension.
            let cast = if name == "variants" {
                "::text::jsonb"
            } else {
                ""
            };
            arguments.push(format!("{name} => ${}{cast}", values.len()));
        }
    }
    let statement = client
        .prepare_cached(&format!(
            "SELECT d.id FROM dropstock.create_drop({}) d",
            arguments.join(", ")
        ))
        .await?;
    let id: Uuid = client.query_one(&statement, &values).await?.try_get(0)?;
    drop_status(client, id).await
}

/// Calls `create_user`.
pub async fn create_buyer(client: &Object, username: &str) -> Result<BuyerView, DbError> {
    let statement = client
        .prepare_cached("SELECT u.id, u.username, u.created_at FROM dropstock.create_user($1) u")
        .await?;
    let row = client.query_one(&statement, &[&username]).await?;
    Ok(BuyerView {
        id: row.try_get(0)?,
        username: row.try_get(1)?,
        created_at: row.try_get(2)?,
    })
}

/// The size label of a hold or sale row `r` (variant 0, a drop without sizes, has none), and its units.
const UNITS_COLUMNS: &str =
    "CASE WHEN r.variant > 0 THEN (SELECT v.label FROM dropstock.variant_status(r.drop_id) v \
                                                      WHERE v.variant = r.variant) END, r.quantity";

/// A hold row `r` as `hold_view` reads it.
const HOLD_COLUMNS: &str = "r.id, r.drop_id, r.user_id, r.status, r.expires_at, r.created_at";

fn hold_view(row: &Row) -> Result<HoldView, tokio_postgres::Error> {
    Ok(HoldView {
        id: row.try_get(0)?,
        drop_id: row.try_get(1)?,
        buyer_id: row.try_get(2)?,
        status: row.try_get(3)?,
        expires_at: row.try_get(4)?,
        created_at: row.try_get(5)?,
        units: Units::of(row.try_get(6)?, row.try_get(7)?),
    })
}

/// One buyer's row from `reserve_items`: their hold, or their refusal's SQLSTATE and message.
pub struct BatchAnswer {
    pub buyer: Uuid,
    pub hold: Option<BatchHold>,
    /// The hold's size and units (those asked for, with a refusal).
    pub variant: Option<String>,
    pub quantity: i32,
    pub sqlstate: Option<String>,
    pub message: Option<String>,
}

/// The hold a row of `reserve_items` gives a buyer. The drop and the buyer are the batch's, so they are
/// not repeated here.
#[derive(Debug, Clone, Copy)]
pub struct BatchHold {
    pub id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// Made by this call (true), or the buyer's live hold from before, handed back as to a retry.
    pub fresh: bool,
}

/// What one buyer asks `reserve_items` for: a size (on a sized drop) and a number of units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    pub buyer: Uuid,
    pub variant: Option<String>,
    pub quantity: i32,
}

/// Reserves for many buyers of one drop in one transaction (see `batch`).
pub async fn reserve_batch(
    client: &Object,
    drop_id: Uuid,
    asked: &[Asked],
) -> Result<Vec<BatchAnswer>, DbError> {
    let statement = client
        .prepare_cached(
            "SELECT user_id, reservation_id, expires_at, created_at, fresh, sqlstate, message, variant, quantity \
               FROM dropstock.reserve_items($1, $2, $3, $4)",
        )
        .await?;
    let buyers: Vec<Uuid> = asked.iter().map(|a| a.buyer).collect();
    let variants: Vec<Option<&str>> = asked.iter().map(|a| a.variant.as_deref()).collect();
    let quantities: Vec<i32> = asked.iter().map(|a| a.quantity).collect();
    let rows = retrying!(client.query(&statement, &[&drop_id, &buyers, &variants, &quantities]))?;
    rows.iter()
        .map(|row| {
            let hold = match row.try_get::<_, Option<Uuid>>(1)? {
                Some(id) => Some(BatchHold {
                    id,
                    expires_at: row.try_get(2)?,
                    created_at: row.try_get(3)?,
                    fresh: row.try_get(4)?,
                }),
                None => None,
            };
            Ok(BatchAnswer {
                buyer: row.try_get(0)?,
                hold,
                sqlstate: row.try_get(5)?,
                message: row.try_get(6)?,
                variant: row.try_get(7)?,
                quantity: row.try_get(8)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(DbError::from)
}

/// What a buyer can do to their own hold besides buying it.
#[derive(Debug, Clone, Copy)]
pub enum HoldChange {
    /// `cancel_reservation`: give the hold back.
    Cancel,
    /// `extend_hold`: the drop's hold time once more.
    Extend,
}

/// Calls `cancel_reservation` or `extend_hold`; the hold as it is afterwards.
pub async fn change_hold(
    client: &Object,
    change: HoldChange,
    hold_id: Uuid,
    buyer: Uuid,
) -> Result<HoldView, DbError> {
    let function = match change {
        HoldChange::Cancel => "cancel_reservation",
        HoldChange::Extend => "extend_hold",
    };
    let statement = client
        .prepare_cached(&format!(
            "SELECT {HOLD_COLUMNS}, {UNITS_COLUMNS} FROM dropstock.{function}($1, $2) r"
        ))
        .await?;
    let row = retrying!(client.query_one(&statement, &[&hold_id, &buyer]))?;
    Ok(hold_view(&row)?)
}

/// The labels of a sized drop's sizes, element i - 1 for variant i (none for a drop without sizes).
pub async fn variant_labels(client: &Object, drop_id: Uuid) -> Result<Vec<String>, DbError> {
    let statement = client
        .prepare_cached(
            "SELECT label FROM dropstock.variant_status($1) WHERE variant > 0 ORDER BY variant",
        )
        .await?;
    let rows = client.query(&statement, &[&drop_id]).await?;
    Ok(rows
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?)
}

/// Calls `purchase`: the buyer turns their hold into a sale.
pub async fn buy(client: &Object, hold_id: Uuid, buyer: Uuid) -> Result<SaleView, DbError> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT r.id, r.reservation_id, r.drop_id, r.user_id, r.price::float8, r.created_at, {UNITS_COLUMNS} \
               FROM dropstock.purchase($1, $2) r"
        ))
        .await?;
    let row = retrying!(client.query_one(&statement, &[&hold_id, &buyer]))?;
    Ok(SaleView {
        id: row.try_get(0)?,
        hold_id: row.try_get(1)?,
        drop_id: row.try_get(2)?,
        buyer_id: row.try_get(3)?,
        price: row.try_get(4)?,
        created_at: row.try_get(5)?,
        units: Units::of(row.try_get(6)?, row.try_get(7)?),
    })
}

/// How many times a call that failed with a serialization failure or a deadlock is made again.
const TRANSIENT_ATTEMPTS: usize = 3;

/// Whether to make a call again that PostgreSQL ended with a serialization failure (40001) or a
/// deadlock (40P01), counting the attempt. The extension's lock order makes both impossible through
/// its API; this keeps one from ever reaching a buyer should an operator's own transaction get in the
/// way. Every call retried this way is safe to repeat: reserving again returns the hold made, buying
/// again the sale made, cancelling again the hold as it is.
fn retry_again(error: &tokio_postgres::Error, attempt: &mut usize) -> bool {
    use tokio_postgres::error::SqlState;
    let transient = matches!(
        error.code(),
        Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED
    );
    if !transient || *attempt >= TRANSIENT_ATTEMPTS {
        return false;
    }
    tracing::warn!(%error, attempt = *attempt, "retrying a call the database rolled back");
    *attempt += 1;
    true
}
