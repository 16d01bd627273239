//! N keep-alive clients reserving on one hot drop through `POST /api/reservations` (and, if asked, buying
//! each new hold through `POST /api/purchases`), every request from a buyer new to the drop.
//!
//! Two shapes of run: `Throughput` reserves for a fixed time on a drop with more stock than the demand;
//! `SellOut` reserves until the drop's last unit is held, then keeps asking for a fixed time and counts the
//! sold-out answers (409 `DS020`), which is what most of a hyped drop's crowd receives; then, on the same
//! connections, sends the same requests to a path the adapter does not have, for as long, so that its
//! cheapest answer (404) is measured side by side with the sold-out one.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{Barrier, Semaphore};
use uuid::Uuid;

use super::http::{data_id, error_code, has_error_code, Connection};
use super::latency::{Samples, Summary};

#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Reserve for this long; the drop has more stock than the run can take.
    Throughput { seconds: f64 },
    /// Reserve until `stock` new holds were answered, then keep asking for `sold_out_seconds`, then ask
    /// an unknown path for as long.
    SellOut { stock: u64, sold_out_seconds: f64 },
}

pub struct Plan {
    /// The adapters to spread the clients over, client k on adapter k mod n (behind a load balancer, as
    /// it were).
    pub addresses: Vec<SocketAddr>,
    pub drop_id: Uuid,
    pub clients: usize,
    pub purchase: bool,
    pub mode: Mode,
    /// Print a progress line to stderr once a second, prefixed with this label.
    pub progress: Option<String>,
}

/// What the clients were told, and how fast.
#[derive(Debug, Default)]
pub struct Outcome {
    /// From the start to the last client's stop (throughput), or to the answer that took the last unit
    /// (sell-out).
    pub elapsed: Duration,
    pub requests: u64,
    /// 201: a new hold.
    pub fresh_holds: u64,
    /// 200: the buyer's existing hold again (never expected here: every buyer is new to the drop).
    pub same_holds: u64,
    /// 409 DS020 answers that arrived before the answer that took the last unit. A few can be honest (the
    /// last unit's commit precedes its answer); many mean buyers were refused while units were left.
    pub early_sold_out: u64,
    pub purchases: u64,
    /// Every answer by status and code, and every transport failure by kind.
    pub answers: BTreeMap<String, u64>,
    /// Answers that are neither a hold, a sale nor a sold-out answer.
    pub errors: u64,
    pub reserve_latency: Summary,
    pub purchase_latency: Summary,
    /// Sell-out only: answers after the last unit was held, how long that lasted, and their latency.
    pub sold_out_answers: u64,
    pub sold_out_elapsed: Duration,
    pub sold_out_latency: Summary,
    /// Sell-out only: 404 answers to the unknown path, and how long that lasted.
    pub not_found_answers: u64,
    pub not_found_elapsed: Duration,
    /// The run ended because every prepared buyer had asked.
    pub buyers_ran_out: bool,
}

impl Outcome {
    pub fn holds_per_second(&self) -> f64 {
        self.fresh_holds as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn sold_out_per_second(&self) -> f64 {
        self.sold_out_answers as f64 / self.sold_out_elapsed.as_secs_f64().max(1e-9)
    }

    pub fn not_found_per_second(&self) -> f64 {
        self.not_found_answers as f64 / self.not_found_elapsed.as_secs_f64().max(1e-9)
    }
}

struct Shared {
    drop_id: Uuid,
    buyers: Arc<Vec<Uuid>>,
    next_buyer: AtomicUsize,
    stop: AtomicBool,
    buyers_ran_out: AtomicBool,
    sell_out_stock: Option<u64>,
    sold_out_at: OnceLock<Instant>,
    /// The first buyer handed out after the last unit was held: from there on no buyer holds a unit.
    sold_out_from: OnceLock<usize>,
    /// When the clients turned to the unknown path.
    not_found_at: OnceLock<Instant>,
    requests: AtomicU64,
    fresh_holds: AtomicU64,
    sold_out: AtomicU64,
    errors: AtomicU64,
}

#[derive(Default)]
struct ClientLog {
    answers: HashMap<String, u64>,
    reserve: Samples,
    purchase: Samples,
    sold_out: Samples,
    same_holds: u64,
    early_sold_out: u64,
    purchases: u64,
    sold_out_answers: u64,
    not_found_answers: u64,
}

impl ClientLog {
    fn count(&mut self, key: String) {
        *self.answers.entry(key).or_default() += 1;
    }

    /// `count` for the answers most requests get, without making a key each time.
    fn count_known(&mut self, key: &str) {
        match self.answers.get_mut(key) {
            Some(count) => *count += 1,
            None => self.count(key.to_owned()),
        }
    }
}

/// Runs the plan. Each request is a buyer from `buyers` not used before in the run; the run ends early
/// once every one has asked.
pub async fn run(plan: &Plan, buyers: Arc<Vec<Uuid>>) -> Result<Outcome, String> {
    let shared = Arc::new(Shared {
        drop_id: plan.drop_id,
        buyers,
        next_buyer: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        buyers_ran_out: AtomicBool::new(false),
        sell_out_stock: match plan.mode {
            Mode::SellOut { stock, .. } => Some(stock),
            Mode::Throughput { .. } => None,
        },
        sold_out_at: OnceLock::new(),
        sold_out_from: OnceLock::new(),
        not_found_at: OnceLock::new(),
        requests: AtomicU64::new(0),
        fresh_holds: AtomicU64::new(0),
        sold_out: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });

    // Every client connects before the clock starts; at most 100 handshakes at a time.
    let connecting = Arc::new(Semaphore::new(100));
    let start_line = Arc::new(Barrier::new(plan.clients + 1));
    let mut clients = Vec::with_capacity(plan.clients);
    for k in 0..plan.clients {
        let shared = shared.clone();
        let connecting = connecting.clone();
        let start_line = start_line.clone();
        let address = plan.addresses[k % plan.addresses.len()];
        let purchase = plan.purchase;
        clients.push(tokio::spawn(async move {
            let mut connection = Connection::new(address);
            let opened = {
                let _permit = connecting.acquire().await;
                connection.open().await
            };
            start_line.wait().await;
            opened?;
            Ok::<_, String>(client(connection, &shared, purchase).await)
        }));
    }
    start_line.wait().await;
    let started = Instant::now();

    let progress = plan
        .progress
        .clone()
        .map(|label| tokio::spawn(report_progress(label, shared.clone(), started)));

    // The clock: a fixed time, or until the sell-out plus the sold-out window (with a generous bound in case
    // the drop never sells out).
    let controller = {
        let shared = shared.clone();
        let mode = plan.mode;
        tokio::spawn(async move {
            match mode {
                Mode::Throughput { seconds } => {
                    wait_or_stop(&shared, Duration::from_secs_f64(seconds)).await;
                }
                Mode::SellOut {
                    sold_out_seconds, ..
                } => {
                    let give_up = started + Duration::from_secs(120);
                    while shared.sold_out_at.get().is_none()
                        && !shared.stop.load(Ordering::Relaxed)
                        && Instant::now() < give_up
                    {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    wait_or_stop(&shared, Duration::from_secs_f64(sold_out_seconds)).await;
                    if shared.sold_out_at.get().is_some() {
                        let _ = shared.not_found_at.set(Instant::now());
                        wait_or_stop(&shared, Duration::from_secs_f64(sold_out_seconds)).await;
                    }
                }
            }
            shared.stop.store(true, Ordering::Relaxed);
        })
    };

    let mut logs = Vec::with_capacity(clients.len());
    let mut failures = Vec::new();
    for client in clients {
        match client.await {
            Ok(Ok(log)) => logs.push(log),
            Ok(Err(error)) => failures.push(error),
            Err(error) => failures.push(format!("client task: {error}")),
        }
    }
    let finished = Instant::now();
    shared.stop.store(true, Ordering::Relaxed);
    let _ = controller.await;
    if let Some(progress) = progress {
        progress.abort();
    }
    if !failures.is_empty() {
        return Err(format!(
            "{} of {} clients could not connect (first: {})",
            failures.len(),
            plan.clients,
            failures[0]
        ));
    }

    let mut outcome = Outcome {
        requests: shared.requests.load(Ordering::Relaxed),
        fresh_holds: shared.fresh_holds.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        buyers_ran_out: shared.buyers_ran_out.load(Ordering::Relaxed),
        ..Outcome::default()
    };
    let (mut reserve, mut purchase, mut sold_out) =
        (Samples::default(), Samples::default(), Samples::default());
    for log in logs {
        for (key, count) in log.answers {
            *outcome.answers.entry(key).or_default() += count;
        }
        reserve.merge(log.reserve);
        purchase.merge(log.purchase);
        sold_out.merge(log.sold_out);
        outcome.same_holds += log.same_holds;
        outcome.early_sold_out += log.early_sold_out;
        outcome.purchases += log.purchases;
        outcome.sold_out_answers += log.sold_out_answers;
        outcome.not_found_answers += log.not_found_answers;
    }
    outcome.reserve_latency = reserve.summary();
    outcome.purchase_latency = purchase.summary();
    outcome.sold_out_latency = sold_out.summary();
    match shared.sold_out_at.get() {
        Some(&sold_out_at) => {
            outcome.elapsed = sold_out_at - started;
            match shared.not_found_at.get() {
                Some(&not_found_at) => {
                    outcome.sold_out_elapsed = not_found_at - sold_out_at;
                    outcome.not_found_elapsed = finished - not_found_at;
                }
                None => outcome.sold_out_elapsed = finished - sold_out_at,
            }
        }
        None => outcome.elapsed = finished - started,
    }
    Ok(outcome)
}

async fn wait_or_stop(shared: &Shared, duration: Duration) {
    let until = Instant::now() + duration;
    while !shared.stop.load(Ordering::Relaxed) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5).min(until - Instant::now())).await;
    }
}

/// After the sell-out, once every prepared buyer has asked, buyer `next` is one who already asked after
/// the last unit was held, asking again: the crowd keeps asking, each buyer every few seconds (well
/// under the per-buyer rate limit), and the sold-out window lasts its full time however fast it is
/// answered.
fn again(shared: &Shared, next: usize) -> Option<&Uuid> {
    let from = *shared.sold_out_from.get()?;
    let span = shared
        .buyers
        .len()
        .checked_sub(from)
        .filter(|span| *span > 0)?;
    shared.buyers.get(from + (next - from) % span)
}

async fn client(mut connection: Connection, shared: &Shared, purchase: bool) -> ClientLog {
    let mut log = ClientLog::default();
    while !shared.stop.load(Ordering::Relaxed) {
        if shared.not_found_at.get().is_some() {
            not_found(&mut connection, &mut log, shared).await;
            continue;
        }
        // Latency after the sell-out counts only requests sent after it: one in flight across the last
        // unit was still a reservation attempt when it was sent.
        let after_sell_out = shared.sold_out_at.get().is_some();
        // Every request is a buyer new to the drop, after the sell-out too: a crowd is many buyers, and a
        // per-buyer rate limit must not be what answers them.
        let next = shared.next_buyer.fetch_add(1, Ordering::Relaxed);
        let Some(&buyer) = shared.buyers.get(next).or_else(|| again(shared, next)) else {
            shared.buyers_ran_out.store(true, Ordering::Relaxed);
            shared.stop.store(true, Ordering::Relaxed);
            break;
        };
        let body = format!(r#"{{"userId":"{buyer}","dropId":"{}"}}"#, shared.drop_id);
        shared.requests.fetch_add(1, Ordering::Relaxed);
        let answer = match connection.post_json("/api/reservations", body).await {
            Ok(answer) => answer,
            Err(error) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                log.count(format!("transport: {error}"));
                // A refused connection fails at once; do not spin on it.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if after_sell_out {
            log.sold_out.record(answer.took);
        } else {
            log.reserve.record(answer.took);
        }
        let status = answer.status.as_u16();
        match status {
            201 => {
                log.count_known("201");
                let held = shared.fresh_holds.fetch_add(1, Ordering::Relaxed) + 1;
                if shared.sell_out_stock == Some(held) {
                    let _ = shared.sold_out_at.set(Instant::now());
                    let _ = shared
                        .sold_out_from
                        .set(shared.next_buyer.load(Ordering::Relaxed));
                }
                if purchase {
                    buy(&mut connection, &mut log, shared, buyer, &answer.body).await;
                }
            }
            200 => {
                log.count_known("200");
                log.same_holds += 1;
            }
            409 if has_error_code(&answer.body, "DS020") => {
                shared.sold_out.fetch_add(1, Ordering::Relaxed);
                // Counted by when the answer came: the window of sold-out answers opens at the answer
                // that took the last unit.
                if shared.sold_out_at.get().is_some() {
                    log.sold_out_answers += 1;
                } else {
                    log.early_sold_out += 1;
                }
                log.count_known("409 DS020");
            }
            _ => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                let code = error_code(&answer.body).unwrap_or_default();
                log.count(format!("{status} {code}").trim_end().to_owned());
            }
        }
    }
    log
}

/// One request like a reservation, to a path the adapter does not have.
async fn not_found(connection: &mut Connection, log: &mut ClientLog, shared: &Shared) {
    let body = format!(
        r#"{{"userId":"{}","dropId":"{}"}}"#,
        Uuid::nil(),
        shared.drop_id
    );
    match connection.post_json("/api/unknown", body).await {
        Ok(answer) if answer.status.as_u16() == 404 => log.not_found_answers += 1,
        Ok(answer) => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            log.count(format!("unknown path: {}", answer.status.as_u16()));
        }
        Err(error) => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            log.count(format!("transport: {error}"));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn buy(
    connection: &mut Connection,
    log: &mut ClientLog,
    shared: &Shared,
    buyer: Uuid,
    hold: &[u8],
) {
    let Some(hold_id) = data_id(hold) else {
        shared.errors.fetch_add(1, Ordering::Relaxed);
        log.count("201 without a hold id".to_owned());
        return;
    };
    let body = format!(r#"{{"userId":"{buyer}","reservationId":"{hold_id}"}}"#);
    match connection.post_json("/api/purchases", body).await {
        Ok(answer) if answer.status.as_u16() == 200 => {
            log.purchase.record(answer.took);
            log.purchases += 1;
            log.count("purchase 200".to_owned());
        }
        Ok(answer) => {
            log.purchase.record(answer.took);
            shared.errors.fetch_add(1, Ordering::Relaxed);
            let code = error_code(&answer.body).unwrap_or_default();
            log.count(
                format!("purchase {} {code}", answer.status.as_u16())
                    .trim_end()
                    .to_owned(),
            );
        }
        Err(error) => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            log.count(format!("purchase transport: {error}"));
        }
    }
}

async fn report_progress(label: String, shared: Arc<Shared>, started: Instant) {
    let mut every = tokio::time::interval_at(
        tokio::time::Instant::from_std(started) + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut last_holds = 0;
    let mut last_sold_out = 0;
    loop {
        every.tick().await;
        let holds = shared.fresh_holds.load(Ordering::Relaxed);
        let sold_out = shared.sold_out.load(Ordering::Relaxed);
        eprintln!(
            "{label}: {:>4.0}s  requests {:>8}  reservations/s {:>7}  sold-out/s {:>7}  errors {}",
            started.elapsed().as_secs_f64(),
            shared.requests.load(Ordering::Relaxed),
            holds - last_holds,
            sold_out - last_sold_out,
            shared.errors.load(Ordering::Relaxed),
        );
        last_holds = holds;
        last_sold_out = sold_out;
    }
}
