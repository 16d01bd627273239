//! Batching: concurrent `POST /api/reservations` for the same drop share one
//! `dropstock.reserve_items` call, so one transaction and one commit (one disk flush) serve them all,
//! and each buyer still gets exactly the answer `reserve_item` would have given them. Each request
//! carries its own size and quantity into the call.
//!
//! Per drop, a queue and up to `TURNS` flusher tasks. A flusher waits for a request, begins a
//! transaction and takes one of the drop's `TURNS` batch turns in the database
//! (`dropstock.take_batch_turn`), and only then gathers everything waiting (up to `MAX_BATCH`) into its
//! call. The turns are the database's, shared by every adapter: however many adapters serve a drop, at
//! most `TURNS` of its batches run at once, and while an adapter waits for a turn its next batch keeps
//! growing. (Without them, four adapters with four calls in flight each split the same buyers into
//! calls a quarter the size that waited on each other's slots: 0.6x the holds of one adapter.)
//!
//! Each adapter runs its share of a drop's turns: about once a second, before a batch, it tells the
//! database that it batches the drop and learns how many adapters do (`dropstock.share_batch_turns`),
//! and it starts flushers only up to `TURNS` divided among them, rounded up. Alone, it runs all four;
//! beside three others, one. (Two adapters running four flushers each made 0.95x the holds of one
//! adapter, four made 0.90x; running their share, 1.00x and 0.92x in the same runs. Beyond its share a
//! flusher only splits its adapter's buyers into smaller batches.)
//!
//! Only a flusher whose adapter has no batch of the drop in line (holding a turn or waiting for one)
//! waits for a turn. Any other that finds every turn taken gives its buyers back to the head of the
//! queue, for the batch in line to take, and retires unless it is the last: shares rounded up (three
//! adapters run two flushers each) and a share not yet learned still find every turn taken at times.
//! (Four adapters each keeping up to four flushers in line, most of them waiting, made about 0.85x the
//! holds of four adapters with one flusher each, and made the database spend 42 µs a hold instead of
//! 34 to 37.)
//!
//! A request that arrives while the drop is quiet is sent on at once, so batching adds no delay; under
//! load the next batch forms while the previous ones commit. Flushers run as their own tasks, so a
//! client that hangs up does not strand the buyers batched with it; a drop's queue closes after `IDLE`
//! without requests.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{oneshot, Notify};
use uuid::Uuid;

use crate::db::models::{HoldStatus, HoldView, Units};
use crate::db::pool::{Connection, Database};
use crate::db::queries::{self, Asked, BatchAnswer};
use crate::db::DbError;
use crate::http::errors::ApiError;

/// Buyers one call serves at most: beyond this a call holds its slot locks longer than it saves.
const MAX_BATCH: usize = 128;
/// A drop's batch turns, for all adapters together, and so also the flushers one adapter alone runs per
/// drop: while some batches commit, the next forms. Beside other adapters, it runs its share of them.
const TURNS: usize = 4;
/// How often an adapter that batches a drop says so to the database, and so learns its share of the
/// drop's turns (`dropstock.share_batch_turns`, which counts an adapter for three of these).
const SHARE_EVERY: Duration = Duration::from_secs(1);
/// A drop's queue closes after this long without a request, and opens again on the next one.
const IDLE: Duration = Duration::from_secs(5);
/// Drops with a queue at once. Each costs a task and a little memory; a client naming random drop ids
/// must not be able to make more (and a queue whose drop does not exist closes after its first call).
const MAX_QUEUES: usize = 1024;
/// How many times a batch the database rolled back (a deadlock or serialization failure, which the
/// extension's lock order rules out through its API) is sent again, turn and all.
const ATTEMPTS: usize = 3;
/// The SQLSTATE of an unknown drop.
const NO_SUCH_DROP: &str = "DS001";

/// What reserving came to for one buyer.
#[derive(Debug, Clone)]
pub struct Reserved {
    pub hold: HoldView,
    /// A new hold (answered 201), or the buyer's existing live hold handed back (200).
    pub fresh: bool,
}

struct Request {
    asked: Asked,
    reply: oneshot::Sender<Result<Reserved, ApiError>>,
}

/// One drop's requests waiting for a flusher. A plain list under a lock, not a channel: a flusher that
/// holds a turn takes what is waiting without ever waiting behind a flusher that waits for requests.
struct Queue {
    waiting: Mutex<Waiting>,
    /// Wakes a flusher waiting for a request.
    arrived: Notify,
    /// Requests in every drop's queue, for `/metrics`.
    queued: Gauge,
}

#[derive(Default)]
struct Waiting {
    requests: VecDeque<Request>,
    /// Closed for idleness or because the drop does not exist: new requests go to a new queue.
    closed: bool,
}

impl Queue {
    fn new(queued: Gauge) -> Self {
        Queue {
            waiting: Mutex::default(),
            arrived: Notify::new(),
            queued,
        }
    }

    /// Queues a request; gives it back if the queue has closed.
    fn push(&self, request: Request) -> Result<(), Request> {
        let mut waiting = self.waiting.lock().expect("queue lock");
        if waiting.closed {
            return Err(request);
        }
        waiting.requests.push_back(request);
        self.queued.inc();
        drop(waiting);
        self.arrived.notify_one();
        Ok(())
    }

    /// Puts a batch back at the head of the queue, in its order.
    fn push_front(&self, batch: Vec<Request>) {
        let mut waiting = self.waiting.lock().expect("queue lock");
        self.queued.inc_by(batch.len() as i64);
        for request in batch.into_iter().rev() {
            waiting.requests.push_front(request);
        }
        drop(waiting);
        self.arrived.notify_one();
    }

    /// Takes up to `most` requests from the head of `waiting`, this queue's list (locked by the caller).
    fn take<'a>(
        &self,
        waiting: &'a mut Waiting,
        most: usize,
    ) -> impl Iterator<Item = Request> + 'a {
        let take = waiting.requests.len().min(most);
        self.queued.dec_by(take as i64);
        waiting.requests.drain(..take)
    }

    fn is_closed(&self) -> bool {
        self.waiting.lock().expect("queue lock").closed
    }
}

/// What the batching queues show on `/metrics`.
#[derive(Clone, Default)]
pub struct BatchMetrics {
    /// Queues open (drops being reserved).
    pub queues: Gauge,
    /// Requests waiting in them.
    pub queued: Gauge,
    /// Flushers serving them.
    pub flushers: Gauge,
    /// Flushers started, ever: a queue's first, and each one more started for buyers a batch left.
    pub flushers_started: Counter,
}

pub struct Batcher {
    shared: Arc<Shared>,
}

/// What the batcher and every drop's flushers share.
struct Shared {
    pool: Database,
    /// This adapter, to the database's count of the adapters that batch a drop.
    caller: Uuid,
    queues: Mutex<HashMap<Uuid, Arc<Queue>>>,
    metrics: BatchMetrics,
}

impl Batcher {
    pub fn new(pool: Database, metrics: BatchMetrics) -> Self {
        Batcher {
            shared: Arc::new(Shared {
                pool,
                caller: Uuid::new_v4(),
                queues: Mutex::new(HashMap::new()),
                metrics,
            }),
        }
    }

    /// Reserves what `asked` names (a buyer, a size, units) of `drop`, in whichever batch forms next.
    pub async fn reserve(&self, drop: Uuid, asked: Asked) -> Result<Reserved, ApiError> {
        let (reply, answer) = oneshot::channel();
        let mut request = Request { asked, reply };
        // A queue that closed for idleness refuses the request; `queue_for` then opens a new one.
        loop {
            match self.queue_for(drop)?.push(request) {
                Ok(()) => break,
                Err(returned) => request = returned,
            }
        }
        answer.await.unwrap_or_else(|_| {
            Err(ApiError::internal(
                &"a reservation batch ended without an answer",
            ))
        })
    }

    fn queue_for(&self, drop: Uuid) -> Result<Arc<Queue>, ApiError> {
        let shared = &self.shared;
        let mut queues = shared.queues.lock().expect("queue map lock");
        if let Some(queue) = queues.get(&drop) {
            if !queue.is_closed() {
                return Ok(queue.clone());
            }
        }
        if queues.len() >= MAX_QUEUES && !queues.contains_key(&drop) {
            return Err(ApiError::unavailable(
                "too many drops are being reserved at once; try again shortly",
            ));
        }
        let queue = Arc::new(Queue::new(shared.metrics.queued.clone()));
        queues.insert(drop, queue.clone());
        shared.metrics.queues.set(queues.len() as i64);
        let flushers = Arc::new(Flushers {
            drop,
            shared: shared.clone(),
            queue: queue.clone(),
            running: Running::first(&shared.metrics),
            in_line: AtomicUsize::new(0),
            next_turn: AtomicUsize::new(0),
            share: AtomicUsize::new(TURNS),
            share_asked_at: Mutex::new(None),
        });
        tokio::spawn(flushers.run());
        Ok(queue)
    }
}

/// What became of a flusher's batch.
#[derive(Debug, PartialEq, Eq)]
enum Flushed {
    /// Every buyer in it has their answer.
    Answered,
    /// Given back to the queue: every turn was taken, and a batch of this adapter is in line.
    GaveBack,
}

/// Counts a batch in `Flushers::in_line` until its transaction ends, however it ends.
struct InLine<'a>(&'a AtomicUsize);

impl<'a> InLine<'a> {
    fn join(in_line: &'a AtomicUsize) -> Self {
        in_line.fetch_add(1, Ordering::AcqRel);
        InLine(in_line)
    }

    /// Joins only if no other batch of this adapter is in line.
    fn join_alone(in_line: &'a AtomicUsize) -> Option<Self> {
        in_line
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| InLine(in_line))
    }
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How many flushers serve a drop's queue, counted also in the adapter's metrics of all of them.
struct Running {
    count: AtomicUsize,
    /// Flushers of every drop, for `/metrics`.
    gauge: Gauge,
    started: Counter,
}

impl Running {
    /// The queue's first flusher.
    fn first(metrics: &BatchMetrics) -> Self {
        metrics.flushers.inc();
        metrics.flushers_started.inc();
        Running {
            count: AtomicUsize::new(1),
            gauge: metrics.flushers.clone(),
            started: metrics.flushers_started.clone(),
        }
    }

    /// Counts one more flusher (true, and the caller starts it) if fewer than `most` run.
    fn start_below(&self, most: usize) -> bool {
        let started = self.change(|running| (running < most).then(|| running + 1), 1);
        if started {
            self.started.inc();
        }
        started
    }

    /// Counts one fewer (true, and the caller retires) if more than `keep` run.
    fn stop_beyond(&self, keep: usize) -> bool {
        self.change(|running| (running > keep).then(|| running - 1), -1)
    }

    /// One fewer, whatever the count: the caller retires.
    fn stop(&self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }

    fn change(&self, to: impl FnMut(usize) -> Option<usize>, by: i64) -> bool {
        let changed = self
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, to)
            .is_ok();
        if changed {
            self.gauge.inc_by(by);
        }
        changed
    }
}

/// The tasks serving one drop's queue.
struct Flushers {
    drop: Uuid,
    shared: Arc<Shared>,
    queue: Arc<Queue>,
    running: Running,
    /// This adapter's batches of the drop that hold a turn or wait for one.
    in_line: AtomicUsize,
    /// The turn the next batch waits for if every turn is taken (a free one is taken first).
    next_turn: AtomicUsize,
    /// The flushers this adapter runs for the drop at most: its share of the drop's turns.
    share: AtomicUsize,
    /// When the share was last asked for.
    share_asked_at: Mutex<Option<Instant>>,
}

impl Flushers {
    /// One flusher's life: batches until it retires. Boxed with its type spelled out because a flusher
    /// may start another, and a recursive `async fn` cannot name its own future.
    fn run(self: Arc<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            while let Some(first) = self.next_request().await {
                // One that gave back leaves the buyers to the batch in line; beyond the share, a
                // flusher only splits this adapter's buyers into smaller batches.
                let keep = match self.flush(first).await {
                    Flushed::GaveBack => 1,
                    Flushed::Answered => self.share.load(Ordering::Relaxed),
                };
                if self.retire_beyond(keep) {
                    return;
                }
            }
        })
    }

    /// Waits for a request. None when this flusher retires (and is no longer counted in `running`):
    /// the queue is closed and empty, or nothing came for `IDLE`. Then a flusher that is not the last
    /// retires alone, and the last one closes the queue as it goes.
    async fn next_request(&self) -> Option<Request> {
        loop {
            {
                let mut waiting = self.queue.waiting.lock().expect("queue lock");
                if let Some(request) = self.queue.take(&mut waiting, 1).next() {
                    return Some(request);
                }
                if waiting.closed {
                    self.running.stop();
                    return None;
                }
            }
            // A request queued since the look above left a permit: this wait ends at once.
            if tokio::time::timeout(IDLE, self.queue.arrived.notified())
                .await
                .is_err()
            {
                let mut waiting = self.queue.waiting.lock().expect("queue lock");
                if waiting.requests.is_empty() {
                    if !self.retire_beyond(1) {
                        // The last flusher: nobody else can start one now, since only a running
                        // flusher does.
                        waiting.closed = true;
                        drop(waiting);
                        self.running.stop();
                        self.forget_queue();
                    }
                    return None;
                }
            }
        }
    }

    /// Adds what is waiting to `batch`, up to `MAX_BATCH` in all. More waiting than that: another
    /// flusher starts, to take a turn for the rest.
    fn gather(self: &Arc<Self>, batch: &mut Vec<Request>) {
        let mut waiting = self.queue.waiting.lock().expect("queue lock");
        batch.extend(
            self.queue
                .take(&mut waiting, MAX_BATCH.saturating_sub(batch.len())),
        );
        let more = !waiting.requests.is_empty();
        drop(waiting);
        if more && self.running.start_below(self.share.load(Ordering::Relaxed)) {
            tokio::spawn(self.clone().run());
        }
        // A client that hung up (or whose request timed out) while queued gets no hold made for it:
        // it would only keep a unit from a buyer who is still there until it expired.
        batch.retain(|request| !request.reply.is_closed());
    }

    /// A flusher retires (true) if more than `keep` run (`keep` is at least 1: the last keeps serving).
    fn retire_beyond(&self, keep: usize) -> bool {
        self.running.stop_beyond(keep.max(1))
    }

    /// About once a second (`SHARE_EVERY`), on `client` before a batch begins: tells the database that
    /// this adapter batches the drop, and takes the share of its turns the answer gives.
    async fn renew_share(&self, client: &Connection) -> Result<(), DbError> {
        {
            let mut share_asked_at = self.share_asked_at.lock().expect("share lock");
            if share_asked_at.is_some_and(|at| at.elapsed() < SHARE_EVERY) {
                return Ok(());
            }
            *share_asked_at = Some(Instant::now());
        }
        match queries::share_batch_turns(client, self.drop, self.shared.caller, TURNS).await {
            Ok(share) => self.share.store(share.clamp(1, TURNS), Ordering::Relaxed),
            // The database refused the call itself, not the drop (an extension older than this
            // adapter, a role not granted it): the share only tunes throughput, so batches go on
            // with the last one. An unknown drop is the batch's answer, as `reserve_items` gives it.
            Err(DbError::Postgres(error))
                if error
                    .as_db_error()
                    .is_some_and(|db| db.code().code() != NO_SUCH_DROP) =>
            {
                tracing::warn!(%error, drop = %self.drop, "share of batch turns not renewed; keeping the last");
            }
            Err(error) => return Err(error),
        }
        Ok(())
    }

    /// One batch: a turn, the buyers waiting once it is taken, the call, the commit; then the answers.
    /// Or, when every turn is taken and this adapter has a batch in line, the buyers given back.
    async fn flush(self: &Arc<Self>, first: Request) -> Flushed {
        let turn = self.next_turn.fetch_add(1, Ordering::Relaxed) % TURNS;
        let mut batch = vec![first];
        let mut gathered = false;
        let mut attempt = 1;
        let answers = loop {
            let outcome = match self.shared.pool.connection().await {
                Ok(client) => {
                    self.call_in_turn(&client, turn, &mut batch, &mut gathered)
                        .await
                }
                Err(error) => Err(error),
            };
            match outcome {
                Ok(None) => {
                    // For the batch in line to take.
                    self.queue.push_front(batch);
                    return Flushed::GaveBack;
                }
                Err(DbError::Postgres(error))
                    if queries::worth_again(&error) && attempt < ATTEMPTS =>
                {
                    tracing::warn!(%error, attempt, "sending a batch the database rolled back again");
                    attempt += 1;
                }
                outcome => break outcome.map(Option::unwrap_or_default),
            }
        };
        if !gathered {
            // Failed before a turn was taken (no connection, the database down): the error is
            // everyone's who is waiting now.
            self.gather(&mut batch);
        }
        self.answer(batch, answers);
        Flushed::Answered
    }

    /// On `client`: begins a transaction, takes a turn, gathers the batch (the first time: another
    /// attempt sends the same buyers), makes the call and ends the transaction. None, with the
    /// transaction ended, when every turn is taken and this adapter already has a batch in line.
    async fn call_in_turn(
        self: &Arc<Self>,
        client: &Connection,
        turn: usize,
        batch: &mut Vec<Request>,
        gathered: &mut bool,
    ) -> Result<Option<Vec<BatchAnswer>>, DbError> {
        self.renew_share(client).await?;
        let _in_line = if queries::begin_batch(client, self.drop, turn, TURNS).await? {
            InLine::join(&self.in_line)
        } else {
            // Every turn is taken. Waiting beside a batch of ours already in line would only split
            // the buyers it is about to take.
            let Some(in_line) = InLine::join_alone(&self.in_line) else {
                queries::end_transaction(client, false).await?;
                return Ok(None);
            };
            queries::wait_for_batch_turn(client, self.drop, turn, TURNS).await?;
            in_line
        };
        if !*gathered {
            self.gather(batch);
            *gathered = true;
        }
        if batch.is_empty() {
            queries::end_transaction(client, true).await?;
            return Ok(Some(Vec::new()));
        }
        let asked: Vec<Asked> = batch.iter().map(|request| request.asked.clone()).collect();
        let answers = queries::reserve_batch(client, self.drop, &asked).await;
        if let Err(DbError::Timeout(_)) = answers {
            // The answer is still owed: a ROLLBACK would wait behind it. The connection is closed
            // instead of pooled (`pool::Connection`), which ends the transaction.
            return answers.map(Some);
        }
        queries::end_transaction(client, answers.is_ok()).await?;
        answers.map(Some)
    }

    fn answer(&self, batch: Vec<Request>, answers: Result<Vec<BatchAnswer>, DbError>) {
        match answers {
            Ok(answers) => {
                let by_buyer: HashMap<Uuid, BatchAnswer> = answers
                    .into_iter()
                    .map(|answer| (answer.buyer, answer))
                    .collect();
                // A buyer named twice in one batch (a double click) has one hold: the first request
                // made it (201), the others get it back as a retry would (200).
                let mut answered = std::collections::HashSet::new();
                for request in batch {
                    let buyer = request.asked.buyer;
                    let outcome = match by_buyer.get(&buyer) {
                        Some(answer) => self.outcome(answer).map(|reserved| Reserved {
                            fresh: reserved.fresh && answered.insert(buyer),
                            ..reserved
                        }),
                        None => Err(ApiError::internal(&format_args!(
                            "reserve_items gave no answer for buyer {buyer}"
                        ))),
                    };
                    let _ = request.reply.send(outcome);
                }
            }
            // What concerns the whole drop (unknown, not started, ended) or the database itself:
            // every buyer in the batch gets it.
            Err(error) => {
                let error = ApiError::from(error);
                for request in batch {
                    let _ = request.reply.send(Err(error.clone()));
                }
                if error.code == NO_SUCH_DROP {
                    self.queue.waiting.lock().expect("queue lock").closed = true;
                    self.forget_queue();
                }
            }
        }
    }

    /// The queue is closed: it leaves the map (unless a new one for the drop has taken its place), so
    /// the next request opens a fresh one. What is already queued still drains.
    fn forget_queue(&self) {
        let mut queues = self.shared.queues.lock().expect("queue map lock");
        if queues
            .get(&self.drop)
            .is_some_and(|queue| Arc::ptr_eq(queue, &self.queue))
        {
            queues.remove(&self.drop);
        }
        self.shared.metrics.queues.set(queues.len() as i64);
    }

    fn outcome(&self, answer: &BatchAnswer) -> Result<Reserved, ApiError> {
        match (&answer.sqlstate, answer.hold) {
            (None, Some(hold)) => Ok(Reserved {
                hold: HoldView {
                    id: hold.id,
                    drop_id: self.drop,
                    buyer_id: answer.buyer,
                    status: HoldStatus::Reserved,
                    expires_at: hold.expires_at,
                    created_at: hold.created_at,
                    units: Units::of(answer.variant.clone(), answer.quantity),
                },
                fresh: hold.fresh,
            }),
            (Some(sqlstate), _) => Err(ApiError::from_sqlstate(
                sqlstate,
                answer.message.as_deref().unwrap_or("refused"),
            )),
            (None, None) => Err(ApiError::internal(
                &"reserve_items answered neither a hold nor a refusal",
            )),
        }
    }
}
