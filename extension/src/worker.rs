//! The background worker: every tick it expires due holds and publishes stock changes with NOTIFY.
//!
//! It runs only when the library is preloaded (`shared_preload_libraries = 'dropstock'`), in the one
//! database named by `dropstock.database`. Buyers never wait for it: reserve_item and purchase stay
//! correct without it (a past-due hold is never purchasable and its unit is reclaimed when needed);
//! the worker only brings units back on time and tells the screens.

use crate::settings;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The name shown in `pg_stat_activity.backend_type` and in the server log.
pub const WORKER_NAME: &str = "dropstock worker";

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

/// Entry point of the worker process: connect, then tick until SIGTERM.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn dropstock_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = settings::DATABASE
        .get()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "postgres".into());
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    log!("{WORKER_NAME}: serving database \"{database}\"");

    let mut installed = false;
    while BackgroundWorker::wait_latch(Some(tick_interval())) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: called from the worker's main loop, outside any transaction, as postgres' own
            // background processes do when their SIGHUP flag is set.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        // SAFETY: a plain read of shared recovery state, valid in any backend.
        if unsafe { pg_sys::RecoveryInProgress() } {
            continue;
        }
        if !installed {
            installed = extension_installed();
            if !installed {
                continue;
            }
        }
        tick();
    }
    log!("{WORKER_NAME}: stopping");
    // Exit code 1, not 0: PostgreSQL never restarts a worker that exited 0, so a worker stopped by
    // pg_terminate_backend would stay gone. At server shutdown nothing is restarted either way.
    // SAFETY: ends this process the way PostgreSQL's own workers do, running its exit callbacks.
    unsafe { pg_sys::proc_exit(1) };
}

fn tick_interval() -> Duration {
    Duration::from_millis(settings::TICK_MS.get().max(1) as u64)
}

fn extension_installed() -> bool {
    BackgroundWorker::transaction(|| {
        Spi::get_one::<bool>("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'dropstock')")
            .ok()
            .flatten()
            .unwrap_or(false)
    })
}

/// One tick: expire due holds in bounded batches, one transaction each, until fewer than a batch were
/// due; then publish what changed. An error ends the worker with the error in the log, and PostgreSQL
/// starts it again a second later.
fn tick() {
    let batch = settings::SWEEP_BATCH.get().max(1);
    loop {
        let ended = BackgroundWorker::transaction(|| {
            Spi::get_one_with_args::<i32>(
                "SELECT dropstock.expire_reservations($1)",
                &[batch.into()],
            )
        })
        .unwrap_or_else(|e| panic!("{WORKER_NAME}: expiring holds failed: {e}"))
        .unwrap_or(0);
        if ended < batch || BackgroundWorker::sigterm_received() {
            break;
        }
    }
    BackgroundWorker::transaction(|| Spi::get_one::<i32>("SELECT dropstock.publish_changes()"))
        .unwrap_or_else(|e| panic!("{WORKER_NAME}: publishing stock changes failed: {e}"));
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
    }
}
