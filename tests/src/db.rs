//! The database side of the tests: connections to the test cluster (`make test` makes one per run), fresh
//! buyers and drops with unique names (tests share one database), holds, the stock invariant read from a
//! real client, SQLSTATEs, polling with a deadline, and a LISTEN connection on the worker's channel.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::{FromSqlOwned, ToSql};
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

/// `DATABASE_URL`, by default the test cluster (`make test-db`), never the one `make run` uses: tests
/// leave drops behind and some stop the server.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5545/postgres".into())
}

/// One real connection to `url`. Its driver runs on its own task, whose handle finishes when the
/// connection has closed (a test that drops a database waits for that).
pub async fn connect_to(
    url: &str,
) -> Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, driver))
}

/// One real connection to the test cluster.
pub async fn connect() -> Client {
    let url = database_url();
    match connect_to(&url).await {
        Ok((client, _)) => client,
        Err(e) => panic!("cannot reach {url} (run `make test-db`): {e}"),
    }
}

/// `n` connections opened at once, shared so that racing tasks can each take one or take turns.
pub async fn connect_many(n: usize) -> Vec<Arc<Client>> {
    futures_util::future::join_all((0..n).map(|_| async { Arc::new(connect().await) })).await
}

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", Uuid::new_v4().simple())
}

pub async fn new_buyer(db: &Client) -> Uuid {
    db.query_one(
        "SELECT id FROM dropstock.create_user($1)",
        &[&unique("buyer")],
    )
    .await
    .expect("create_user")
    .get(0)
}

/// `n` buyers in one statement (creating thousands one call at a time would take longer than the test).
pub async fn new_buyers(db: &Client, n: usize) -> Vec<Uuid> {
    let prefix = unique("crowd");
    db.query(
        "INSERT INTO dropstock.users (username) SELECT $1 || '-' || i FROM generate_series(1, $2) i RETURNING id",
        &[&prefix, &(n as i32)],
    )
    .await
    .expect("insert buyers")
    .iter()
    .map(|row| row.get(0))
    .collect()
}

/// `n` new buyers' ids as the JSON API spells them, for tests that act through the adapter.
pub async fn new_buyer_ids(db: &Client, n: usize) -> Vec<String> {
    new_buyers(db, n)
        .await
        .into_iter()
        .map(|id| id.to_string())
        .collect()
}

/// An open drop (started a minute ago).
pub async fn new_drop(db: &Client, stock: i32, hold_seconds: i32) -> Uuid {
    db.query_one(
        "SELECT id FROM dropstock.create_drop($1, 10, $2, now() - interval '1 minute', $3)",
        &[&unique("drop"), &stock, &hold_seconds],
    )
    .await
    .expect("create_drop")
    .get(0)
}

/// An open sized drop (started a minute ago, holds of an hour): `sizes` is the variants object, e.g.
/// `{"US 8": 10, "US 9": 10}`.
pub async fn new_sized_drop(db: &Client, sizes: &str, per_buyer_limit: i32) -> Uuid {
    db.query_one(
        "SELECT id FROM dropstock.create_drop($1, 10, NULL, now() - interval '1 minute', 3600, $2, NULL, $3::text::jsonb)",
        &[&unique("sized drop"), &per_buyer_limit, &sizes],
    )
    .await
    .expect("create_drop with variants")
    .get(0)
}

/// `buyer`'s hold on `drop`, which the test expects to be granted.
pub async fn reserve(db: &Client, drop: Uuid, buyer: Uuid) -> Uuid {
    db.query_one(
        "SELECT id FROM dropstock.reserve_item($1, $2)",
        &[&drop, &buyer],
    )
    .await
    .expect("reserve_item")
    .get(0)
}

/// Each of `buyers` (a buyer may repeat) calls `reserve_item` once, on `connections` in turn, all
/// released at the same instant; the hold each got, or its refusal's SQLSTATE, in the order of `buyers`.
pub async fn race_reserve(
    connections: &[Arc<Client>],
    drop: Uuid,
    buyers: &[Uuid],
) -> Vec<Result<Uuid, String>> {
    let start = Arc::new(tokio::sync::Barrier::new(buyers.len()));
    let racers = buyers
        .iter()
        .zip(connections.iter().cycle())
        .map(|(buyer, db)| {
            let (db, start, buyer) = (db.clone(), start.clone(), *buyer);
            tokio::spawn(async move {
                start.wait().await;
                db.query_one(
                    "SELECT id FROM dropstock.reserve_item($1, $2)",
                    &[&drop, &buyer],
                )
                .await
                .map(|row| row.get::<_, Uuid>(0))
                .map_err(|e| sqlstate(&e))
            })
        });
    futures_util::future::join_all(racers)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

/// The first two columns of every row `sql` returns, as pairs (collected into a Vec or a map).
pub async fn pairs<A, B, C>(db: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> C
where
    A: FromSqlOwned,
    B: FromSqlOwned,
    C: FromIterator<(A, B)>,
{
    db.query(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// (available, held, sold) as the API reports them.
pub async fn stock(db: &Client, drop: Uuid) -> (i32, i32, i32) {
    let row = db
        .query_one(
            "SELECT available_stock, held_stock, sold_stock FROM dropstock.drop_status($1)",
            &[&drop],
        )
        .await
        .expect("drop_status");
    (row.get(0), row.get(1), row.get(2))
}

/// available + units of live holds + units sold = total, nothing negative, and the striped counters
/// agree with the rows they stand for: for the drop, and for each of its variants.
pub async fn assert_invariant(db: &Client, drop: Uuid) {
    let rows = db
        .query(
            "SELECT v.label, v.total_stock, v.available_stock, v.held_stock, v.sold_stock,
                    (SELECT coalesce(sum(r.quantity), 0)::int FROM dropstock.reservations r
                      WHERE r.drop_id = $1 AND r.variant = v.variant AND r.status = 'reserved'),
                    (SELECT coalesce(sum(p.quantity), 0)::int FROM dropstock.purchases p
                      WHERE p.drop_id = $1 AND p.variant = v.variant),
                    (SELECT count(*)::int FROM dropstock.stock_slots t
                      WHERE t.drop_id = $1 AND t.variant = v.variant AND (t.available < 0 OR t.sold < 0))
               FROM dropstock.variant_status($1) v
             UNION ALL
             SELECT 'the drop', s.total_stock, s.available_stock, s.held_stock, s.sold_stock,
                    (SELECT coalesce(sum(r.quantity), 0)::int FROM dropstock.reservations r
                      WHERE r.drop_id = s.id AND r.status = 'reserved'),
                    (SELECT coalesce(sum(p.quantity), 0)::int FROM dropstock.purchases p WHERE p.drop_id = s.id),
                    0
               FROM dropstock.drop_status($1) s",
            &[&drop],
        )
        .await
        .expect("invariant query");
    for row in rows {
        let part: Option<String> = row.get(0);
        let part = part.unwrap_or_else(|| "the drop's one variant".to_owned());
        let (total, available, held, sold): (i32, i32, i32, i32) =
            (row.get(1), row.get(2), row.get(3), row.get(4));
        let (live_units, sold_units, negative_slots): (i32, i32, i32) =
            (row.get(5), row.get(6), row.get(7));
        assert_eq!(
            available + live_units + sold_units,
            total,
            "{part}: available + held units + sold units = total"
        );
        assert_eq!(
            (held, sold),
            (live_units, sold_units),
            "{part}: striped counters match the rows"
        );
        assert!(
            available >= 0 && negative_slots == 0,
            "{part}: no negative stock"
        );
    }
}

/// The SQLSTATE of a failed call, e.g. "DS020".
pub fn sqlstate(error: &tokio_postgres::Error) -> String {
    error
        .code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {error}"))
}

/// Polls `probe` every 20 ms until it gives a value or `limit` passes (then None).
pub async fn wait_for<T, F, Fut>(limit: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `condition` until it holds or `limit` passes; returns whether it held.
pub async fn wait_until<F, Fut>(limit: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(limit, || {
        let holds = condition();
        async move { holds.await.then_some(()) }
    })
    .await
    .is_some()
}

/// A connection that LISTENs on the worker's channel; its notifications arrive as parsed JSON.
pub struct Listener {
    pub client: Client,
    pub notifications: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    /// The byte length of the longest payload received so far, as PostgreSQL sent it.
    pub longest_payload: Arc<std::sync::atomic::AtomicUsize>,
}

/// A Listener on the test cluster.
pub async fn listen() -> Listener {
    listen_at(&database_url()).await
}

/// A Listener on the database at `url`.
pub async fn listen_at(url: &str) -> Listener {
    use futures_util::StreamExt;
    let (client, mut connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect the listener");
    let (sender, notifications) = tokio::sync::mpsc::unbounded_channel();
    let longest_payload = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let longest = longest_payload.clone();
    // A LISTEN connection delivers nothing unless its messages are polled.
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                longest.fetch_max(n.payload().len(), std::sync::atomic::Ordering::Relaxed);
                let payload = serde_json::from_str(n.payload()).expect("payloads are JSON");
                if sender.send(payload).is_err() {
                    break;
                }
            }
        }
    });
    client
        .batch_execute("LISTEN dropstock")
        .await
        .expect("LISTEN");
    Listener {
        client,
        notifications,
        longest_payload,
    }
}

impl Listener {
    /// The next notification about each of `drops`, for those whose notification comes within
    /// `limit` (notifications about other drops are passed over).
    pub async fn next_for_each(
        &mut self,
        drops: &[Uuid],
        limit: Duration,
    ) -> std::collections::HashMap<Uuid, serde_json::Value> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut heard = std::collections::HashMap::new();
        while heard.len() < drops.len() {
            let Ok(Some(note)) = tokio::time::timeout_at(deadline, self.notifications.recv()).await
            else {
                break;
            };
            if let Some(drop) = drops.iter().find(|d| note["dropId"] == d.to_string()) {
                heard.entry(*drop).or_insert(note);
            }
        }
        heard
    }

    /// The next notification about `drop`, if one comes within `limit`.
    pub async fn next_for(&mut self, drop: Uuid, limit: Duration) -> Option<serde_json::Value> {
        self.next_for_each(&[drop], limit).await.remove(&drop)
    }
}
