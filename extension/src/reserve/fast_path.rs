//! `reserve_item`'s fast path: the common hold, made by reading and writing rows directly.
//!
//! Most calls on drop day are a new buyer asking for a drop that has free units: nothing to refuse,
//! nobody in line, no live hold to hand back. `_reserve` (sql/reserve.sql) answers them with a dozen
//! plpgsql statements and two subtransactions, because it also decides every other case, for batches
//! too. Here that one case is decided without any statement:
//!
//! 1. after the buyer lock, one look at everything that could make the answer anything but a new hold
//!    (the drop open and first come first served, the buyer known, no live hold, nobody in the drop's
//!    line at all, the buyer not cooling down, the limit not reached): index probes (`look`);
//! 2. the units taken from one slot nobody is committing on, and the hold inserted (`claim`).
//!
//! Whenever either comes up empty, `_reserve_fast` returns NULL having changed nothing, and
//! `reserve_item` asks `_reserve_item`, which decides with the full rules (and raises the refusal with
//! its own SQLSTATE: a refusal raised through a Rust frame would lose it, so none is raised here). So
//! this path only ever gives the answer the full rules would give, and gives it in the same lock order
//! (stock.sql): the buyer lock first, then at most one slot of the variant.
//!
//! Why no statements: the same two steps as two prepared SQL statements spent most of their time
//! starting and ending the executor for plans of a dozen nodes, not reading rows (a `perf` profile of
//! `make bench-sql`'s row (b): 52% of all CPU in the two statements, 21% in `ExecutorStart` alone).
//! The probes read what those plans read, under the same snapshot rules; the writes go through the
//! single-row helpers PostgreSQL applies replicated rows with, so constraints, every index and
//! triggers are kept (rows.rs).
//!
//! The claim runs in a subtransaction under the first pass's short lock_timeout, as `_claim_free` does:
//! a slot can be locked and then found emptied by the commit that held it (its latest version no longer
//! has the units), and undoing the subtransaction lets such a slot go before the full rules run; the
//! timeout bounds the one wait left, a unique-index check behind a hold of the same buyer being
//! committed.

use super::rows::{self, Index, Key, Locked, Table, Writes};
use pgrx::pg_sys;
use pgrx::pg_sys::errcodes::PgSqlErrorCode;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use std::ffi::CStr;

/// Slots per variant (stock.sql stripes every variant's units over slots 0 to 63).
const SLOTS: i16 = 64;

// Built-in functions called directly (their pg_sys bindings are Rust wrappers, not C function pointers).
unsafe extern "C-unwind" {
    fn uuid_hash_extended(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
    fn pg_advisory_xact_lock_int8(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
    fn btrim1(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
    fn enum_in(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
}

/// What the look found: the call can be a new hold of `variant`, lasting `hold_seconds`.
struct Open {
    hold_seconds: i32,
    variant: i16,
}

/// The call's arguments, checked.
struct Call {
    drop_id: pg_sys::Datum,
    user_id: pg_sys::Datum,
    size: Option<pg_sys::Datum>,
    quantity: i32,
}

/// `_reserve_fast(drop_id, user_id, variant, quantity)`: the new hold, or NULL when the full rules
/// must decide (sql/reserve.sql, `reserve_item`).
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn reserve_fast(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: called by the function manager with four arguments, as sql/reserve.sql declares.
    unsafe {
        let args = (*fcinfo).args.as_slice(4);
        let quantity = args[3].value.value() as i32;
        // Missing arguments, a quantity out of range, and isolation levels the rules refuse: the full
        // rules answer them.
        if args[0].isnull
            || args[1].isnull
            || args[3].isnull
            || !(1..=10_000).contains(&quantity)
            || pg_sys::XactIsoLevel != pg_sys::XACT_READ_COMMITTED as i32
        {
            return null_answer(fcinfo);
        }
        let call = Call {
            drop_id: args[0].value,
            user_id: args[1].value,
            size: (!args[2].isnull).then_some(args[2].value),
            quantity,
        };
        let Some(schema) = rows::schema() else {
            return null_answer(fcinfo);
        };

        // The buyer lock (_lock_buyers, _buyer_key), taken here directly: the key is the same hash.
        let drop_hash = direct_call2(uuid_hash_extended, call.drop_id, pg_sys::Datum::from(0i64));
        let key = direct_call2(uuid_hash_extended, call.user_id, drop_hash);
        pg_sys::DirectFunctionCall1Coll(Some(pg_advisory_xact_lock_int8), pg_sys::InvalidOid, key);

        // What a statement run here would see: this transaction's earlier changes, and everything
        // committed before now (after the buyer lock, so a hold of this buyer committed meanwhile).
        pg_sys::CommandCounterIncrement();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        let snapshot = pg_sys::GetActiveSnapshot();
        let answer = match look(schema, snapshot, &call) {
            Some(open) => in_subtransaction(|| claim(schema, snapshot, &call, &open)),
            None => None,
        };
        pg_sys::PopActiveSnapshot();
        match answer {
            Some(hold) => {
                // SAFETY: a uuid argument is passed by reference to its 16 bytes.
                crate::wake::drop_changed(*call.drop_id.cast_mut_ptr::<[u8; 16]>(), true);
                hold
            }
            None => null_answer(fcinfo),
        }
    }
}

/// Step 1: Some when nothing stands in the way of a new hold: the drop is open, first come first
/// served, sized exactly when a size is named (and has it); the buyer exists, holds nothing of it,
/// is not cooling down and stays within the limit; nobody is in the drop's line.
unsafe fn look(schema: pg_sys::Oid, snapshot: pg_sys::Snapshot, call: &Call) -> Option<Open> {
    // SAFETY: index probes of the schema's tables under the caller's snapshot (rows.rs).
    unsafe {
        let share = pg_sys::AccessShareLock;
        let now = pg_sys::GetCurrentTimestamp();
        let uuid_eq = pg_sys::F_UUID_EQ;

        let (drops, by_id) = open_probed(schema, DROPS, share)?;
        let (mode, sized, starts_at, ends_at, hold_seconds, limit) = (
            rows::column(drops.desc(), c"mode")?,
            rows::column(drops.desc(), c"sized")?,
            rows::column(drops.desc(), c"starts_at")?,
            rows::column(drops.desc(), c"ends_at")?,
            rows::column(drops.desc(), c"hold_seconds")?,
            rows::column(drops.desc(), c"per_user_limit")?,
        );
        let mut drop = None;
        rows::probe(
            &drops,
            &by_id,
            snapshot,
            &[Key::eq(1, uuid_eq, call.drop_id)],
            |row| {
                let race = rows::value(row, mode).is_some_and(|m| {
                    CStr::from_ptr(pg_sys::text_to_cstring(m.cast_mut_ptr())) == c"race"
                });
                let open = rows::value(row, starts_at).is_some_and(|s| s.value() as i64 <= now)
                    && rows::value(row, ends_at).is_none_or(|e| now < e.value() as i64);
                if race
                    && open
                    && rows::value(row, sized).map(|s| s.value() != 0) == Some(call.size.is_some())
                {
                    drop = rows::value(row, hold_seconds)
                        .zip(rows::value(row, limit))
                        .map(|(h, l)| (h.value() as i32, l.value() as i32));
                }
                false
            },
        );
        let (hold_seconds, limit) = drop?;

        let variant = match call.size {
            None => 0,
            Some(size) => {
                let (variants, by_label) = open_probed(schema, SIZES, share)?;
                let number = rows::column(variants.desc(), c"variant")?;
                let label = pg_sys::DirectFunctionCall1Coll(Some(btrim1), pg_sys::InvalidOid, size);
                let keys = [
                    Key::eq(1, uuid_eq, call.drop_id),
                    Key::eq(2, pg_sys::F_TEXTEQ, label),
                ];
                let mut found = None;
                rows::probe(&variants, &by_label, snapshot, &keys, |row| {
                    found = rows::value(row, number).map(|v| v.value() as i16);
                    false
                });
                found.filter(|v| *v > 0)?
            }
        };

        // The buyer known, holding nothing of this drop, not cooling down; nobody in the drop's line.
        // A column these tests need that is missing counts as found: the full rules decide.
        let buyer_keys = [
            Key::eq(1, uuid_eq, call.drop_id),
            Key::eq(2, uuid_eq, call.user_id),
        ];
        let user = [Key::eq(1, uuid_eq, call.user_id)];
        if !known(schema, snapshot, USERS, &user)? {
            return None;
        }
        let holding = |holds: &Table, row| {
            rows::column(holds.desc(), c"status")
                .is_none_or(|s| rows::value(row, s) == Some(reserved_status(holds, s)))
        };
        if finds(schema, snapshot, LIVE_HOLDS, &buyer_keys, holding)? {
            return None;
        }
        let drop_key = [Key::eq(1, uuid_eq, call.drop_id)];
        if known(schema, snapshot, LINE, &drop_key)? {
            return None;
        }
        let cooling = |cooldowns: &Table, row| {
            rows::column(cooldowns.desc(), c"until")
                .is_none_or(|u| rows::value(row, u).is_some_and(|u| u.value() as i64 > now))
        };
        if finds(schema, snapshot, COOLDOWNS, &buyer_keys, cooling)? {
            return None;
        }

        let (purchases, bought) = open_probed(schema, PURCHASES, share)?;
        let units = rows::column(purchases.desc(), c"quantity")?;
        let mut sum = 0i64;
        let keys = [
            Key::eq(1, uuid_eq, call.user_id),
            Key::eq(2, uuid_eq, call.drop_id),
        ];
        rows::probe(&purchases, &bought, snapshot, &keys, |row| {
            sum += rows::value(row, units).map_or(0, |q| q.value() as i32 as i64);
            true
        });
        (sum + call.quantity as i64 <= limit as i64).then_some(Open {
            hold_seconds,
            variant,
        })
    }
}

/// A table, one of its indexes, and the index's leading key columns in order: every index the fast
/// path reads, named once.
type Probed = (&'static CStr, &'static CStr, &'static [&'static CStr]);
const DROPS: Probed = (c"drops", c"drops_pkey", &[c"id"]);
const SIZES: Probed = (
    c"variants",
    c"variants_drop_id_label_key",
    &[c"drop_id", c"label"],
);
const PURCHASES: Probed = (
    c"purchases",
    c"purchases_by_buyer",
    &[c"user_id", c"drop_id"],
);
const SLOTS_BY_KEY: Probed = (
    c"stock_slots",
    c"stock_slots_pkey",
    &[c"drop_id", c"variant", c"slot"],
);
const USERS: Probed = (c"users", c"users_pkey", &[c"id"]);
const LIVE_HOLDS: Probed = (
    c"reservations",
    c"reservations_one_live_hold",
    &[c"drop_id", c"user_id"],
);
const LINE: Probed = (c"waitlist", c"waitlist_pkey", &[c"drop_id"]);
const COOLDOWNS: Probed = (c"cooldowns", c"cooldowns_pkey", &[c"drop_id", c"user_id"]);

/// The table, locked in `lock` mode, and its index; None when either is not the one this code was
/// written for (rows.rs).
unsafe fn open_probed(
    schema: pg_sys::Oid,
    (table, index, columns): Probed,
    lock: u32,
) -> Option<(Table, Index)> {
    // SAFETY: as Table::open and Index::open.
    unsafe {
        let table = Table::open(schema, table, lock)?;
        let index = Index::open(schema, &table, index, columns)?;
        Some((table, index))
    }
}

/// Whether the index finds a row the snapshot sees and `accepts` takes; None when the table or the
/// index is not the one this code was written for.
unsafe fn finds(
    schema: pg_sys::Oid,
    snapshot: pg_sys::Snapshot,
    probed: Probed,
    keys: &[Key],
    accepts: impl Fn(&Table, *mut pg_sys::TupleTableSlot) -> bool,
) -> Option<bool> {
    // SAFETY: as rows::probe.
    unsafe {
        let (table, index) = open_probed(schema, probed, pg_sys::AccessShareLock)?;
        let mut found = false;
        rows::probe(&table, &index, snapshot, keys, |row| {
            found = accepts(&table, row);
            !found
        });
        Some(found)
    }
}

/// Whether the index finds a row the snapshot sees, without reading the row where the visibility
/// map vouches for it; None as for `finds`.
unsafe fn known(
    schema: pg_sys::Oid,
    snapshot: pg_sys::Snapshot,
    probed: Probed,
    keys: &[Key],
) -> Option<bool> {
    // SAFETY: as rows::exists.
    unsafe {
        let (table, index) = open_probed(schema, probed, pg_sys::AccessShareLock)?;
        Some(rows::exists(&table, &index, snapshot, keys))
    }
}

/// The `reservation_status` value 'reserved', by the type of the status column.
unsafe fn reserved_status(holds: &Table, status: i32) -> pg_sys::Datum {
    // SAFETY: the column exists; enum_in takes the label and the enum type's OID.
    unsafe {
        let attr = (*holds.desc()).attrs.as_slice(status as usize)[status as usize - 1];
        pg_sys::DirectFunctionCall2Coll(
            Some(enum_in),
            pg_sys::InvalidOid,
            pg_sys::Datum::from(c"reserved".as_ptr()),
            pg_sys::Datum::from(attr.atttypid),
        )
    }
}

/// Runs `claim` in a subtransaction under a 20 ms lock_timeout: the new hold as this function's
/// result, or None with everything the claim did undone (also when it ran into a lock timeout or a
/// unique violation).
unsafe fn in_subtransaction(
    claim: impl FnOnce() -> Option<pg_sys::Datum> + std::panic::UnwindSafe,
) -> Option<pg_sys::Datum> {
    // SAFETY: the subtransaction protocol of PL/pgSQL's exception blocks: begin, run in the caller's
    // memory context, then release or roll back, and put the caller's context and resource owner back.
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        let undone = |_: CaughtError| {
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            None
        };
        let made = PgTryBuilder::new(|| {
            // Undone with the subtransaction (or at its release, below), like a SET clause.
            let level = pg_sys::NewGUCNestLevel();
            pg_sys::set_config_option(
                c"lock_timeout".as_ptr(),
                c"20ms".as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
            let hold = claim();
            // A lock timeout that fires just as its lock is granted (a relation's extension lock
            // while many inserts grow the table, say) leaves its cancel pending, to be raised at the
            // next interrupt check. A statement checks again before it ends; this path might not,
            // and the check would come after the subtransaction, as a 55P03 ("too busy") that
            // reaches the buyer. Checked here, it is caught below, and the full rules decide.
            pgrx::check_for_interrupts!();
            pg_sys::AtEOXact_GUC(true, level);
            if hold.is_some() {
                pg_sys::ReleaseCurrentSubTransaction();
            } else {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
            }
            hold
        })
        .catch_when(PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE, undone)
        .catch_when(PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION, undone)
        .execute();
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
        made
    }
}

/// Step 2: takes the units from the first slot of the variant, from this backend's home slot up, then
/// below it, that has them all and that nobody is committing on (`FOR UPDATE SKIP LOCKED`), and
/// inserts the hold: the hold's row, or None (the caller undoes what was done).
unsafe fn claim(
    schema: pg_sys::Oid,
    snapshot: pg_sys::Snapshot,
    call: &Call,
    open: &Open,
) -> Option<pg_sys::Datum> {
    // SAFETY: rows.rs's reads and writes; the slots made here are dropped here.
    unsafe {
        let write = pg_sys::RowExclusiveLock;
        let (stock, by_slot) = open_probed(schema, SLOTS_BY_KEY, write)?;
        let available = rows::column(stock.desc(), c"available")?;
        let holds = Table::open(schema, c"reservations", write)?;
        let columns = hold_columns(&holds)?;

        let locked = pg_sys::table_slot_create(stock.0, std::ptr::null_mut());
        let home = (pg_sys::MyProcPid % SLOTS as i32) as i16;
        let mut taken = false;
        for (from, to) in [(home, SLOTS), (0, home)] {
            let keys = [
                Key::eq(1, pg_sys::F_UUID_EQ, call.drop_id),
                Key::eq(2, pg_sys::F_INT2EQ, pg_sys::Datum::from(open.variant)),
                Key {
                    column: 3,
                    strategy: pg_sys::BTGreaterEqualStrategyNumber as u16,
                    procedure: pg_sys::F_INT2GE,
                    value: pg_sys::Datum::from(from),
                },
                Key {
                    column: 3,
                    strategy: pg_sys::BTLessStrategyNumber as u16,
                    procedure: pg_sys::F_INT2LT,
                    value: pg_sys::Datum::from(to),
                },
            ];
            let has_units = |row| {
                rows::value(row, available).is_some_and(|a| a.value() as i32 >= call.quantity)
            };
            rows::probe(&stock, &by_slot, snapshot, &keys, |row| {
                // As the executor's SKIP LOCKED: test, lock the latest version, test that again.
                taken = has_units(row)
                    && matches!(rows::lock(&stock, row, snapshot, locked), Locked::Row)
                    && has_units(locked);
                !taken
            });
            if taken {
                break;
            }
        }
        if !taken {
            pg_sys::ExecDropSingleTupleTableSlot(locked);
            return None;
        }

        // The slot, its units fewer.
        let left = rows::value(locked, available).map_or(0, |a| a.value() as i32) - call.quantity;
        let slot_row = rows::new_row(&stock);
        pg_sys::slot_getallattrs(locked);
        let natts = (*stock.desc()).natts as usize;
        std::ptr::copy_nonoverlapping((*locked).tts_values, (*slot_row).tts_values, natts);
        std::ptr::copy_nonoverlapping((*locked).tts_isnull, (*slot_row).tts_isnull, natts);
        rows::set(slot_row, available, pg_sys::Datum::from(left));
        pg_sys::ExecStoreVirtualTuple(slot_row);
        let mut writes = Writes::start(snapshot);
        let target = writes.target(&stock);
        writes.update(target, locked, slot_row);

        // The hold, with the columns' defaults as the table declares them (sql/schema.sql).
        let hold = rows::new_row(&holds);
        let mut id = [0u8; 16];
        if !pg_sys::pg_strong_random(id.as_mut_ptr().cast(), id.len()) {
            error!("dropstock: could not generate a random hold id");
        }
        id[6] = (id[6] & 0x0f) | 0x40; // version 4, as gen_random_uuid()
        id[8] = (id[8] & 0x3f) | 0x80;
        let id_datum = pg_sys::palloc(16) as *mut u8;
        std::ptr::copy_nonoverlapping(id.as_ptr(), id_datum, 16);
        let expires = pg_sys::GetCurrentTimestamp() + open.hold_seconds as i64 * 1_000_000;
        let values = [
            (columns.id, pg_sys::Datum::from(id_datum)),
            (columns.drop_id, call.drop_id),
            (columns.user_id, call.user_id),
            (columns.status, reserved_status(&holds, columns.status)),
            (columns.expires_at, pg_sys::Datum::from(expires)),
            (
                columns.created_at,
                pg_sys::Datum::from(pg_sys::GetCurrentTransactionStartTimestamp()),
            ),
            (columns.variant, pg_sys::Datum::from(open.variant)),
            (columns.quantity, pg_sys::Datum::from(call.quantity)),
            (columns.extensions, pg_sys::Datum::from(0i32)),
            (columns.offered, pg_sys::Datum::from(false)),
        ];
        for (number, datum) in values {
            rows::set(hold, number, datum);
        }
        pg_sys::ExecStoreVirtualTuple(hold);
        let target = writes.target(&holds);
        writes.insert(target, hold);
        writes.finish();

        let row = pg_sys::ExecCopySlotHeapTuple(hold);
        let datum = pg_sys::heap_copy_tuple_as_datum(row, holds.desc());
        pg_sys::ExecDropSingleTupleTableSlot(hold);
        pg_sys::ExecDropSingleTupleTableSlot(slot_row);
        pg_sys::ExecDropSingleTupleTableSlot(locked);
        Some(datum)
    }
}

/// The numbers of `reservations`' columns; None when the table has a column this code does not fill.
struct HoldColumns {
    id: i32,
    drop_id: i32,
    user_id: i32,
    status: i32,
    expires_at: i32,
    created_at: i32,
    variant: i32,
    quantity: i32,
    extensions: i32,
    offered: i32,
}

unsafe fn hold_columns(holds: &Table) -> Option<HoldColumns> {
    // SAFETY: an open table's descriptor.
    unsafe {
        let desc = holds.desc();
        let live = (*desc)
            .attrs
            .as_slice((*desc).natts as usize)
            .iter()
            .filter(|a| !a.attisdropped);
        if live.count() != 10 {
            return None;
        }
        Some(HoldColumns {
            id: rows::column(desc, c"id")?,
            drop_id: rows::column(desc, c"drop_id")?,
            user_id: rows::column(desc, c"user_id")?,
            status: rows::column(desc, c"status")?,
            expires_at: rows::column(desc, c"expires_at")?,
            created_at: rows::column(desc, c"created_at")?,
            variant: rows::column(desc, c"variant")?,
            quantity: rows::column(desc, c"quantity")?,
            extensions: rows::column(desc, c"extensions")?,
            offered: rows::column(desc, c"offered")?,
        })
    }
}

unsafe fn direct_call2(
    function: unsafe extern "C-unwind" fn(pg_sys::FunctionCallInfo) -> pg_sys::Datum,
    a: pg_sys::Datum,
    b: pg_sys::Datum,
) -> pg_sys::Datum {
    // SAFETY: a built-in function of two arguments that never returns NULL.
    unsafe { pg_sys::DirectFunctionCall2Coll(Some(function), pg_sys::InvalidOid, a, b) }
}

unsafe fn null_answer(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: fcinfo is the call's own.
    unsafe { (*fcinfo).isnull = true };
    pg_sys::Datum::from(0)
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_reserve_fast() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}
