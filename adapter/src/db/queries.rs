//! One function per SQL call the API makes. Every decision (stock, limits, expiry, ownership) is made by
//! the extension; these only pass arguments and read rows.

use chrono::{DateTime, Utc};
use tokio_postgres::{Row, SimpleQueryMessage};
use uuid::Uuid;

use postgres_types::{ToSql, Type};

use crate::db::models::{
    BuyerHoldView, BuyerView, DrawEntryView, DrawPlace, DrawView, DropView, HoldStatus, HoldView,
    NewDrop, RecentSale, SaleView, Units, VariantStock, WaitlistEntryView, WaitlistView,
};
use crate::db::pool::{Connection, Statements};
use crate::db::DbError;

/// Runs `$sql` with `$params` (each a value and its SQL type) within the connection's deadline; the
/// rows. As a prepared statement (prepared once per connection, from its cache) or, where a pooler in
/// transaction mode sits in front, as an unnamed statement (see `pool::Statements`). Made again, with the
/// same arguments:
/// - once, after emptying the statement cache, when the server says a cached statement no longer fits
///   (the extension was dropped and created again under the running adapter, so the types it returns
///   are new ones);
/// - up to `TRANSIENT_ATTEMPTS` times in all when PostgreSQL rolled it back (`retry_again`).
///
/// Inside a transaction (a batch's, `begin_batch`) neither: the error has ended the transaction, and
/// the batch is sent again whole, turn and all (`batching`).
///
/// A macro rather than a function taking a closure: the call's future borrows the client and the
/// arguments, and a closure cannot hand such a future back as `Send`.
macro_rules! call {
    ($client:expr, $sql:expr, $params:expr) => {{
        let client: &Connection = $client;
        let sql: &str = $sql;
        let typed: &[(&(dyn ToSql + Sync), Type)] = $params;
        let mut attempt = 1;
        let mut recompiled = false;
        loop {
            let outcome = client
                .call(async {
                    match client.statements() {
                        Statements::Unnamed => client.query_typed(sql, typed).await,
                        Statements::Prepared => {
                            let statement = client.prepare_cached(sql).await?;
                            let values: Vec<&(dyn ToSql + Sync)> =
                                typed.iter().map(|(value, _)| *value).collect();
                            client.query(&statement, &values).await
                        }
                    }
                })
                .await;
            match outcome {
                Err(DbError::Postgres(error)) if !recompiled && statement_outdated(&error) => {
                    tracing::info!(%error, "the database's types changed; preparing statements again");
                    client.statement_cache.clear();
                    recompiled = true;
                    // Inside a transaction the error has ended it: whoever began it sends it again.
                    if client.in_transaction() {
                        break Err(DbError::Postgres(error));
                    }
                }
                Err(DbError::Postgres(error))
                    if !client.in_transaction() && retry_again(&error, &mut attempt) => {}
                outcome => break outcome,
            }
        }
    }};
}

/// The one row a call returns; a function of the API that returned none (or several) is a fault of ours.
fn only(rows: Vec<Row>) -> Result<Row, DbError> {
    let count = rows.len();
    let mut rows = rows.into_iter();
    match (rows.next(), count) {
        (Some(row), 1) => Ok(row),
        _ => Err(DbError::Shape(format!("expected one row, got {count}"))),
    }
}

pub async fn extension_installed(client: &Connection) -> Result<bool, DbError> {
    let rows = call!(
        client,
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'dropstock')",
        &[]
    )?;
    Ok(only(rows)?.try_get(0)?)
}

/// The columns of `dropstock.drop_summaries`, with the price as float8 (JSON has only one kind of number,
/// and prices of at most 12 digits with 2 decimals survive the trip exactly) and the latest sales and the
/// sizes as JSON (built-in types, see `HoldStatus`).
const SUMMARY_COLUMNS: &str =
    "id, name, price::float8, total_stock, available_stock, held_stock, sold_stock, \
     starts_at, ends_at, hold_seconds, per_user_limit, created_at, to_json(recent_purchases)::text, \
     max_extensions, to_json(variants)::text, mode, waiting";

/// A JSON array column (`to_json` of an array of the extension's composite type). The views build them
/// with `ARRAY(…)`, so they hold no NULLs today; skipping them rather than failing keeps one odd row from
/// turning a whole drop list into an error.
fn json_array<T: serde::de::DeserializeOwned>(
    row: &Row,
    column: usize,
    name: &str,
) -> Result<Vec<T>, DbError> {
    let text: Option<&str> = row.try_get(column)?;
    let elements: Vec<Option<T>> = serde_json::from_str(text.unwrap_or("[]"))
        .map_err(|error| DbError::Shape(format!("{name}: {error}")))?;
    Ok(elements.into_iter().flatten().collect())
}

fn drop_view(row: &Row) -> Result<DropView, DbError> {
    let sales: Vec<RecentSale> = json_array(row, 12, "recent_purchases")?;
    let sizes: Vec<VariantStock> = json_array(row, 14, "variants")?;
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
        sales: sales.into_iter().map(Into::into).collect(),
        max_extensions: row.try_get(13)?,
        variants: sizes.into_iter().map(Into::into).collect(),
        mode: row.try_get(15)?,
        waiting: row.try_get(16)?,
    })
}

pub async fn active_drops(client: &Connection) -> Result<Vec<DropView>, DbError> {
    let sql = format!("SELECT {SUMMARY_COLUMNS} FROM dropstock.active_drops()");
    let rows = call!(client, &sql, &[])?;
    rows.iter().map(drop_view).collect()
}

pub async fn drop_status(client: &Connection, drop_id: Uuid) -> Result<DropView, DbError> {
    let sql = format!("SELECT {SUMMARY_COLUMNS} FROM dropstock.drop_status($1)");
    let rows = call!(client, &sql, &[(&drop_id, Type::UUID)])?;
    drop_view(&only(rows)?)
}

/// Calls `create_drop` with named arguments for the fields given, so the ones left out take the
/// extension's defaults, and answers the new drop as `drop_status` shows it (a sized drop's sizes are
/// numbered and trimmed by the extension). Each spelling of the call is prepared once per connection.
pub async fn create_drop(client: &Connection, drop: &NewDrop) -> Result<DropView, DbError> {
    let mut arguments = vec![
        "name => $1".to_owned(),
        "price => $2::text::numeric".to_owned(),
        "total_stock => $3".to_owned(),
    ];
    let mut values: Vec<(&(dyn ToSql + Sync), Type)> = vec![
        (&drop.name, Type::TEXT),
        (&drop.price, Type::TEXT),
        (&drop.total_stock, Type::INT4),
    ];
    let optional: [(&str, Option<&(dyn ToSql + Sync)>, Type); 8] = [
        (
            "starts_at",
            drop.starts_at.as_ref().map(|v| v as _),
            Type::TIMESTAMPTZ,
        ),
        (
            "ends_at",
            drop.ends_at.as_ref().map(|v| v as _),
            Type::TIMESTAMPTZ,
        ),
        (
            "hold_seconds",
            drop.hold_seconds.as_ref().map(|v| v as _),
            Type::INT4,
        ),
        (
            "per_user_limit",
            drop.per_buyer_limit.as_ref().map(|v| v as _),
            Type::INT4,
        ),
        // The sizes travel as JSON text, read as jsonb by the extension.
        (
            "variants",
            drop.variants.as_ref().map(|v| v as _),
            Type::TEXT,
        ),
        (
            "max_extensions",
            drop.max_extensions.as_ref().map(|v| v as _),
            Type::INT4,
        ),
        ("mode", drop.mode.as_ref().map(|v| v as _), Type::TEXT),
        (
            "cooldown_seconds",
            drop.cooldown_seconds.as_ref().map(|v| v as _),
            Type::INT4,
        ),
    ];
    for (name, value, ty) in optional {
        if let Some(value) = value {
            values.push((value, ty));
            let cast = if name == "variants" {
                "::text::jsonb"
            } else {
                ""
            };
            arguments.push(format!("{name} => ${}{cast}", values.len()));
        }
    }
    let sql = format!(
        "SELECT d.id FROM dropstock.create_drop({}) d",
        arguments.join(", ")
    );
    let id: Uuid = only(call!(client, &sql, &values)?)?.try_get(0)?;
    drop_status(client, id).await
}

/// Calls `create_user`; `id` is the buyer's id when the caller chose it (NULL: a new one).
pub async fn create_buyer(
    client: &Connection,
    username: &str,
    id: Option<Uuid>,
) -> Result<BuyerView, DbError> {
    let rows = call!(
        client,
        "SELECT u.id, u.username, u.created_at, u.inbox_key FROM dropstock.create_user($1, $2) u",
        &[(&username, Type::TEXT), (&id, Type::UUID)]
    )?;
    let row = only(rows)?;
    Ok(BuyerView {
        id: row.try_get(0)?,
        username: row.try_get(1)?,
        created_at: row.try_get(2)?,
        inbox_key: row.try_get(3)?,
    })
}

/// The sizes a buyer waits for or enters a draw with: one label (or none, on a drop without sizes), or
/// several, any of which will do. Each picks its own overload of the SQL function.
#[derive(Debug, Clone)]
pub enum Sizes {
    One(Option<String>),
    AnyOf(Vec<String>),
}

impl Sizes {
    /// The argument's cast, which picks the overload (`variant text` or `variants text[]`).
    fn cast(&self) -> &'static str {
        match self {
            Sizes::One(_) => "text",
            Sizes::AnyOf(_) => "text[]",
        }
    }

    fn value(&self) -> (&(dyn ToSql + Sync), Type) {
        match self {
            Sizes::One(label) => (label, Type::TEXT),
            Sizes::AnyOf(labels) => (labels, Type::TEXT_ARRAY),
        }
    }
}

/// Calls one of the functions a buyer waits or enters with, which take (drop, buyer, sizes, quantity) and
/// answer one row: `SELECT {columns} FROM dropstock.{function}(…) x`.
async fn enter(
    client: &Connection,
    function: &str,
    columns: &str,
    drop_id: Uuid,
    buyer: Uuid,
    sizes: &Sizes,
    quantity: i32,
) -> Result<Row, DbError> {
    let sql = format!(
        "SELECT {columns} FROM dropstock.{function}($1, $2, $3::{}, $4) x",
        sizes.cast()
    );
    let (labels, labels_type) = sizes.value();
    only(call!(
        client,
        &sql,
        &[
            (&drop_id, Type::UUID),
            (&buyer, Type::UUID),
            (labels, labels_type),
            (&quantity, Type::INT4),
        ]
    )?)
}

/// Calls `join_waitlist`: the buyer's place in the drop's line, new or the one they had.
pub async fn join_waitlist(
    client: &Connection,
    drop_id: Uuid,
    buyer: Uuid,
    sizes: &Sizes,
    quantity: i32,
) -> Result<WaitlistEntryView, DbError> {
    let row = enter(
        client,
        "join_waitlist",
        "x.drop_id, x.user_id, x.\"position\", x.variants, x.quantity, x.joined_at, x.fresh",
        drop_id,
        buyer,
        sizes,
        quantity,
    )
    .await?;
    Ok(WaitlistEntryView {
        drop_id: row.try_get(0)?,
        buyer_id: row.try_get(1)?,
        position: row.try_get(2)?,
        variants: row.try_get(3)?,
        quantity: row.try_get(4)?,
        joined_at: row.try_get(5)?,
        fresh: row.try_get(6)?,
    })
}

/// Calls `leave_waitlist`: whether the buyer was waiting.
pub async fn leave_waitlist(
    client: &Connection,
    drop_id: Uuid,
    buyer: Uuid,
) -> Result<bool, DbError> {
    let row = only(call!(
        client,
        "SELECT dropstock.leave_waitlist($1, $2)",
        &[(&drop_id, Type::UUID), (&buyer, Type::UUID)]
    )?)?;
    Ok(row.try_get(0)?)
}

/// The buyer's position in the drop's line (when a buyer is named) and the line's length.
pub async fn waitlist(
    client: &Connection,
    drop_id: Uuid,
    buyer: Option<Uuid>,
) -> Result<WaitlistView, DbError> {
    let row = only(call!(
        client,
        "SELECT CASE WHEN $2::uuid IS NOT NULL THEN dropstock.waitlist_position($1, $2) END, \
                dropstock.waitlist_length($1)",
        &[(&drop_id, Type::UUID), (&buyer, Type::UUID)]
    )?)?;
    Ok(WaitlistView {
        position: row.try_get(0)?,
        waiting: row.try_get(1)?,
    })
}

/// Calls `enter_draw`: the buyer's entry, new or the one they had.
pub async fn enter_draw(
    client: &Connection,
    drop_id: Uuid,
    buyer: Uuid,
    sizes: &Sizes,
    quantity: i32,
) -> Result<DrawEntryView, DbError> {
    let row = enter(
        client,
        "enter_draw",
        "x.entry_id, x.drop_id, x.user_id, x.variants, x.quantity, x.entered_at, x.fresh",
        drop_id,
        buyer,
        sizes,
        quantity,
    )
    .await?;
    Ok(DrawEntryView {
        id: row.try_get(0)?,
        drop_id: row.try_get(1)?,
        buyer_id: row.try_get(2)?,
        variants: row.try_get(3)?,
        quantity: row.try_get(4)?,
        entered_at: row.try_get(5)?,
        fresh: row.try_get(6)?,
    })
}

/// A draw's state and its order (empty before it is drawn), read in one statement; the order as JSON (a
/// built-in type, see `HoldStatus`).
pub async fn draw(client: &Connection, drop_id: Uuid) -> Result<DrawView, DbError> {
    let row = only(call!(
        client,
        "SELECT s.entries, s.drawn_at, s.seed, s.winners, \
                (SELECT json_agg(r ORDER BY r.place)::text FROM dropstock.draw_result($1) r) \
           FROM dropstock.draw_status($1) s",
        &[(&drop_id, Type::UUID)]
    )?)?;
    let order: Option<&str> = row.try_get(4)?;
    let order: Vec<DrawPlace> = serde_json::from_str(order.unwrap_or("[]"))
        .map_err(|error| DbError::Shape(format!("draw_result: {error}")))?;
    Ok(DrawView {
        entries: row.try_get(0)?,
        drawn_at: row.try_get(1)?,
        seed: row.try_get(2)?,
        winners: row.try_get(3)?,
        order,
    })
}

/// Calls `run_draw` (a NULL seed: the extension picks a random one), then reads the draw as `draw` does.
pub async fn run_draw(
    client: &Connection,
    drop_id: Uuid,
    seed: Option<&str>,
) -> Result<DrawView, DbError> {
    call!(
        client,
        "SELECT d.drop_id FROM dropstock.run_draw($1, $2) d",
        &[(&drop_id, Type::UUID), (&seed, Type::TEXT)]
    )?;
    draw(client, drop_id).await
}

/// Calls `buyer_holds`: the buyer's live holds, offers among them, newest first.
pub async fn buyer_holds(client: &Connection, buyer: Uuid) -> Result<Vec<BuyerHoldView>, DbError> {
    let rows = call!(
        client,
        "SELECT h.reservation_id, h.drop_id, h.drop_name, h.status, h.expires_at, h.created_at, \
                h.variant, h.quantity, h.offered \
           FROM dropstock.buyer_holds($1) h",
        &[(&buyer, Type::UUID)]
    )?;
    rows.iter()
        .map(|row| {
            let label: &str = row.try_get(3)?;
            Ok(BuyerHoldView {
                id: row.try_get(0)?,
                drop_id: row.try_get(1)?,
                drop_name: row.try_get(2)?,
                buyer_id: buyer,
                status: HoldStatus::from_label(label)
                    .ok_or_else(|| DbError::Shape(format!("unknown hold status {label:?}")))?,
                expires_at: row.try_get(4)?,
                created_at: row.try_get(5)?,
                offered: row.try_get(8)?,
                units: Units::of(row.try_get(6)?, row.try_get(7)?),
            })
        })
        .collect()
}

/// The inbox id of a buyer, for a buyer token's subject (JWT mode).
pub async fn inbox_of(client: &Connection, buyer: Uuid) -> Result<Option<String>, DbError> {
    let row = only(call!(
        client,
        "SELECT dropstock.inbox_of($1)",
        &[(&buyer, Type::UUID)]
    )?)?;
    Ok(row.try_get(0)?)
}

/// The size (its label, on a sized drop) and the units of a hold, read beside it. Labels come from
/// `variant_status`, the one place that names a drop's sizes.
const UNITS_COLUMNS: &str =
    "CASE WHEN r.variant > 0 THEN (SELECT v.label FROM dropstock.variant_status(r.drop_id) v \
                                                      WHERE v.variant = r.variant) END, r.quantity";

/// A hold's columns, with its status as text (see `HoldStatus`).
const HOLD_COLUMNS: &str = "r.id, r.drop_id, r.user_id, r.status::text, r.expires_at, r.created_at";

fn hold_view(row: &Row) -> Result<HoldView, DbError> {
    let label: &str = row.try_get(3)?;
    Ok(HoldView {
        id: row.try_get(0)?,
        drop_id: row.try_get(1)?,
        buyer_id: row.try_get(2)?,
        status: HoldStatus::from_label(label)
            .ok_or_else(|| DbError::Shape(format!("unknown hold status {label:?}")))?,
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
    client: &Connection,
    drop_id: Uuid,
    asked: &[Asked],
) -> Result<Vec<BatchAnswer>, DbError> {
    let buyers: Vec<Uuid> = asked.iter().map(|a| a.buyer).collect();
    let variants: Vec<Option<&str>> = asked.iter().map(|a| a.variant.as_deref()).collect();
    let quantities: Vec<i32> = asked.iter().map(|a| a.quantity).collect();
    let rows = call!(
        client,
        "SELECT user_id, reservation_id, expires_at, created_at, fresh, sqlstate, message, variant, quantity \
           FROM dropstock.reserve_items($1, $2, $3, $4)",
        &[
            (&drop_id, Type::UUID),
            (&buyers, Type::UUID_ARRAY),
            (&variants, Type::TEXT_ARRAY),
            (&quantities, Type::INT4_ARRAY),
        ]
    )?;
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

/// Begins a transaction and takes one of the drop's `turns` batch turns in it if one is free, without
/// waiting: false, with the transaction open, when every turn is taken (then `wait_for_batch_turn`, or
/// `end_transaction`). One round trip: both statements in one simple query, which a pooler in
/// transaction mode passes as it is.
pub async fn begin_batch(
    client: &Connection,
    drop_id: Uuid,
    turn: usize,
    turns: usize,
) -> Result<bool, DbError> {
    // Marked first: if this call fails or never finishes, the connection is not pooled again.
    client.set_in_transaction(true);
    let sql =
        format!("BEGIN; SELECT dropstock.take_batch_turn('{drop_id}', {turn}, {turns}, false)");
    let messages = client.call(client.simple_query(&sql)).await?;
    Ok(messages.iter().any(|message| match message {
        SimpleQueryMessage::Row(row) => row.get(0).is_some(),
        _ => false,
    }))
}

/// Says that this adapter (`caller`) batches the drop's reservations, and asks how many of its `turns`
/// batch turns to keep in use: the adapters that batch it share them.
pub async fn share_batch_turns(
    client: &Connection,
    drop_id: Uuid,
    caller: Uuid,
    turns: usize,
) -> Result<usize, DbError> {
    let turns = i32::try_from(turns).map_err(|_| DbError::Shape(format!("{turns} turns")))?;
    let rows = call!(
        client,
        "SELECT dropstock.share_batch_turns($1, $2, $3)",
        &[
            (&drop_id, Type::UUID),
            (&caller, Type::UUID),
            (&turns, Type::INT4)
        ]
    )?;
    let share: i32 = only(rows)?.try_get(0)?;
    usize::try_from(share).map_err(|_| DbError::Shape(format!("a share of {share} turns")))
}

/// In the transaction `begin_batch` began: takes a turn that has freed since, or waits for `turn`.
pub async fn wait_for_batch_turn(
    client: &Connection,
    drop_id: Uuid,
    turn: usize,
    turns: usize,
) -> Result<(), DbError> {
    let sql = format!("SELECT dropstock.take_batch_turn('{drop_id}', {turn}, {turns})");
    client.call(client.batch_execute(&sql)).await
}

/// Commits (or, when `commit` is false, rolls back) the transaction `begin_batch` began. COMMIT of
/// a transaction an error ended rolls it back, as ROLLBACK would.
pub async fn end_transaction(client: &Connection, commit: bool) -> Result<(), DbError> {
    client
        .call(client.batch_execute(if commit { "COMMIT" } else { "ROLLBACK" }))
        .await?;
    client.set_in_transaction(false);
    Ok(())
}

/// Whether a batch the database rolled back is worth sending again, turn and all: a deadlock or a
/// serialization failure (see `retry_again`), or a statement cached before the extension's types
/// changed (`call!` has emptied the cache, so the next attempt prepares it again).
pub fn worth_again(error: &tokio_postgres::Error) -> bool {
    statement_outdated(error) || rolled_back(error)
}

/// Whether PostgreSQL rolled the call back for a serialization failure (40001) or a deadlock (40P01):
/// the same call made again may succeed.
fn rolled_back(error: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    matches!(
        error.code(),
        Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED
    )
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
    client: &Connection,
    change: HoldChange,
    hold_id: Uuid,
    buyer: Uuid,
) -> Result<HoldView, DbError> {
    let function = match change {
        HoldChange::Cancel => "cancel_reservation",
        HoldChange::Extend => "extend_hold",
    };
    let sql = format!("SELECT {HOLD_COLUMNS}, {UNITS_COLUMNS} FROM dropstock.{function}($1, $2) r");
    let rows = call!(
        client,
        &sql,
        &[(&hold_id, Type::UUID), (&buyer, Type::UUID)]
    )?;
    hold_view(&only(rows)?)
}

/// The labels of a sized drop's sizes, element i - 1 for variant i (none for a drop without sizes).
pub async fn variant_labels(client: &Connection, drop_id: Uuid) -> Result<Vec<String>, DbError> {
    let rows = call!(
        client,
        "SELECT label FROM dropstock.variant_status($1) WHERE variant > 0 ORDER BY variant",
        &[(&drop_id, Type::UUID)]
    )?;
    Ok(rows
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?)
}

/// Calls `drop_buyers`: who holds or bought units of the drop (the sold-out shortcut's exceptions).
pub async fn drop_buyers(client: &Connection, drop_id: Uuid) -> Result<Vec<Uuid>, DbError> {
    let rows = call!(
        client,
        "SELECT b FROM dropstock.drop_buyers($1) AS b",
        &[(&drop_id, Type::UUID)]
    )?;
    Ok(rows
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?)
}

/// Calls `purchase`: the buyer turns their hold into a sale.
pub async fn buy(client: &Connection, hold_id: Uuid, buyer: Uuid) -> Result<SaleView, DbError> {
    let sql = format!(
        "SELECT r.id, r.reservation_id, r.drop_id, r.user_id, r.price::float8, r.created_at, {UNITS_COLUMNS} \
           FROM dropstock.purchase($1, $2) r"
    );
    let row = only(call!(
        client,
        &sql,
        &[(&hold_id, Type::UUID), (&buyer, Type::UUID)]
    )?)?;
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

/// Whether the server refused a cached statement because what it returns changed type ("cached plan
/// must not change result type"): the extension was created again, and its types have new ids.
fn statement_outdated(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED)
}

/// How many times a call that failed with a serialization failure or a deadlock is made again.
const TRANSIENT_ATTEMPTS: usize = 3;

/// Whether to make a call again that PostgreSQL ended with a serialization failure (40001) or a
/// deadlock (40P01), counting the attempt. The extension's lock order makes both impossible through
/// its API; this keeps one from ever reaching a buyer should an operator's own transaction get in the
/// way. Every call retried this way is safe to repeat: reserving again returns the hold made, buying
/// again the sale made, cancelling again the hold as it is.
fn retry_again(error: &tokio_postgres::Error, attempt: &mut usize) -> bool {
    if !rolled_back(error) || *attempt >= TRANSIENT_ATTEMPTS {
        return false;
    }
    tracing::warn!(%error, attempt = *attempt, "retrying a call the database rolled back");
    *attempt += 1;
    true
}
