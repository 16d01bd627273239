//! Telling the worker, when a change commits, which drop changed, and waking it, so a screen sees the
//! change in milliseconds rather than at the worker's next tick, and the tick looks at that drop without
//! searching for it.
//!
//! A transaction that changes what the feed shows (a hold made or ended, a sale, a line joined or left)
//! calls `_tell_worker_at_commit(drop_id)`, with `made_holds => true` where it makes holds: a sold-out
//! drop whose buyers changed is published even when its figures did not move, and only then (see
//! `_publish_changes`). When it commits, the backend adds the drop to the list of
//! changed drops in shared memory and sets the worker's latch; the worker ticks at once: expiring what
//! is due and publishing, as on a timed tick. Setting a latch takes no lock (unlike `NOTIFY`, whose
//! commit takes a cluster-wide one), costs a few instructions when the latch is already set, and is lost
//! harmlessly if the worker is not there: the timed tick still runs. Under load the worker ticks at most
//! once every `worker::MIN_TICK_GAP` (50 ms), so many commits still make one notification per drop and
//! tick.
//!
//! The list is why a tick costs what the changed drops cost. Without it, a tick must look at every drop
//! that may have changed: every drop with live holds, found by walking the live-hold index, where every
//! hold that ended leaves a dead entry until vacuum (after a million holds came and went, that walk took
//! 50 ms of every tick), and every drop that held units at its last publication (10 ms a tick with
//! 1,000 such drops). Every path that changes what a notice says tells (the worker's own sweep too,
//! through `_give_back`), so the worker takes the list at the start of each publication
//! (`take_changed_drops`) and looks at those drops, the drops whose line moved and the drops with sales
//! to announce, and at no other. It looks at every drop that may have changed only when the list cannot
//! be trusted: on its first tick, after a failed one, when more drops changed than the list holds
//! (`RECENT_CAPACITY`, or `PER_TRANSACTION` in one transaction), and every `worker::FULL_TICK_EVERY`
//! for what the list cannot see (a prepared transaction commits in another session, without this
//! backend's callback).
//!
//! A drop is added after its transaction's commit is visible, and the worker takes the list before
//! its publication's snapshot, so every drop it takes has its change in that snapshot; a drop added
//! just after the worker took the list waits in it for the next tick, which its latch brings at once.
//! A backend first looks for the drop under a shared lock: a hot drop is already listed, so the
//! exclusive lock is taken about once per drop and tick.
//!
//! The list and the worker's process number live in shared memory, so this works only when the
//! library is preloaded, which is also when there is a worker.

use pgrx::lwlock::PgLwLock;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic};
use std::cell::RefCell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};

/// Drops the shared list holds between two publications.
const RECENT_CAPACITY: usize = 128;
/// Drops one transaction tells of; one that changes more (a script, not a buyer) makes the worker
/// look the long way once.
const PER_TRANSACTION: usize = 8;

/// The drops that changed since the worker last took the list, by id.
pub struct ChangedDrops {
    len: usize,
    /// More drops changed than the list holds: the worker must look the long way.
    overflowed: bool,
    ids: [[u8; 16]; RECENT_CAPACITY],
    /// Per listed drop, when the latest commit that made holds in it committed (0: none did): a
    /// sold-out drop's buyers then changed, even when its stock figures did not (a past-due hold taken
    /// over). A time, not a flag, so that a publication by someone else in between, which showed those
    /// buyers already, is seen as such (`_publish_changes`). Raised under the shared lock: a hot drop's
    /// commits never wait for each other here.
    made_at: [AtomicI64; RECENT_CAPACITY],
}

impl Default for ChangedDrops {
    fn default() -> Self {
        ChangedDrops {
            len: 0,
            overflowed: false,
            ids: [[0; 16]; RECENT_CAPACITY],
            made_at: std::array::from_fn(|_| AtomicI64::new(0)),
        }
    }
}

impl ChangedDrops {
    fn position(&self, id: &[u8; 16]) -> Option<usize> {
        self.ids[..self.len].iter().position(|listed| listed == id)
    }

    /// Notes that holds were made in the listed drop at `at` by a commit at `when`.
    fn holds_made(&self, at: usize, when: i64) {
        self.made_at[at].fetch_max(when, Ordering::AcqRel);
    }
}

// SAFETY: plain data with no pointers, the same in every process that maps it.
unsafe impl PGRXSharedMemory for ChangedDrops {}

static CHANGED_DROPS: PgLwLock<ChangedDrops> = unsafe { PgLwLock::new(c"dropstock_changed_drops") };

/// The worker's `pgprocno`, or -1 while no worker serves.
static WORKER: PgAtomic<AtomicI32> = unsafe { PgAtomic::new(c"dropstock_worker") };

/// In this backend: what the current transaction asked to tell the worker at commit.
#[derive(Default)]
struct Told {
    /// Each drop, and whether the transaction made holds in it.
    drops: Vec<([u8; 16], bool)>,
    too_many: bool,
    wake: bool,
}

impl Told {
    fn is_empty(&self) -> bool {
        self.drops.is_empty() && !self.too_many
    }
}

thread_local! {
    static TOLD: RefCell<Told> = RefCell::new(Told::default());
}
/// In this backend: whether the commit callback is registered (once per process).
static REGISTERED: AtomicBool = AtomicBool::new(false);
/// In this backend: whether it is the worker itself, whose own changes its tick publishes anyway.
static IS_WORKER: AtomicBool = AtomicBool::new(false);

/// Reserves the shared memory; called from `_PG_init` while the library is preloaded.
pub fn init() {
    pg_shmem_init!(WORKER = AtomicI32::new(-1));
    pg_shmem_init!(CHANGED_DROPS);
}

/// The worker starts serving: commits from now on wake it.
pub fn worker_serving() {
    IS_WORKER.store(true, Ordering::Relaxed);
    // SAFETY: MyProc is this process's own PGPROC, set up before any background worker code runs.
    let procno = unsafe { (*pg_sys::MyProc).pgprocno };
    WORKER.get().store(procno, Ordering::Release);
}

/// The worker stops: nobody to wake until it is back.
pub fn worker_stopping() {
    WORKER.get().store(-1, Ordering::Release);
}

/// What the worker takes from the list: the drops that changed, and those of them in which holds were
/// made, with when the latest such commit was.
pub struct Changed {
    pub drops: Vec<pgrx::Uuid>,
    pub made_holds: Vec<pgrx::Uuid>,
    pub made_at: Vec<pgrx::datum::TimestampWithTimeZone>,
}

/// For the worker, before its publication's snapshot: the drops that changed since it last took the
/// list, or None when the list overflowed and the drops must be found the long way. Empties the list.
pub fn take_changed_drops() -> Option<Changed> {
    let mut list = CHANGED_DROPS.exclusive();
    let taken = (!list.overflowed).then(|| {
        let mut changed = Changed {
            drops: Vec::with_capacity(list.len),
            made_holds: Vec::new(),
            made_at: Vec::new(),
        };
        for (id, made_at) in list.ids[..list.len].iter().zip(&list.made_at) {
            let id = pgrx::Uuid::from_bytes(*id);
            changed.drops.push(id);
            let made_at = made_at.load(Ordering::Acquire);
            if made_at != 0 {
                // A time out of range (none the clock gives) counts as now and later: the drop is
                // published, never skipped.
                let when = pgrx::datum::TimestampWithTimeZone::try_from(made_at)
                    .unwrap_or_else(|_| pgrx::datum::TimestampWithTimeZone::positive_infinity());
                changed.made_holds.push(id);
                changed.made_at.push(when);
            }
        }
        changed
    });
    list.len = 0;
    list.overflowed = false;
    taken
}

/// Tells the worker, when the current transaction commits, that `drop_id` changed (`made_holds`: holds
/// were made in it), and wakes it (nothing on a rollback).
#[pg_extern(volatile, parallel_unsafe)]
pub(crate) fn _tell_worker_at_commit(drop_id: pgrx::Uuid, made_holds: default!(bool, false)) {
    drop_changed(*drop_id.as_bytes(), made_holds);
}

/// The same, for Rust callers.
pub fn drop_changed(drop_id: [u8; 16], made_holds: bool) {
    if !crate::worker::preloaded() {
        return;
    }
    TOLD.with_borrow_mut(|told| {
        if let Some((_, made)) = told.drops.iter_mut().find(|(id, _)| *id == drop_id) {
            *made |= made_holds;
        } else if told.drops.len() < PER_TRANSACTION {
            told.drops.push((drop_id, made_holds));
        } else {
            told.too_many = true;
        }
        // The worker's own changes are published by the tick that made them; it only needs the list.
        told.wake |= !IS_WORKER.load(Ordering::Relaxed) && crate::settings::WAKE_ON_COMMIT.get();
    });
    if !REGISTERED.swap(true, Ordering::Relaxed) {
        // SAFETY: registers a plain function for the life of the process, as extensions do in
        // _PG_init; it takes one lightweight lock, reads and writes plain memory and sets a latch.
        unsafe { pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut()) };
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT => {
            let told = TOLD.take();
            if told.is_empty() {
                return;
            }
            list(&told);
            if told.wake {
                wake_worker();
            }
        }
        // A prepared transaction commits elsewhere, later; the worker's full look finds its changes.
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PREPARE => {
            TOLD.take();
        }
        _ => {}
    }
}

/// Adds the committed transaction's drops to the shared list.
fn list(told: &Told) {
    // The commit is visible by now: a publication that starts later sees it.
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    if !told.too_many {
        let list = CHANGED_DROPS.share();
        // Overflowed, the worker looks the long way and finds these drops too.
        if list.overflowed {
            return;
        }
        let all_listed = told.drops.iter().all(|(id, made)| match list.position(id) {
            Some(at) => {
                if *made {
                    list.holds_made(at, now);
                }
                true
            }
            None => false,
        });
        if all_listed {
            return;
        }
    }
    let mut list = CHANGED_DROPS.exclusive();
    list.overflowed |= told.too_many;
    for (id, made) in &told.drops {
        let at = match list.position(id) {
            Some(at) => at,
            None if list.len == RECENT_CAPACITY => {
                list.overflowed = true;
                break;
            }
            None => {
                let at = list.len;
                list.ids[at] = *id;
                list.made_at[at].store(0, Ordering::Release);
                list.len += 1;
                at
            }
        };
        if *made {
            list.holds_made(at, now);
        }
    }
}

fn wake_worker() {
    let procno = WORKER.get().load(Ordering::Acquire);
    if procno >= 0 {
        // SAFETY: allProcs has an entry for every process number; setting the latch of a process
        // that has since exited (and whose slot was reused) only wakes that one process once,
        // spuriously, which every latch user allows for.
        unsafe {
            let proc_ = (*pg_sys::ProcGlobal).allProcs.add(procno as usize);
            pg_sys::SetLatch(&raw mut (*proc_).procLatch);
        }
    }
}
