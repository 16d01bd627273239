//! dropstock: limited-edition product drops inside PostgreSQL.
//!
//! The SQL API (holds, purchases, expiry, drops and buyers) lives in `sql/*.sql`, one file per concept,
//! loaded by the module of the same name below, whose `#[pg_test]`s sit beside it. The API is plpgsql
//! on purpose: each refusal carries its own SQLSTATE (class `DS`), which a client can only see when no
//! Rust frame sits between the `RAISE` and the client (pgrx maps unknown codes to XX000), and plpgsql
//! caches the plans of the hot path the same way a Rust SPI caller would. Rust runs what SQL cannot:
//! the settings, the background worker (`worker`), and the one place where plpgsql's own cost showed:
//! `reserve_item`'s fast path (`reserve::fast_path`), which refuses nothing and hands every case it
//! does not make a hold for to the plpgsql rules.
//!
//! # Glossary
//! One word per thing, in code, comments and docs. The SQL API keeps the names of the system dropstock
//! replaces (`users`, `reservations`, `purchases`, `reserve_item`), so where a name says otherwise the
//! word is given with it.
//! - **drop**: a product released at a set time with a fixed number of **units** (`drops`).
//! - **variant**: one size of a drop sold by size, with its own stock (`variants`, labelled, numbered from
//!   1); a drop without sizes has one implicit variant, number 0 with no label, so both take one path.
//! - **slot**: one of up to 64 rows a variant's stock is striped over (`stock_slots`); stock is their sum.
//! - **buyer**: someone who may hold and buy units (a row of `users`, a `user_id`).
//! - **hold**: `quantity` units of one variant set aside for one buyer until it runs out (a row of
//!   `reservations`, made by `reserve_item`); **live** while `reserved` and not past due; it **ends**, for
//!   all its units at once, as a sale, a cancel or an expiry; **extended** by `extend_hold`.
//! - **sale**: a hold turned into a purchase (a row of `purchases`).
//! - **sweep**: ending past-due holds and giving their units back (`expire_reservations`, the worker).
//! - **reclaim**: a reserver taking over a past-due hold's unit before the sweep has seen it.
//! - **buyer lock**: the per-(drop, buyer) lock every decision about a buyer's holds takes first.
//! - **feed**: the stream of stock changes the worker publishes with `NOTIFY dropstock`; one **notice**
//!   is one notification's payload; a **publication** is one `publish_changes` run (the worker's,
//!   `_publish_changes`, is told which drops changed).
//! - **changed drops**: the drops whose changes committed since the worker's last publication, which
//!   commits list for it in shared memory (`wake`).
//! - **waiting list** (`waitlist`): buyers waiting for a sold-out or fully held drop, one **line** per
//!   drop in order of **place**; a buyer waits for any of several sizes and for one or more units.
//! - **offer**: a hold made for the first buyer in line when units come back (a hold with `offered`);
//!   **kept** units: units set aside for a buyer in line who wants more than have come back so far.
//! - **give back**: units of an ended hold going to the line first, to stock only if nobody waits.
//! - **cooldown**: a buyer whose hold ended while others waited may not reserve that drop for a while.
//! - **draw**: a drop sold by lot (`mode = 'draw'`): buyers **enter** it, and the draw orders the
//!   entries by a hash of a published **seed** and each entry's id; that order becomes the drop's line.
//! - **inbox**: a buyer's private part of the feed (their offers, `NOTIFY dropstock_inbox`), named by
//!   the hash of a secret only the buyer holds (`inbox_key`).

::pgrx::pg_module_magic!(name, version);

mod access;
mod cancel;
mod draw;
mod drops;
mod expiry;
mod feed;
mod purchase;
mod reserve;
mod schema;
mod settings;
mod stock;
mod users;
mod waitlist;
mod wake;
mod worker;

use pgrx::prelude::*;

/// Library load: define the settings; when preloaded, also register the background worker.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    settings::register();
    // No worker during pg_upgrade, which starts the server in binary-upgrade mode to restore the
    // schema: the worker would write to a database that is still being restored (pg_cron does the same).
    // SAFETY: plain reads of flags PostgreSQL sets before it loads shared_preload_libraries.
    if unsafe { pg_sys::IsBinaryUpgrade } {
        return;
    }
    // SAFETY: as above.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        wake::init();
        worker::register();
    }
}

#[cfg(any(test, feature = "pg_test"))]
mod testing;

/// Required by `cargo pgrx test`: one-off setup and the test cluster's postgresql.conf settings.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        // The worker runs during the tests as it does in production, in the test database.
        vec![
            "shared_preload_libraries = 'dropstock'",
            "dropstock.database = 'pgrx_tests'",
        ]
    }
}
