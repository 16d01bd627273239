//! The background worker: every tick it expires due holds, runs due draws and publishes stock changes
//! with NOTIFY. Ticks come every `dropstock.tick_ms`, and as soon as a change commits (`wake`).
//!
//! It runs only when the library is preloaded (`shared_preload_libraries = 'dropstock'`), in the one
//! database named by `dropstock.database`. Buyers never wait for it: reserve_item and purchase stay
//! correct without it (a past-due hold is never purchasable and its unit is reclaimed when needed);
//! the worker only brings units back on time and tells the screens.
//!
//! Two kinds of process, both shown as `backend_type = 'dropstock worker'` and never at the same time:
//! - the worker, registered at preload and started again one second after it dies, which connects to
//!   `dropstock.database` and ticks;
//! - the database check, a short-lived helper the worker starts before it connects (see
//!   `wait_for_database`), which waits, connected to no database, until `dropstock.database` exists.
//!
//! A bad day stays quiet and ends by itself: a missing database is logged once and checked again with a
//! growing pause; a database without the extension is waited for with one log line; a failed tick
//! (any SQL error, or `publish_changes()` refused because the NOTIFY queue is full behind a stalled
//! listener) is rolled back, logged at most once a minute while it repeats, and retried with a growing
//! pause, in the same process. `pg_stat_activity.query` says which of these the worker is doing.

use crate::settings;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::pg_sys::panic::{CaughtError, ErrorReport};
use pgrx::pg_sys::BackendState::{STATE_IDLE, STATE_RUNNING};
use pgrx::prelude::*;
use pgrx::PgTryBuilder;
use std::ffi::{CStr, CString};
use std::fmt::Display;
use std::panic::{RefUnwindSafe, UnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The name shown in `pg_stat_activity.backend_type` and in the server log.
pub const WORKER_NAME: &str = "dropstock worker";
/// The database check's name in the postmaster's log lines about it (its type is `WORKER_NAME`).
const CHECK_NAME: &str = "dropstock database check";

/// First pause between checks for a missing database; it doubles up to `DATABASE_PAUSE_MAX`.
const DATABASE_PAUSE_FIRST: Duration = Duration::from_secs(1);
/// Longest pause between checks for a missing database: how late the worker may start once it exists.
const DATABASE_PAUSE_MAX: Duration = Duration::from_secs(30);
/// First pause after a failed tick; it doubles up to `FAILURE_PAUSE_MAX`.
const FAILURE_PAUSE_FIRST: Duration = Duration::from_millis(250);
/// Longest pause between attempts while ticks fail: short, because holds come back late meanwhile.
const FAILURE_PAUSE_MAX: Duration = Duration::from_secs(5);
/// The same failure is logged again at most this often, with how many times it happened meanwhile.
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(60);
/// Ticks start at least this far apart (or `dropstock.tick_ms`, if shorter), however often commits wake
/// the worker (`wake`): a busy drop gets one notification per gap whatever its commits per second, and a
/// change after a quiet spell is published at once. The gap is what a change waits for its tick under a
/// steady stream (half of it on average), and every notification goes to every watcher: it trades the
/// feed's delay against the adapter's work. Measured on 2 cores with the adapter's watchers skipping
/// stale stock levels (`feed::websocket`): 10,000 watchers at 200 holds/s, commit-to-screen p50 115 ms
/// at a 100 ms gap, 93 ms at 50 ms, 78-87 ms at 25 ms or 10 ms (the fan-out to 10,000 sockets is the
/// rest); but at 25 ms, reservations through an adapter with 1,000 watchers fell to 0.63x-0.72x of
/// those with none (0.83x-0.87x at 100 ms), while at 50 ms they stayed where they were at 100 ms.
const MIN_TICK_GAP: Duration = Duration::from_millis(50);

/// Set in the postmaster while it preloads the library; every backend inherits it.
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Registers the worker with the postmaster; called from `_PG_init` during preloading only.
pub fn register() {
    PRELOADED.store(true, Ordering::Relaxed);
    BackgroundWorkerBuilder::new(WORKER_NAME)
        .set_type(WORKER_NAME)
        .set_library("dropstock")
        .set_function("dropstock_worker_main")
        .enable_spi_access()
        // Nothing to do on a standby: start once recovery is over (after a promotion, too).
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        // Back one second after it dies, whether killed or failed.
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

/// Whether this server preloaded the library, so a worker serves `dropstock.database`.
#[pg_extern]
fn worker_preloaded() -> bool {
    preloaded()
}

/// The same, for Rust callers.
pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

// Refuse CREATE EXTENSION outside the worker's database while the worker runs: the holds would never
// expire on time there and nothing would be published.
pgrx::extension_sql_file!(
    "../../sql/worker_guard.sql",
    name = "worker_guard",
    requires = [worker_preloaded],
    finalize
);

/// Entry point of the worker process: wait for the database, connect, then tick until SIGTERM.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn dropstock_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = database_name();
    if wait_for_database(&database) {
        BackgroundWorker::connect_worker_to_spi(Some(&database), None);
        log!("{WORKER_NAME}: serving database \"{database}\"");
        crate::wake::worker_serving();
        serve(&database);
        crate::wake::worker_stopping();
    }
    log!("{WORKER_NAME}: stopping");
    // Exit code 1, not 0: PostgreSQL never restarts a worker that exited 0, so a worker stopped by
    // pg_terminate_backend would stay gone. At server shutdown nothing is restarted either way.
    // SAFETY: ends this process the way PostgreSQL's own workers do, running its exit callbacks.
    unsafe { pg_sys::proc_exit(1) };
}

fn database_name() -> String {
    settings::DATABASE
        .get()
        .unwrap_or_else(|| settings::DEFAULT_DATABASE.to_owned())
        .into_string()
        .unwrap_or_else(|_| settings::DEFAULT_DATABASE.to_string_lossy().into_owned())
}

fn tick_interval() -> Duration {
    Duration::from_millis(settings::TICK_MS.get().max(1) as u64)
}

/// Before connecting: makes sure `database` exists, so connecting cannot fail; false on SIGTERM.
///
/// Connecting to a database that does not exist is FATAL, and the postmaster would start the worker
/// again every second, each time with a FATAL line in the log. Whether it exists can only be read from
/// `pg_database` by a process connected to a database or, like PostgreSQL's own launchers, to none;
/// and a process connects once only. So the worker, still unconnected, starts a helper (a dynamic
/// worker) that connects to no database, logs once if the database is missing, checks again with a
/// growing pause and exits as soon as it exists; the worker waits for it, then connects, in the same
/// process, without a restart. The helper lives for a few milliseconds when the database is there.
///
/// Why not the other way round (a launcher without a database that starts a serving worker): the
/// serving worker would outlive a launcher that died and a new launcher would start a second one; here
/// the long-lived process is the registered worker that PostgreSQL restarts, and the helper is ended
/// with it (see `stop_database_check`).
fn wait_for_database(database: &str) -> bool {
    let builder = BackgroundWorkerBuilder::new(CHECK_NAME)
        .set_type(WORKER_NAME)
        .set_library("dropstock")
        .set_function("dropstock_database_check_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        // SAFETY: a plain read of this process's PID, set before any extension code runs.
        .set_notify_pid(unsafe { pg_sys::MyProcPid });
    let mut check: pg_sys::BackgroundWorker = (&builder).into();
    let mut handle: *mut pg_sys::BackgroundWorkerHandle = std::ptr::null_mut();
    // SAFETY: `check` is a complete registration and `handle` receives a pointer PostgreSQL allocates.
    if !unsafe { pg_sys::RegisterDynamicBackgroundWorker(&mut check, &mut handle) } {
        // Every worker slot is taken (max_worker_processes): connect without the check, as before it
        // existed; a missing database then ends this process and the next start tries the check again.
        log!(
            "{WORKER_NAME}: no free background worker slot for the database check \
             (max_worker_processes); connecting to \"{database}\" without it"
        );
        return true;
    }
    // Whatever ends this process (SIGTERM, an error), the helper goes with it, so a restarted worker
    // never finds one left over. Left registered after the helper ends: terminating a handle whose
    // worker is gone does nothing (the slot's generation no longer matches).
    // SAFETY: the handle was just returned by PostgreSQL and stays allocated until the process exits.
    unsafe { pg_sys::before_shmem_exit(Some(stop_database_check), pg_sys::Datum::from(handle)) };
    loop {
        let mut pid: pg_sys::pid_t = 0;
        // SAFETY: a valid handle from RegisterDynamicBackgroundWorker, read under PostgreSQL's lock.
        match unsafe { pg_sys::GetBackgroundWorkerPid(handle, &mut pid) } {
            pg_sys::BgwHandleStatus::BGWH_STOPPED => return true,
            pg_sys::BgwHandleStatus::BGWH_POSTMASTER_DIED => return false,
            _ => {}
        }
        // The postmaster signals this process when the helper starts or stops (bgw_notify_pid); the
        // timeout is only a safety net.
        if !BackgroundWorker::wait_latch(Some(Duration::from_secs(1))) {
            return false;
        }
    }
}

/// Exit callback of the worker: ends the database check it started, if it still runs.
#[pg_guard]
unsafe extern "C-unwind" fn stop_database_check(_code: std::ffi::c_int, handle: pg_sys::Datum) {
    // SAFETY: the Datum holds the handle registered in wait_for_database, still allocated here.
    unsafe { pg_sys::TerminateBackgroundWorker(handle.cast_mut_ptr()) };
}

/// Entry point of the database check: connected to no database, waits until `dropstock.database`
/// exists, then exits so the worker that started it can connect.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn dropstock_database_check_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // No database: shared catalogs such as pg_database only, like PostgreSQL's own launchers.
    BackgroundWorker::connect_worker_to_spi(None, None);
    let database = database_name();
    let mut pause = DATABASE_PAUSE_FIRST;
    let mut told = false;
    let mut failed_before = false;
    loop {
        let name = CString::new(database.as_str()).unwrap_or_default();
        let exists = in_transaction("checking that the database exists", || {
            Ok::<_, std::convert::Infallible>(database_exists(&name))
        });
        match exists {
            Ok(true) => break,
            Ok(false) if !told => {
                told = true;
                ErrorReport::new(
                    // 3D000, the code PostgreSQL gives "database does not exist" (ERRCODE_UNDEFINED_DATABASE).
                    PgSqlErrorCode::ERRCODE_INVALID_CATALOG_NAME,
                    format!(
                        "{WORKER_NAME}: database \"{database}\" named by dropstock.database does not exist"
                    ),
                    "dropstock_database_check_main",
                )
                .set_detail(format!(
                    "Holds do not expire on time and stock changes are not published until it does. The \
                     worker checks again with a growing pause (at most {} s, or at once on a \
                     configuration reload) and starts serving as soon as the database exists.",
                    DATABASE_PAUSE_MAX.as_secs()
                ))
                .set_hint(format!(
                    "Create the database (CREATE DATABASE \"{database}\") and run CREATE EXTENSION \
                     dropstock in it, or set dropstock.database in postgresql.conf to an existing \
                     database and restart the server."
                ))
                .report(PgLogLevel::WARNING);
                report_activity(
                    STATE_IDLE,
                    &format!("dropstock: waiting for database \"{database}\" to exist"),
                );
            }
            Ok(false) => {}
            Err(failure) if !failed_before => {
                // Not expected (a shared catalog read), but never a reason to end: say it once, retry.
                failed_before = true;
                failure.report("");
            }
            Err(_) => {}
        }
        if !BackgroundWorker::wait_latch(Some(pause)) {
            // SAFETY: ends this process the way PostgreSQL's own workers do, running its exit callbacks.
            unsafe { pg_sys::proc_exit(0) };
        }
        if BackgroundWorker::sighup_received() {
            // A reload is also the way to ask for a check now: the loop goes round at once.
            // SAFETY: outside any transaction, as postgres' own background processes do on SIGHUP.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        pause = (pause * 2).min(DATABASE_PAUSE_MAX);
    }
    if told {
        log!("{WORKER_NAME}: database \"{database}\" exists now; connecting to it");
    }
    // Exit code 0: a dynamic worker is never restarted, and a 0 keeps the postmaster from logging it.
    // SAFETY: ends this process the way PostgreSQL's own workers do, running its exit callbacks.
    unsafe { pg_sys::proc_exit(0) };
}

/// Whether a database of that name exists; in a transaction of a process connected to no database.
///
/// Not `get_database_oid`: it reads pg_database through its index, and opening an index reads pg_class,
/// which a process without a database cannot do until some backend has cached the shared catalogs'
/// indexes (in a fresh cluster none has, and the read is FATAL). pg_database is scanned without its
/// index instead, as PostgreSQL's autovacuum launcher does; it has a handful of rows.
fn database_exists(name: &CStr) -> bool {
    // SAFETY: a catalog scan inside the caller's transaction; the key points at `name`, which outlives
    // the scan, and everything opened here is closed before returning.
    unsafe {
        let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
        pg_sys::ScanKeyInit(
            &mut key,
            pg_sys::Anum_pg_database_datname as pg_sys::AttrNumber,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::Oid::from(pg_sys::F_NAMEEQ),
            pg_sys::Datum::from(name.as_ptr()),
        );
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let catalog = pg_sys::table_open(pg_sys::DatabaseRelationId, lock);
        let scan = pg_sys::systable_beginscan(
            catalog,
            pg_sys::Oid::from(pg_sys::DatabaseNameIndexId),
            false,
            std::ptr::null_mut(),
            1,
            &mut key,
        );
        let found = !pg_sys::systable_getnext(scan).is_null();
        pg_sys::systable_endscan(scan);
        pg_sys::table_close(catalog, lock);
        found
    }
}

/// The worker's main loop, connected to `database`: wait for the extension, then tick until SIGTERM.
fn serve(database: &str) {
    let mut installed = false;
    let mut told_waiting = false;
    let mut trouble: Option<Trouble> = None;
    let mut pause = tick_interval();
    let mut sweep = Sweep { last_full: None };
    let mut look = Look::default();
    // The latch is set by SIGHUP, SIGTERM and commits that changed something (`wake`), so a wake-up
    // is not a tick's due time: these two keep the gaps.
    let mut last_tick: Option<Instant> = None;
    let mut retry_at: Option<Instant> = None;
    while BackgroundWorker::wait_latch(Some(pause)) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: called from the worker's main loop, outside any transaction, as postgres' own
            // background processes do when their SIGHUP flag is set.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        pause = tick_interval();
        // While ticks fail, commits do not shorten the pause between attempts.
        if let Some(at) = retry_at {
            let now = Instant::now();
            if now < at {
                pause = at - now;
                continue;
            }
        }
        let gap = MIN_TICK_GAP.min(tick_interval());
        if let Some(since) = last_tick.map(|at| at.elapsed()) {
            if since < gap {
                std::thread::sleep(gap - since);
            }
        }
        // SAFETY: a plain read of shared recovery state, valid in any backend.
        if unsafe { pg_sys::RecoveryInProgress() } {
            continue;
        }
        if !installed {
            match extension_installed() {
                Ok(true) => {
                    installed = true;
                    told_waiting = false;
                }
                Ok(false) => {
                    // Not a fault: the database was made for dropstock and the extension comes next.
                    if !told_waiting {
                        told_waiting = true;
                        log!(
                            "{WORKER_NAME}: waiting for CREATE EXTENSION dropstock in database \"{database}\""
                        );
                    }
                    report_activity(
                        STATE_IDLE,
                        "dropstock: waiting for CREATE EXTENSION dropstock in this database",
                    );
                    continue;
                }
                Err(failure) => {
                    pause = note_failure(&mut trouble, failure);
                    retry_at = Some(Instant::now() + pause);
                    continue;
                }
            }
        }
        last_tick = Some(Instant::now());
        let outcome = tick(&mut sweep, &mut look);
        // A long-lived process sends its table statistics only when asked (backends do it when they
        // go idle): without this, autovacuum never learns of the rows the sweep ends and leaves their
        // dead versions, and the index entries that point at them, in place.
        // SAFETY: called between transactions, as PostgreSQL's own background processes do.
        unsafe { pg_sys::pgstat_report_stat(false) };
        match outcome {
            Ok(()) => {
                retry_at = None;
                if let Some(ended) = trouble.take() {
                    ended.report_recovery();
                }
                report_activity(STATE_IDLE, "dropstock: waiting for the next tick");
            }
            // A dropped extension makes every tick fail, but it is a choice, not a fault: wait again
            // quietly instead of logging errors until it is back.
            Err(_) if extension_installed() == Ok(false) => {
                installed = false;
                trouble = None;
            }
            Err(failure) => {
                pause = note_failure(&mut trouble, failure);
                retry_at = Some(Instant::now() + pause);
            }
        }
    }
}

fn extension_installed() -> Result<bool, Failure> {
    in_transaction("checking for the extension", || {
        Spi::get_one::<bool>("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'dropstock')")
            .map(|found| found.unwrap_or(false))
    })
}

/// A frequent tick: holds that fell due in the last 10 seconds; see `Sweep`.
const SWEEP_RECENT: &str =
    "SELECT dropstock.expire_reservations($1, now() - interval '10 seconds')";
/// A full sweep: every due hold, however old.
const SWEEP_ALL: &str = "SELECT dropstock.expire_reservations($1)";
/// How often a tick looks at everything: every due hold, however old, and every drop with live holds;
/// see `Sweep` and `Look`.
const FULL_TICK_EVERY: Duration = Duration::from_secs(30);

/// Which ticks look at everything. Ended holds leave dead entries in the due-holds and live-hold
/// indexes until vacuum removes them, and a walk from the oldest entry steps over them all. So most
/// ticks sweep only holds that fell due in the last few seconds (a tick comes every 100 ms, so each
/// hold falls in that window many times) and publish the drops the commits listed (`Look`); every
/// `FULL_TICK_EVERY` one sweeps them all, for holds a purchase or cancel had locked or that fell due
/// while the worker was held up, and looks at every drop that may have changed, for changes no backend
/// listed.
struct Sweep {
    last_full: Option<std::time::Instant>,
}

impl Sweep {
    /// Whether this tick looks at everything.
    fn full(&mut self) -> bool {
        let now = std::time::Instant::now();
        if self
            .last_full
            .is_some_and(|at| now.duration_since(at) < FULL_TICK_EVERY)
        {
            return false;
        }
        self.last_full = Some(now);
        true
    }
}

/// How a publication finds the drops that changed: from the list of changed drops that commits leave
/// in shared memory (`wake`), or, when that list cannot be trusted, by looking at every drop that may
/// have changed (every drop with live holds, walking the live-hold index, slow while ended holds' dead
/// entries wait for vacuum, and every drop that held units at its last publication). It cannot be
/// trusted on the worker's first publication (the list may have missed changes while no worker ran),
/// after a failed one (the list it took is gone), and when it overflowed. A full tick (`Sweep`) looks
/// at every drop that may have changed besides the list, for changes no backend listed (a prepared
/// transaction, committed from another session).
#[derive(Default)]
struct Look {
    trusted: bool,
}

impl Look {
    /// What to pass to `_publish_changes`, or None when the list cannot be trusted. Takes the list
    /// either way, so the list is empty again.
    fn changed_drops(&mut self) -> Option<crate::wake::Changed> {
        let listed = crate::wake::take_changed_drops();
        // Until the publication commits, a failure would lose what was taken.
        let trusted = std::mem::replace(&mut self.trusted, false);
        listed.filter(|_| trusted)
    }

    fn published(&mut self) {
        self.trusted = true;
    }
}

/// One tick: expire due holds in bounded batches, one transaction each, until fewer than a batch were
/// due (their units going to waiting lists first); run the draws whose entries closed; then publish
/// what changed. The first error ends the tick; what was committed stays.
fn tick(sweep: &mut Sweep, look: &mut Look) -> Result<(), Failure> {
    let batch = settings::SWEEP_BATCH.get().max(1);
    report_activity(STATE_RUNNING, "dropstock: expiring holds");
    let full = sweep.full();
    let query = if full { SWEEP_ALL } else { SWEEP_RECENT };
    loop {
        let ended = in_transaction("expiring holds", || {
            Spi::get_one_with_args::<i32>(query, &[batch.into()])
        })?
        .unwrap_or(0);
        if ended < batch || BackgroundWorker::sigterm_received() {
            break;
        }
    }
    report_activity(STATE_RUNNING, "dropstock: running due draws");
    in_transaction("running due draws", || {
        Spi::get_one::<i32>("SELECT dropstock.run_due_draws()")
    })?;
    report_activity(STATE_RUNNING, "dropstock: publishing stock changes");
    // Taken before the publication's transaction, so its snapshot sees every listed drop's change.
    let (listed, made_holds, made_at) = match look.changed_drops() {
        Some(changed) => (
            Some(changed.drops),
            Some(changed.made_holds),
            Some(changed.made_at),
        ),
        None => (None, None, None),
    };
    in_transaction("publishing stock changes", || {
        Spi::get_one_with_args::<i32>(
            "SELECT dropstock._publish_changes($1, $2, $3, $4)",
            &[
                listed.into(),
                made_holds.into(),
                made_at.into(),
                full.into(),
            ],
        )
    })?;
    look.published();
    Ok(())
}

/// Counts a failed attempt, logs it when due, shows the back-off, and returns the pause before the
/// next attempt.
fn note_failure(trouble: &mut Option<Trouble>, failure: Failure) -> Duration {
    let pause = match trouble {
        None => {
            failure.report(&format!(
                "The worker keeps running and tries again with a growing pause (at most {} s); while \
                 the same error repeats it is logged at most once a minute.",
                FAILURE_PAUSE_MAX.as_secs()
            ));
            let pause = FAILURE_PAUSE_FIRST;
            *trouble = Some(Trouble::new(&failure));
            pause
        }
        Some(known) => known.again(&failure),
    };
    report_activity(
        STATE_IDLE,
        &format!(
            "dropstock: backing off after an error ({} failed): {}",
            failure.step, failure.message
        ),
    );
    pause
}

/// A run of failed attempts, from the first failure to the next tick that succeeds.
struct Trouble {
    /// When the first attempt of this run failed, to say how long ticks were failing.
    since: Instant,
    /// Failed attempts so far in this run: sets the growing pause.
    failures: u32,
    /// What was logged last (step, SQLSTATE, message): a different failure is logged at once.
    logged: String,
    /// When the last failure was logged, so the same one is logged at most once a minute.
    logged_at: Instant,
    /// Failures like the logged one since it was logged, reported with the next line about it.
    unlogged: u32,
}

impl Trouble {
    fn new(failure: &Failure) -> Trouble {
        let now = Instant::now();
        Trouble {
            since: now,
            failures: 1,
            logged: failure.key(),
            logged_at: now,
            unlogged: 0,
        }
    }

    /// Another failed attempt: logs it if it differs from the last one logged or a minute has passed.
    fn again(&mut self, failure: &Failure) -> Duration {
        self.failures += 1;
        let key = failure.key();
        if key != self.logged {
            failure
                .report("A different error than the one logged before; the worker keeps trying.");
            self.logged = key;
            self.logged_at = Instant::now();
            self.unlogged = 0;
        } else if self.logged_at.elapsed() >= REPEAT_LOG_EVERY {
            failure.report(&format!(
                "The same error happened {} more times in the last {} s; ticks have been failing for \
                 {} s. The worker keeps trying.",
                self.unlogged + 1,
                self.logged_at.elapsed().as_secs(),
                self.since.elapsed().as_secs()
            ));
            self.logged_at = Instant::now();
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        let doublings = (self.failures - 1).min(16);
        (FAILURE_PAUSE_FIRST * 2u32.pow(doublings)).min(FAILURE_PAUSE_MAX)
    }

    fn report_recovery(self) {
        log!(
            "{WORKER_NAME}: ticks succeed again after {} failed attempts over {:.1} s",
            self.failures,
            self.since.elapsed().as_secs_f64()
        );
    }
}

/// An error that ended a unit of the worker's work, kept to be logged (PostgreSQL's own report of it
/// was discarded when it was caught).
#[derive(Debug, PartialEq)]
struct Failure {
    /// What the worker was doing, for the log line ("publishing stock changes").
    step: &'static str,
    code: PgSqlErrorCode,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

impl Failure {
    fn caught(step: &'static str, caught: CaughtError) -> Failure {
        let report = match caught {
            CaughtError::PostgresError(report) | CaughtError::ErrorReport(report) => report,
            CaughtError::RustPanic { ereport, .. } => ereport,
        };
        Failure {
            step,
            code: report.sql_error_code(),
            message: report.message().to_string(),
            detail: report.detail().map(str::to_string),
            hint: report.hint().map(str::to_string),
        }
    }

    fn key(&self) -> String {
        format!("{}\n{:?}\n{}", self.step, self.code, self.message)
    }

    /// Logs the failure as a WARNING with its own SQLSTATE, DETAIL and HINT, followed by `outlook`.
    fn report(&self, outlook: &str) {
        let detail = match (&self.detail, outlook.is_empty()) {
            (Some(detail), false) => format!("{detail}\n{outlook}"),
            (Some(detail), true) => detail.clone(),
            (None, _) => outlook.to_string(),
        };
        let mut report = ErrorReport::new(
            self.code,
            format!("{WORKER_NAME}: {} failed: {}", self.step, self.message),
            "dropstock_worker_main",
        );
        if !detail.is_empty() {
            report = report.set_detail(detail);
        }
        if let Some(hint) = &self.hint {
            report = report.set_hint(hint.clone());
        }
        report.report(PgLogLevel::WARNING);
    }
}

/// Runs `body` in a transaction of its own and commits it. An error anywhere (in the body, or at
/// commit: NOTIFY checks its queue there) rolls the transaction back and comes back as a `Failure`,
/// and the process carries on, where an uncaught error would end it.
///
/// `BackgroundWorker::transaction` would not do: it lets the error escape, which ends the worker. The
/// recovery below is what PostgreSQL's own long-lived processes do after an error (the autovacuum
/// launcher, the logical replication launcher): the error state is flushed (pgrx does it when it turns
/// the error into a panic, and again after the catch), interrupts are held while the transaction is
/// aborted, and the next transaction starts from the top-level memory context.
fn in_transaction<T, E: Display>(
    step: &'static str,
    body: impl FnOnce() -> Result<T, E> + UnwindSafe + RefUnwindSafe,
) -> Result<T, Failure> {
    let outcome = PgTryBuilder::new(move || {
        // SAFETY: called between transactions from the worker's loop, as BackgroundWorker::transaction
        // does; the snapshot pushed here is popped before the commit, or dropped by the abort below.
        unsafe {
            pg_sys::SetCurrentStatementStartTimestamp();
            pg_sys::StartTransactionCommand();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        }
        let value = body();
        if value.is_ok() {
            // SAFETY: the snapshot pushed above is the active one; the transaction is ours to end.
            unsafe {
                pg_sys::PopActiveSnapshot();
                pg_sys::CommitTransactionCommand();
            }
        }
        value.map_err(|e| Failure {
            step,
            code: PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            message: e.to_string(),
            detail: None,
            hint: None,
        })
    })
    .catch_others(move |caught| Err(Failure::caught(step, caught)))
    .execute();
    if outcome.is_err() {
        // SAFETY: the error was caught and its state flushed; aborting is valid in any transaction
        // state (it does nothing when none is open), with interrupts held as in PostgresMain's recovery.
        unsafe {
            pg_sys::InterruptHoldoffCount += 1;
            pg_sys::AbortCurrentTransaction();
            pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
            pg_sys::InterruptHoldoffCount -= 1;
        }
    }
    outcome
}

/// Shows what the worker does in `pg_stat_activity` (`state` and `query`).
fn report_activity(state: pg_sys::BackendState::Type, activity: &str) {
    let text = CString::new(activity.replace('\0', "")).unwrap_or_default();
    // SAFETY: copies the text into this backend's own status entry; a no-op when there is none.
    unsafe { pg_sys::pgstat_report_activity(state, text.as_ptr()) };
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn the_worker_runs_when_the_library_is_preloaded() {
        assert!(boolean("SELECT dropstock.worker_preloaded()"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            run("SELECT pg_stat_clear_snapshot()");
            let running = int(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'dropstock worker'",
            );
            if running == 1 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no dropstock worker in pg_stat_activity"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    #[pg_test]
    fn the_worker_settings_have_their_documented_defaults() {
        assert_eq!(text("SHOW dropstock.tick_ms"), "100ms");
        assert_eq!(text("SHOW dropstock.sweep_batch"), "1000");
        assert_eq!(text("SHOW dropstock.wake_on_commit"), "on");
    }
}
