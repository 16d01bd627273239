//! Configuration (GUCs), registered whenever the library loads so `SHOW` and `SET` know them.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// The database the background worker serves (`dropstock.database`); fixed at server start. One that
/// does not exist yet is waited for, not an error: databases are often created after the server starts.
pub static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(DEFAULT_DATABASE));
/// `dropstock.database` when postgresql.conf does not set it.
pub const DEFAULT_DATABASE: &std::ffi::CStr = c"postgres";
/// Milliseconds between the worker's ticks (`dropstock.tick_ms`); reloaded on SIGHUP.
pub static TICK_MS: GucSetting<i32> = GucSetting::<i32>::new(100);
/// Whether a commit that changed the feed wakes the worker at once (`dropstock.wake_on_commit`);
/// reloaded on SIGHUP. Off, changes wait for the next tick.
pub static WAKE_ON_COMMIT: GucSetting<bool> = GucSetting::<bool>::new(true);
/// Holds one expiry batch ends in one transaction (`dropstock.sweep_batch`); reloaded on SIGHUP.
pub static SWEEP_BATCH: GucSetting<i32> = GucSetting::<i32>::new(1000);

pub fn register() {
    GucRegistry::define_string_guc(
        c"dropstock.database",
        c"Database the dropstock background worker serves.",
        c"CREATE EXTENSION dropstock is refused in any other database while the library is preloaded. \
          If the database does not exist, the worker logs it once and starts when it is created.",
        &DATABASE,
        GucContext::Postmaster,
        // Which database the worker writes to is the server administrator's business, as pg_cron's
        // cron.database_name is: ordinary roles cannot even read it.
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"dropstock.tick_ms",
        c"Milliseconds between ticks of the dropstock background worker.",
        c"Each tick expires due holds and publishes stock changes with NOTIFY.",
        &TICK_MS,
        10,
        60_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_bool_guc(
        c"dropstock.wake_on_commit",
        c"Whether a commit that changes the stock feed wakes the dropstock background worker at once.",
        c"On, screens see a change within milliseconds, with ticks at least 50 ms apart under load. \
          Off, a change waits for the next tick (dropstock.tick_ms).",
        &WAKE_ON_COMMIT,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"dropstock.sweep_batch",
        c"Holds the dropstock background worker expires per transaction.",
        c"The worker repeats batches until no hold is due; smaller batches hold row locks for less time.",
        &SWEEP_BATCH,
        1,
        100_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
}
