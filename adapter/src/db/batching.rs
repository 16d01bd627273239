//! Batching: concurrent `POST /api/reservations` for the same drop share one
//! `dropstock.reserve_items` call, so one transaction and one commit (one disk flush) serve them all,
//! and each buyer still gets exactly the answer `reserve_item` would have given them. Each request
//! carries its own size and quantity into the call.
//!
//! Per drop, a queue and up to `FLUSHERS_PER_DROP` flusher tasks: a flusher takes whatever is waiting
//! (up to `MAX_BATCH`), makes the call, and answers each request. A request that arrives while the
//! drop is quiet is sent on at once, so batching adds no delay; under load the next batch forms while
//! the previous ones commit. Flushers run as their own tasks, so a client that hangs up does not strand
//! the buyers batched with it; a drop's queue closes after `IDLE` without requests.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::db::models::{HoldStatus, HoldView, Units};
use crate::db::pool::Database;
use crate::db::queries::{self, Asked, BatchAnswer};
use crate::http::errors::ApiError;

/// Buyers one call serves at most: beyond this a call holds its slot locks longer than it saves.
const MAX_BATCH: usize = 128;
/// Calls in flight per drop: while some commit, the next batch forms.
const FLUSHERS_PER_DROP: usize = 4;
/// A drop's queue closes after this long without a request, and opens again on the next one.
const IDLE: Duration = Duration::from_secs(5);
/// Drops with a queue at once. Each costs a task and a little memory; a client naming random drop ids
/// must not be able to make more (and a queue whose drop does not exist closes after its first call).
const MAX_QUEUES: usize = 1024;
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

struct Queue {
    sender: mpsc::UnboundedSender<Request>,
}

pub struct Batcher {
    pool: Database,
    queues: Arc<Mutex<HashMap<Uuid, Queue>>>,
    /// How many queues are open, for `/metrics`.
    open: Gauge,
}

impl Batcher {
    pub fn new(pool: Database, open: Gauge) -> Self {
        Batcher {
            pool,
            queues: Arc::new(Mutex::new(HashMap::new())),
            open,
        }
    }

    /// Reserves what `asked` names (a buyer, a size, units) of `drop`, in whichever batch forms next.
    pub async fn reserve(&self, drop: Uuid, asked: Asked) -> Result<Reserved, ApiError> {
        let (reply, answer) = oneshot::channel();
        let mut request = Request { asked, reply };
        // A queue that closed for idleness refuses the request; `queue_for` then opens a new one.
        loop {
            match self.queue_for(drop)?.send(request) {
                Ok(()) => break,
                Err(mpsc::error::SendError(returned)) => request = returned,
            }
        }
        answer.await.unwrap_or_else(|_| {
            Err(ApiError::internal(
                &"a reservation batch ended without an answer",
            ))
        })
    }

    fn queue_for(&self, drop: Uuid) -> Result<mpsc::UnboundedSender<Request>, ApiError> {
        let mut queues = self.queues.lock().expect("queue map lock");
        if let Some(queue) = queues.get(&drop) {
            if !queue.sender.is_closed() {
                return Ok(queue.sender.clone());
            }
        }
        if queues.len() >= MAX_QUEUES && !queues.contains_key(&drop) {
            return Err(ApiError::unavailable(
                "too many drops are being reserved at once; try again shortly",
            ));
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        queues.insert(
            drop,
            Queue {
                sender: sender.clone(),
            },
        );
        self.open.set(queues.len() as i64);
        let flushers = Arc::new(Flushers {
            drop,
            pool: self.pool.clone(),
            receiver: tokio::sync::Mutex::new(receiver),
            running: AtomicUsize::new(1),
            queues: self.queues.clone(),
            open: self.open.clone(),
        });
        tokio::spawn(flushers.run());
        Ok(sender)
    }
}

/// The tasks serving one drop's queue.
struct Flushers {
    drop: Uuid,
    pool: Database,
    receiver: tokio::sync::Mutex<mpsc::UnboundedReceiver<Request>>,
    running: AtomicUsize,
    queues: Arc<Mutex<HashMap<Uuid, Queue>>>,
    open: Gauge,
}

impl Flushers {
    /// One flusher's life: batches until the queue closes. Boxed with its type spelled out because a
    /// flusher may start another, and a recursive `async fn` cannot name its own future.
    fn run(self: Arc<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            while let Some(batch) = self.next_batch().await {
                self.flush(batch).await;
            }
            self.running.fetch_sub(1, Ordering::AcqRel);
        })
    }

    /// Waits for a request, then takes everything waiting behind it, up to `MAX_BATCH`. None once the
    /// queue has closed and is empty.
    async fn next_batch(self: &Arc<Self>) -> Option<Vec<Request>> {
        let mut receiver = self.receiver.lock().await;
        let first = match tokio::time::timeout(IDLE, receiver.recv()).await {
            Ok(Some(request)) => request,
            Ok(None) => return None,
            Err(_idle) => {
                close(&mut receiver, &self.queues, self.drop, &self.open);
                receiver.try_recv().ok()?
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        // More waiting than this batch takes: let another flusher form the next one meanwhile.
        if !receiver.is_empty() && self.running.load(Ordering::Acquire) < FLUSHERS_PER_DROP {
            self.running.fetch_add(1, Ordering::AcqRel);
            tokio::spawn(self.clone().run());
        }
        Some(batch)
    }

    async fn flush(&self, mut batch: Vec<Request>) {
        // A client that hung up (or whose request timed out) while queued gets no hold made for it: it
        // would only keep a unit from a buyer who is still there until it expired.
        batch.retain(|request| !request.reply.is_closed());
        if batch.is_empty() {
            return;
        }
        let asked: Vec<Asked> = batch.iter().map(|request| request.asked.clone()).collect();
        let answers = match self.pool.connection().await {
            Ok(client) => queries::reserve_batch(&client, self.drop, &asked).await,
            Err(error) => Err(error),
        };
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
                    self.forget_queue();
                }
            }
        }
    }

    /// No such drop: nothing will ever be batched for it, so its queue goes now rather than after
    /// `IDLE` (unless another flusher is waiting on it; then it idles out).
    fn forget_queue(&self) {
        let mut queues = self.queues.lock().expect("queue map lock");
        queues.remove(&self.drop);
        self.open.set(queues.len() as i64);
        drop(queues);
        if let Ok(mut receiver) = self.receiver.try_lock() {
            receiver.close();
        }
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

/// Closes a drop's queue: later sends fail and open a fresh queue; what is already queued still drains.
fn close(
    receiver: &mut mpsc::UnboundedReceiver<Request>,
    queues: &Mutex<HashMap<Uuid, Queue>>,
    drop_id: Uuid,
    open: &Gauge,
) {
    receiver.close();
    let mut queues = queues.lock().expect("queue map lock");
    if queues
        .get(&drop_id)
        .is_some_and(|queue| queue.sender.is_closed())
    {
        queues.remove(&drop_id);
    }
    open.set(queues.len() as i64);
}
