//! The connection pool and one function per SQL call the API makes. Every decision (stock, limits,
//! expiry, ownership) is made by the extension; this module only passes arguments and reads rows.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::{NoTls, Row};
use uuid::Uuid;

use crate::db::models::{DropView, HoldView, NewDrop, RecentPurchases, SaleView, UserView};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
}

/// Why the adapter cannot start; each is printed as one line before a non-zero exit.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    BadUrl(tokio_postgres::Error),
    #[error("cannot build the connection pool: {0}")]
    Pool(String),
    #[error("cannot reach the database at {target}: {reason}")]
    Unreachable { target: String, reason: String },
    #[error(
        "the dropstock extension is not installed in database {database}; run CREATE EXTENSION dropstock there first"
    )]
    NoExtension { database: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// The waits a request may spend on the database before it gets a 503 rather than hanging.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);

pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, StartupError> {
    let mut config = tokio_postgres::Config::from_str(url).map_err(StartupError::BadUrl)?;
    config.connect_timeout(CONNECT_TIMEOUT);
    // TCP keepalives let a connection to a vanished server fail instead of waiting forever.
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(30));
    Ok(config)
}

/// Where the database is, for messages: host, port and database name, never the password.
pub fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{database}")
}

pub fn pool(config: &tokio_postgres::Config, size: usize) -> Result<Pool, StartupError> {
    let mut config = config.clone();
    config.application_name("dropstock-http");
    let manager = Manager::from_config(
        config,
        NoTls,
        // Fast recycling skips a round trip per checkout; a connection the server closed is noticed by
        // `is_closed` and replaced, and a query on one that died unnoticed answers 503 once.
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(CHECKOUT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|error| StartupError::Pool(error.to_string()))
}

/// The startup check: the database answers and the extension is installed in it.
pub async fn check(pool: &Pool, config: &tokio_postgres::Config) -> Result<(), StartupError> {
    let unreachable = |reason: String| StartupError::Unreachable {
        target: describe(config),
        reason,
    };
    let client = pool.get().await.map_err(|error| {
        unreachable(match error {
            PoolError::Backend(error) => first_line(&error),
            PoolError::Timeout(_) => format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
            other => first_line(&other),
        })
    })?;
    if !extension_installed(&client)
        .await
        .map_err(|error| unreachable(first_line(&error)))?
    {
        return Err(StartupError::NoExtension {
            database: config.get_dbname().unwrap_or("postgres").to_owned(),
        });
    }
    Ok(())
}

/// deadpool and tokio-postgres say "error connecting to server" and keep the reason (connection refused,
/// timed out) in the source chain; the one-line startup error names both so it says what to fix.
fn first_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub async fn extension_installed(client: &Object) -> Result<bool, DbError> {
    let statement = client
        .prepare_cached(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'dropstock')",
        )
        .await?;
    Ok(client.query_one(&statement, &[]).await?.get(0))
}

pub async fn connection(pool: &Pool) -> Result<Object, DbError> {
    Ok(pool.get().await?)
}

/// The columns of `dropstock.drop_summaries`, with the price as float8: JSON has only one kind of number,
/// and prices of at most 12 digits with 2 decimals survive the trip exactly.
const SUMMARY_COLUMNS: &str =
    "id, name, price::float8, total_stock, available_stock, held_stock, sold_stock, \
     starts_at, ends_at, hold_seconds, per_user_limit, created_at, recent_purchases";

fn drop_view(row: &Row) -> Result<DropView, tokio_postgres::Error> {
    let purchases: RecentPurchases = row.try_get(12)?;
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
        per_user_limit: row.try_get(10)?,
        created_at: row.try_get(11)?,
        purchases: purchases.0.into_iter().map(Into::into).collect(),
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
/// extension's defaults. At most eight spellings of the call exist, each prepared once per connection.
pub async fn create_drop(client: &Object, drop: &NewDrop) -> Result<DropView, DbError> {
    let mut arguments = vec![
        "name => $1".to_owned(),
        "price => $2::text::numeric".to_owned(),
        "total_stock => $3".to_owned(),
    ];
    let mut values: Vec<&(dyn postgres_types::ToSql + Sync)> =
        vec![&drop.name, &drop.price, &drop.total_stock];
    let optional: [(&str, Option<&(dyn postgres_types::ToSql + Sync)>); 4] = [
        ("starts_at", drop.starts_at.as_ref().map(|v| v as _)),
        ("ends_at", drop.ends_at.as_ref().map(|v| v as _)),
        ("hold_seconds", drop.hold_seconds.as_ref().map(|v| v as _)),
        (
            "per_user_limit",
            drop.per_user_limit.as_ref().map(|v| v as _),
        ),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            values.push(value);
            arguments.push(format!("{name} => ${}", values.len()));
        }
    }
    let statement = client
        .prepare_cached(&format!(
            "SELECT d.id, d.name, d.price::float8, d.total_stock, d.total_stock, 0, 0, d.starts_at, d.ends_at, \
                    d.hold_seconds, d.per_user_limit, d.created_at, \
                    '{{}}'::dropstock.recent_purchase[] \
               FROM dropstock.create_drop({}) d",
            arguments.join(", ")
        ))
        .await?;
    Ok(drop_view(&client.query_one(&statement, &values).await?)?)
}

pub async fn create_user(client: &Object, username: &str) -> Result<UserView, DbError> {
    let statement = client
        .prepare_cached("SELECT u.id, u.username, u.created_at FROM dropstock.create_user($1) u")
        .await?;
    let row = client.query_one(&statement, &[&username]).await?;
    Ok(UserView {
        id: row.try_get(0)?,
        username: row.try_get(1)?,
        created_at: row.try_get(2)?,
    })
}

fn hold_view(row: &Row) -> Result<HoldView, tokio_postgres::Error> {
    Ok(HoldView {
        id: row.try_get(0)?,
        drop_id: row.try_get(1)?,
        user_id: row.try_get(2)?,
        status: row.try_get(3)?,
        expires_at: row.try_get(4)?,
        created_at: row.try_get(5)?,
    })
}

/// One buyer's row from `reserve_items`: their hold (id, expiry, creation, whether it is new) or their
/// refusal's SQLSTATE and message.
pub struct BatchAnswer {
    pub user_id: Uuid,
    pub hold: Option<(Uuid, DateTime<Utc>, DateTime<Utc>, bool)>,
    pub sqlstate: Option<String>,
    pub message: Option<String>,
}

/// Reserves for many buyers of one drop in one transaction (see `batch`).
pub async fn reserve_batch(
    client: &Object,
    drop_id: Uuid,
    buyers: &[Uuid],
) -> Result<Vec<BatchAnswer>, DbError> {
    let statement = client
        .prepare_cached(
            "SELECT user_id, reservation_id, expires_at, created_at, fresh, sqlstate, message \
               FROM dropstock.reserve_items($1, $2)",
        )
        .await?;
    let rows = {
        let mut attempt = 1;
        loop {
            match client.query(&statement, &[&drop_id, &buyers]).await {
                Err(error) if retry_again(&error, &mut attempt) => continue,
                outcome => break outcome?,
            }
        }
    };
    rows.iter()
        .map(|row| {
            let hold = match row.try_get::<_, Option<Uuid>>(1)? {
                Some(id) => Some((id, row.try_get(2)?, row.try_get(3)?, row.try_get(4)?)),
                None => None,
            };
            Ok(BatchAnswer {
                user_id: row.try_get(0)?,
                hold,
                sqlstate: row.try_get(5)?,
                message: row.try_get(6)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(DbError::from)
}

pub async fn cancel(client: &Object, hold_id: Uuid, user_id: Uuid) -> Result<HoldView, DbError> {
    let statement = client
        .prepare_cached(
            "SELECT r.id, r.drop_id, r.user_id, r.status, r.expires_at, r.created_at \
               FROM dropstock.cancel_reservation($1, $2) r",
        )
        .await?;
    let row = {
        let mut attempt = 1;
        loop {
            match client.query_one(&statement, &[&hold_id, &user_id]).await {
                Err(error) if retry_again(&error, &mut attempt) => continue,
                outcome => break outcome?,
            }
        }
    };
    Ok(hold_view(&row)?)
}

pub async fn purchase(client: &Object, hold_id: Uuid, user_id: Uuid) -> Result<SaleView, DbError> {
    let statement = client
        .prepare_cached(
            "SELECT p.id, p.reservation_id, p.drop_id, p.user_id, p.price::float8, p.created_at \
               FROM dropstock.purchase($1, $2) p",
        )
        .await?;
    let row = {
        let mut attempt = 1;
        loop {
            match client.query_one(&statement, &[&hold_id, &user_id]).await {
                Err(error) if retry_again(&error, &mut attempt) => continue,
                outcome => break outcome?,
            }
        }
    };
    Ok(SaleView {
        id: row.try_get(0)?,
        reservation_id: row.try_get(1)?,
        drop_id: row.try_get(2)?,
        user_id: row.try_get(3)?,
        price: row.try_get(4)?,
        created_at: row.try_get(5)?,
    })
}

/// How many times a call that failed with a serialization failure or a deadlock is made again.
const TRANSIENT_ATTEMPTS: usize = 3;

/// Whether to make a call again that PostgreSQL ended with a serialization failure (40001) or a
/// deadlock (40P01), counting the attempt. The extension's lock order makes both impossible through
/// its API; this keeps one from ever reaching a buyer should an operator's own transaction get in the
/// way. Every call retried this way is safe to repeat: a repeated reservation returns the hold made,
/// a purchase the sale made, a cancel the hold as it is.
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
