//! What a load run needs in the database and checks there afterwards, over one superuser connection:
//! buyers made in bulk with SQL (creating thousands through `POST /api/users` would take longer than the
//! run), fresh drops, and the stock invariant.

use std::fmt;

use tokio_postgres::Client;
use uuid::Uuid;

pub async fn connect(database_url: &str) -> Result<Client, String> {
    let (client, _) = crate::db::connect_to(database_url)
        .await
        .map_err(|error| format!("cannot connect to {database_url}: {error}"))?;
    Ok(client)
}

fn sql(context: &str) -> impl Fn(tokio_postgres::Error) -> String + '_ {
    move |error| match error.as_db_error() {
        Some(db) => format!("{context}: {} ({})", db.message(), db.code().code()),
        None => format!("{context}: {error}"),
    }
}

/// The ids of buyers `load-1` … `load-<count>`, creating the missing ones. Every drop a run uses is new,
/// so the same buyers serve every run.
pub async fn buyers(client: &Client, count: usize) -> Result<Vec<Uuid>, String> {
    let count = i64::try_from(count).map_err(|_| "too many buyers".to_owned())?;
    // They are made in one statement, so when the last one exists all do.
    let made: bool = client
        .query_one(
            "SELECT EXISTS (SELECT FROM dropstock.users WHERE username = 'load-' || $1::bigint)",
            &[&count],
        )
        .await
        .map_err(sql("looking for buyers"))?
        .get(0);
    if !made {
        client
            .execute(
                "INSERT INTO dropstock.users (username) \
             SELECT 'load-' || k FROM generate_series(1, $1::bigint) AS k \
             ON CONFLICT (username) DO NOTHING",
                &[&count],
            )
            .await
            .map_err(sql("creating buyers"))?;
    }
    let rows = client
        .query(
            "SELECT u.id FROM generate_series(1, $1::bigint) AS k \
             JOIN dropstock.users u ON u.username = 'load-' || k ORDER BY k",
            &[&count],
        )
        .await
        .map_err(sql("reading buyers"))?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// A drop open since a minute ago whose holds last an hour, so none falls due while a run measures it.
pub async fn create_drop(client: &Client, name: &str, stock: i32) -> Result<Uuid, String> {
    let row = client
        .query_one(
            "SELECT id FROM dropstock.create_drop($1, 1, $2, now() - interval '1 minute', 3600)",
            &[&name, &stock],
        )
        .await
        .map_err(sql("creating a drop"))?;
    Ok(row.get(0))
}

/// Ends a drop, so the background worker stops looking at it.
pub async fn end_drop(client: &Client, drop_id: Uuid) -> Result<(), String> {
    client
        .execute(
            "UPDATE dropstock.drops SET ends_at = now() WHERE id = $1 AND ends_at IS NULL",
            &[&drop_id],
        )
        .await
        .map_err(sql("ending a drop"))?;
    Ok(())
}

/// A drop's stock as the database tells it, and its holds counted row by row.
#[derive(Debug, Clone, Copy)]
pub struct Stock {
    pub total: i64,
    pub available: i64,
    pub held: i64,
    pub sold: i64,
    /// Live holds in `reservations` (status `reserved`).
    pub held_rows: i64,
    /// Purchases in `purchases`.
    pub sold_rows: i64,
    /// Buyers holding or having bought more than one unit of the drop (the limit is one per buyer).
    pub over_limit_buyers: i64,
}

pub async fn stock(client: &Client, drop_id: Uuid) -> Result<Stock, String> {
    let row = client
        .query_one(
            "SELECT s.total_stock::int8, s.available_stock::int8, s.held_stock::int8, s.sold_stock::int8, \
                    (SELECT count(*) FROM dropstock.reservations r \
                      WHERE r.drop_id = s.id AND r.status = 'reserved'), \
                    (SELECT count(*) FROM dropstock.purchases p WHERE p.drop_id = s.id), \
                    (SELECT count(*) FROM (SELECT r.user_id FROM dropstock.reservations r \
                      WHERE r.drop_id = s.id AND r.status IN ('reserved', 'purchased') \
                      GROUP BY r.user_id HAVING count(*) > 1) AS twice) \
               FROM dropstock.drop_status($1) s",
            &[&drop_id],
        )
        .await
        .map_err(sql("reading the drop's stock"))?;
    Ok(Stock {
        total: row.get(0),
        available: row.get(1),
        held: row.get(2),
        sold: row.get(3),
        held_rows: row.get(4),
        sold_rows: row.get(5),
        over_limit_buyers: row.get(6),
    })
}

/// What the database says against what the clients were told.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub oversold: i64,
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ok() {
            write!(f, "ok")
        } else {
            write!(f, "BROKEN: {}", self.problems.join("; "))
        }
    }
}

/// Checks a drop after a run: `before` is its stock before the first request, `fresh_holds` the number
/// of 201 answers and `purchases` the number of sales the clients were told about.
pub fn verdict(before: Stock, after: Stock, fresh_holds: u64, purchases: u64) -> Verdict {
    let mut problems = Vec::new();
    let fresh = fresh_holds as i64;
    let taken = before.available - after.available;
    if after.available + after.held + after.sold != after.total {
        problems.push(format!(
            "available {} + held {} + sold {} != total {}",
            after.available, after.held, after.sold, after.total
        ));
    }
    if after.available < 0 || after.held < 0 || after.sold < 0 {
        problems.push("a negative stock count".to_owned());
    }
    if taken != fresh {
        problems.push(format!(
            "{fresh} new holds answered (201) but available stock fell by {taken}"
        ));
    }
    if after.held + after.sold - before.held - before.sold != fresh {
        problems.push(format!(
            "{fresh} new holds answered but held + sold grew by {}",
            after.held + after.sold - before.held - before.sold
        ));
    }
    if after.held_rows != after.held || after.sold_rows != after.sold {
        problems.push(format!(
            "held {} / sold {} in the counts, {} / {} rows",
            after.held, after.sold, after.held_rows, after.sold_rows
        ));
    }
    if after.sold - before.sold != purchases as i64 {
        problems.push(format!(
            "{purchases} purchases answered but sold stock grew by {}",
            after.sold - before.sold
        ));
    }
    if after.over_limit_buyers > 0 {
        problems.push(format!(
            "{} buyers hold more than one unit",
            after.over_limit_buyers
        ));
    }
    // Units promised beyond the drop's stock: by the answers given and by the rows written.
    let oversold = (fresh - before.available)
        .max(after.held + after.sold - after.total)
        .max(0);
    if oversold > 0 {
        problems.push(format!("{oversold} units oversold"));
    }
    Verdict { oversold, problems }
}
