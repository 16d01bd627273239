//! Waking the worker when a change commits, so a screen sees it in milliseconds rather than at the
//! worker's next tick.
//!
//! A transaction that changes what the feed shows (a hold made or ended, a sale, a line joined or left)
//! calls `_wake_worker_at_commit()`; when it commits, the backend sets the worker's latch, and the worker
//! ticks at once: expiring what is due and publishing, as on a timed tick. Setting a latch takes no lock
//! (unlike `NOTIFY`, whose commit takes a cluster-wide one), costs a few instructions when the latch is
//! already set, and is lost harmlessly if the worker is not there: the timed tick still runs. Under load
//! the worker ticks at most once every `worker::MIN_TICK_GAP` (50 ms), so many commits still make one
//! notification per drop and tick.
//!
//! The worker's process number lives in shared memory (set when it starts serving, cleared when it
//! stops), so this works only when the library is preloaded, which is also when there is a worker.

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PgAtomic};
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// The worker's `pgprocno`, or -1 while no worker serves.
static WORKER: PgAtomic<AtomicI32> = unsafe { PgAtomic::new(c"dropstock_worker") };

/// In this backend: whether the current transaction asked for a wake-up.
static CHANGED: AtomicBool = AtomicBool::new(false);
/// In this backend: whether the commit callback is registered (once per process).
static REGISTERED: AtomicBool = AtomicBool::new(false);
/// In this backend: whether it is the worker itself, whose own changes its tick publishes anyway.
static IS_WORKER: AtomicBool = AtomicBool::new(false);

/// Reserves the shared memory; called from `_PG_init` while the library is preloaded.
pub fn init() {
    pg_shmem_init!(WORKER = AtomicI32::new(-1));
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

/// Asks for the worker to be woken when the current transaction commits (nothing on a rollback).
#[pg_extern(volatile, parallel_unsafe)]
pub(crate) fn _wake_worker_at_commit() {
    if !crate::worker::preloaded()
        || IS_WORKER.load(Ordering::Relaxed)
        || !crate::settings::WAKE_ON_COMMIT.get()
    {
        return;
    }
    CHANGED.store(true, Ordering::Relaxed);
    if !REGISTERED.swap(true, Ordering::Relaxed) {
        // SAFETY: registers a plain function for the life of the process, as extensions do in
        // _PG_init; it only reads and writes atomics and sets a latch.
        unsafe { pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut()) };
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT if CHANGED.swap(false, Ordering::Relaxed) => {
            let procno = WORKER.get().load(Ordering::Acquire);
            if procno >= 0 {
                // SAFETY: allProcs has an entry for every process number; setting the latch of a
                // process that has since exited (and whose slot was reused) only wakes that one
                // process once, spuriously, which every latch user allows for.
                unsafe {
                    let proc_ = (*pg_sys::ProcGlobal).allProcs.add(procno as usize);
                    pg_sys::SetLatch(&raw mut (*proc_).procLatch);
                }
            }
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT => CHANGED.store(false, Ordering::Relaxed),
        _ => {}
    }
}
