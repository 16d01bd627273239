//! Honest shoppers for the fault tests: buyers that reserve and buy through a real adapter while
//! remembering every answer they were given, and the audit that compares those answers with the rows.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::adapter::{id, Adapter};
use crate::db::{pairs, unique};

/// What the load's buyers were told, and what happened to their requests.
#[derive(Default, Debug)]
pub struct Tally {
    pub requests: u64,
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no HTTP answer (connection refused or reset, timed out).
    pub transport_errors: u64,
    /// Of those, requests that hung until the client's own timeout.
    pub timeouts: u64,
    /// Holds the buyers were given (201 or 200), by id.
    pub holds: HashSet<String>,
    /// Sales the buyers were told about ("Purchased successfully"): hold id → sale id.
    pub sales: HashMap<String, String>,
    /// Holds whose purchase never got a definite answer before the load stopped.
    pub undecided: HashSet<String>,
    /// Holds the buyers cancelled and were told so.
    pub cancelled: HashSet<String>,
    /// Answers the load did not expect (status, body), first few.
    pub unexpected: Vec<String>,
    pub slowest: Duration,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.requests += other.requests;
        for (status, count) in other.statuses {
            *self.statuses.entry(status).or_default() += count;
        }
        self.transport_errors += other.transport_errors;
        self.timeouts += other.timeouts;
        self.holds.extend(other.holds);
        self.sales.extend(other.sales);
        self.undecided.extend(other.undecided);
        self.cancelled.extend(other.cancelled);
        self.unexpected
            .extend(other.unexpected.into_iter().take(10));
        self.slowest = self.slowest.max(other.slowest);
    }

    pub fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }
}

/// How a request ended, from the buyer's side.
enum Answer {
    Http(u16, Value),
    /// No answer: the request may or may not have reached the database.
    Lost,
}

/// Honest buyers reserving and buying through the adapter at `base` (which a test may repoint, as a load
/// balancer would after a restart). Each task walks its own buyers in turn, so no buyer acts more than
/// a few times a second. An unanswered purchase is retried, as a careful client would, until it is
/// decided: a retry returns the same sale, so nothing is bought twice.
pub struct Load {
    pub base: Arc<RwLock<String>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
    pub started: Instant,
}

/// Per request: long enough for any honest answer (503 comes within the pool's 5 s wait), short enough
/// that a hang is seen as one.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);

impl Load {
    /// `tasks` concurrent clients over `buyers` (ids), on `drop`.
    pub fn start(base: &str, drop: &str, buyers: Vec<String>, tasks: usize) -> Load {
        let base = Arc::new(RwLock::new(base.to_owned()));
        let stop = Arc::new(AtomicBool::new(false));
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(tasks)
            .build()
            .unwrap();
        let per_task = buyers.len().div_ceil(tasks);
        let handles = buyers
            .chunks(per_task)
            .enumerate()
            .map(|(task, chunk)| {
                let (base, stop, http) = (base.clone(), stop.clone(), http.clone());
                let (drop, chunk) = (drop.to_owned(), chunk.to_vec());
                tokio::spawn(async move { shop(task, http, base, stop, drop, chunk).await })
            })
            .collect();
        Load {
            base,
            stop,
            tasks: handles,
            started: Instant::now(),
        }
    }

    pub fn point_at(&self, base: &str) {
        *self.base.write().unwrap() = base.to_owned();
    }

    /// Stops the buyers and adds up what they were told.
    pub async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        let mut tally = Tally::default();
        for task in self.tasks {
            tally.merge(task.await.expect("a load task panicked"));
        }
        tally
    }
}

async fn send(http: &reqwest::Client, url: String, body: Value, tally: &mut Tally) -> Answer {
    let started = Instant::now();
    tally.requests += 1;
    let outcome = http.post(url).json(&body).send().await;
    let answer = match outcome {
        Ok(response) => {
            let status = response.status().as_u16();
            match response.text().await {
                Ok(text) => Answer::Http(
                    status,
                    serde_json::from_str(&text).unwrap_or(Value::String(text)),
                ),
                Err(error) => {
                    tally.timeouts += u64::from(error.is_timeout());
                    Answer::Lost
                }
            }
        }
        Err(error) => {
            tally.timeouts += u64::from(error.is_timeout());
            Answer::Lost
        }
    };
    match &answer {
        Answer::Http(status, _) => *tally.statuses.entry(*status).or_default() += 1,
        Answer::Lost => tally.transport_errors += 1,
    }
    tally.slowest = tally.slowest.max(started.elapsed());
    answer
}

/// While the database or the adapter is away, a buyer waits before trying again: 50 ms, doubling up to
/// 1 s, as a client that respects the service would.
async fn pause(attempt: &mut u32) {
    let wait = Duration::from_millis(50) * (1u32 << (*attempt).min(4));
    *attempt += 1;
    tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
}

async fn shop(
    task: usize,
    http: reqwest::Client,
    base: Arc<RwLock<String>>,
    stop: Arc<AtomicBool>,
    drop: String,
    buyers: Vec<String>,
) -> Tally {
    let url = |path: &str| format!("{}{path}", base.read().unwrap());
    let mut tally = Tally::default();
    let mut turn = task;
    let mut attempt = 0;
    'buyers: while !stop.load(Ordering::SeqCst) {
        turn += 1;
        let buyer = &buyers[turn % buyers.len()];
        let hold = match send(
            &http,
            url("/api/reservations"),
            json!({"dropId": drop, "userId": buyer}),
            &mut tally,
        )
        .await
        {
            Answer::Http(200 | 201, body) => {
                attempt = 0;
                body["data"]["id"].as_str().unwrap().to_owned()
            }
            Answer::Http(503, _) | Answer::Lost => {
                pause(&mut attempt).await;
                continue;
            }
            Answer::Http(status, body) => {
                tally.unexpected.push(format!("reserve: {status} {body}"));
                pause(&mut attempt).await;
                continue;
            }
        };
        tally.holds.insert(hold.clone());
        // One hold in eight is given back; the rest are bought.
        if turn.is_multiple_of(8) {
            let path = format!("/api/reservations/{hold}/cancel");
            loop {
                match send(&http, url(&path), json!({"userId": buyer}), &mut tally).await {
                    Answer::Http(200, _) => {
                        tally.cancelled.insert(hold);
                        continue 'buyers;
                    }
                    Answer::Http(503, _) | Answer::Lost if !stop.load(Ordering::SeqCst) => {
                        pause(&mut attempt).await
                    }
                    Answer::Http(503, _) | Answer::Lost => continue 'buyers,
                    Answer::Http(status, body) => {
                        tally.unexpected.push(format!("cancel: {status} {body}"));
                        continue 'buyers;
                    }
                }
            }
        }
        // A purchase that got no answer is retried until decided, even after the load is told to stop
        // (within a bound), so that what the buyer believes is definite.
        let give_up = Instant::now() + Duration::from_secs(30);
        let mut retry = 0;
        loop {
            match send(
                &http,
                url("/api/purchases"),
                json!({"userId": buyer, "reservationId": hold}),
                &mut tally,
            )
            .await
            {
                Answer::Http(200, body) => {
                    let sale = body["data"]["id"].as_str().unwrap().to_owned();
                    if let Some(earlier) = tally.sales.insert(hold.clone(), sale.clone()) {
                        assert_eq!(earlier, sale, "a retried purchase returns the same sale");
                    }
                    break;
                }
                Answer::Http(503, _) | Answer::Lost if Instant::now() < give_up => {
                    pause(&mut retry).await
                }
                Answer::Http(503, _) | Answer::Lost => {
                    tally.undecided.insert(hold);
                    break;
                }
                Answer::Http(status, body) => {
                    tally.unexpected.push(format!("purchase: {status} {body}"));
                    break;
                }
            }
        }
    }
    tally
}

/// What the rows say about the load's drop, compared with what the buyers were told.
#[derive(Debug)]
pub struct Audit {
    /// Sales buyers were told about that are not in `purchases` (must be 0).
    pub purchases_lost: usize,
    /// Holds buyers were given that are not in `reservations` (must be 0).
    pub holds_lost: usize,
    /// Sales in the database nobody was told about: only possible for purchases left undecided.
    pub sales_untold: usize,
    /// Units sold beyond the stock, or slots gone negative (must be 0).
    pub oversold: i64,
    /// A hold with more than one sale, or a buyer with more than one live hold (must be 0).
    pub doubled: i64,
}

pub async fn audit(db: &Client, drop: &str, tally: &Tally) -> Audit {
    let drop = Uuid::parse_str(drop).unwrap();
    let sales: HashMap<String, String> = pairs(
        db,
        "SELECT reservation_id::text, id::text FROM dropstock.purchases WHERE drop_id = $1",
        &[&drop],
    )
    .await;
    let holds: HashMap<String, String> = pairs(
        db,
        "SELECT id::text, status::text FROM dropstock.reservations WHERE drop_id = $1",
        &[&drop],
    )
    .await;
    let purchases_lost = tally
        .sales
        .iter()
        .filter(|(hold, sale)| {
            sales.get(*hold) != Some(*sale)
                || holds.get(*hold).map(String::as_str) != Some("purchased")
        })
        .count();
    let holds_lost = tally
        .holds
        .iter()
        .filter(|hold| !holds.contains_key(*hold))
        .count();
    let cancelled_but_sold = tally
        .cancelled
        .iter()
        .filter(|hold| sales.contains_key(*hold))
        .count();
    assert_eq!(cancelled_but_sold, 0, "a hold the buyer cancelled was sold");
    let sales_untold = sales
        .keys()
        .filter(|hold| !tally.sales.contains_key(*hold))
        .count();
    let row = db
        .query_one(
            "SELECT greatest(s.sold_stock - s.total_stock, 0)::bigint
                    + (SELECT count(*) FROM dropstock.stock_slots t WHERE t.drop_id = s.id AND (t.available < 0 OR t.sold < 0)),
                    (SELECT count(*) FROM (SELECT user_id FROM dropstock.reservations r
                                            WHERE r.drop_id = s.id AND r.status = 'reserved'
                                            GROUP BY user_id HAVING count(*) > 1) twice)
               FROM dropstock.drop_status($1) s",
            &[&drop],
        )
        .await
        .unwrap();
    Audit {
        purchases_lost,
        holds_lost,
        sales_untold,
        oversold: row.get(0),
        doubled: row.get(1),
    }
}

impl Audit {
    /// Nothing the buyers were told is missing, nothing is doubled or oversold, and a sale nobody was
    /// told about can only come from a purchase whose answer was lost (and is then not counted as lost).
    #[track_caller]
    pub fn assert_sound(&self, tally: &Tally) {
        assert_eq!(self.purchases_lost, 0, "purchases lost: {self:?}");
        assert_eq!(self.holds_lost, 0, "holds lost: {self:?}");
        assert_eq!(self.oversold, 0, "oversold: {self:?}");
        assert_eq!(self.doubled, 0, "doubled: {self:?}");
        assert!(
            self.sales_untold <= tally.undecided.len(),
            "sales nobody was told about beyond the undecided purchases: {self:?}, undecided {}",
            tally.undecided.len()
        );
    }
}

/// A drop big enough that the load never sells it out, whose buyers may each buy many units.
pub async fn roomy_drop(adapter: &Adapter) -> String {
    let drop = adapter
        .create_drop(json!({
            "name": unique("reliability drop"),
            "price": 42,
            "totalStock": 1_000_000,
            "perUserLimit": 1_000_000,
        }))
        .await;
    id(&drop)
}
