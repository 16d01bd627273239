//! `reserve_item`'s fast path: the common hold made in two statements, without plpgsql.
//!
//! Most calls on drop day are a new buyer asking for a drop that has free units: nothing to refuse,
//! nobody in line, no live hold to hand back. `_reserve` (sql/reserve.sql) answers them with a dozen
//! plpgsql statements and two subtransactions, because it also decides every other case, for batches
//! too. Here that one case is decided with two statements whose plans this backend keeps:
//!
//! 1. after the buyer lock, one look at everything that could make the answer anything but a new hold
//!    (the drop open and first come first served, the buyer known, no live hold, nobody in the drop's
//!    line at all, the buyer not cooling down, the limit not reached);
//! 2. one statement that takes the units from one slot nobody is committing on and inserts the hold.
//!
//! Whenever either comes up empty, `_reserve_fast` returns NULL having changed nothing, and
//! `reserve_item` asks `_reserve_item`, which decides with the full rules (and raises the refusal with
//! its own SQLSTATE: a refusal raised through a Rust frame would lose it, so none is raised here). So
//! this path only ever gives the answer the full rules would give, and gives it in the same lock order
//! (stock.sql): the buyer lock first, then at most one slot of the variant.
//!
//! The claim runs in a subtransaction under the first pass's short lock_timeout, as `_claim_free` does:
//! a `SKIP LOCKED` scan can still lock a slot a commit has just emptied, keep it although it passed it
//! over, and wait on the next one. Undoing the subtransaction lets such a slot go before the full rules
//! run, and the timeout turns such a wait into "not here" instead of a chance of a deadlock.

use pgrx::pg_sys;
use pgrx::pg_sys::errcodes::PgSqlErrorCode;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use std::cell::Cell;
use std::ffi::CStr;

/// Step 1: $1 drop, $2 buyer, $3 size label (NULL: none), $4 units. One row (the hold's seconds and
/// the variant) when nothing stands in the way of a new hold, none otherwise.
const LOOK: &CStr = c"
SELECT x.hold_seconds, w.variant
  FROM dropstock.drops x,
       LATERAL (SELECT CASE WHEN $3 IS NULL THEN 0::smallint
                            ELSE (SELECT z.variant FROM dropstock.variants z
                                   WHERE z.drop_id = x.id AND z.label = btrim($3) AND z.variant > 0) END
                       AS variant) w
 WHERE x.id = $1 AND x.mode = 'race' AND x.sized = ($3 IS NOT NULL) AND w.variant IS NOT NULL
   AND x.starts_at <= clock_timestamp() AND (x.ends_at IS NULL OR clock_timestamp() < x.ends_at)
   AND EXISTS (SELECT FROM dropstock.users u WHERE u.id = $2)
   AND NOT EXISTS (SELECT FROM dropstock.reservations r
                    WHERE r.drop_id = $1 AND r.user_id = $2 AND r.status = 'reserved')
   AND NOT EXISTS (SELECT FROM dropstock.waitlist l WHERE l.drop_id = $1)
   AND NOT EXISTS (SELECT FROM dropstock.cooldowns c
                    WHERE c.drop_id = $1 AND c.user_id = $2 AND c.until > clock_timestamp())
   AND (SELECT coalesce(sum(p.quantity), 0) FROM dropstock.purchases p
         WHERE p.user_id = $2 AND p.drop_id = $1) + $4 <= x.per_user_limit";

/// Step 2: $1 drop, $2 buyer, $3 variant, $4 units, $5 hold seconds, slots from $6 up to before $7. The
/// units from the first such slot that has them all and that nobody is committing on, and the new
/// hold; no row when there is no such slot. An ordered index scan that stops at the first slot it can
/// take: run from this backend's home slot up, then below it, as `_claim_free` does (one statement
/// ordered by "slot below home" would read and sort every slot of the variant).
const CLAIM: &CStr = c"
WITH claim AS (
    UPDATE dropstock.stock_slots s SET available = s.available - $4
     WHERE (s.drop_id, s.variant, s.slot) =
           (SELECT f.drop_id, f.variant, f.slot FROM dropstock.stock_slots f
             WHERE f.drop_id = $1 AND f.variant = $3 AND f.slot >= $6 AND f.slot < $7 AND f.available >= $4
             ORDER BY f.slot LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING s.variant
)
INSERT INTO dropstock.reservations AS r (drop_id, user_id, expires_at, variant, quantity)
SELECT $1, $2, clock_timestamp() + make_interval(secs => $5), claim.variant, $4 FROM claim
ON CONFLICT (drop_id, user_id) WHERE status = 'reserved' DO NOTHING
RETURNING r.*";

// Built-in functions called directly (their pg_sys bindings are Rust wrappers, not C function pointers).
unsafe extern "C-unwind" {
    fn uuid_hash_extended(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
    fn pg_advisory_xact_lock_int8(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum;
}

thread_local! {
    /// This backend's kept plans of LOOK and CLAIM, prepared on first use. PostgreSQL's plan cache
    /// revalidates them when a table they read changes (a new install included).
    static PLANS: Cell<Option<(pg_sys::SPIPlanPtr, pg_sys::SPIPlanPtr)>> = const { Cell::new(None) };
}

fn plans() -> (pg_sys::SPIPlanPtr, pg_sys::SPIPlanPtr) {
    if let Some(plans) = PLANS.get() {
        return plans;
    }
    let prepare = |query: &CStr, types: &mut [pg_sys::Oid]| -> pg_sys::SPIPlanPtr {
        // SAFETY: called between SPI_connect and SPI_finish with a NUL-terminated query and one type
        // per parameter; SPI_keepplan moves the plan out of SPI's memory, so it outlives this call.
        unsafe {
            let plan = pg_sys::SPI_prepare(query.as_ptr(), types.len() as i32, types.as_mut_ptr());
            if plan.is_null() || pg_sys::SPI_keepplan(plan) != 0 {
                error!("dropstock: could not prepare reserve_item's fast path");
            }
            plan
        }
    };
    let (uuid, text, int4, int2) = (
        pg_sys::UUIDOID,
        pg_sys::TEXTOID,
        pg_sys::INT4OID,
        pg_sys::INT2OID,
    );
    let plans = (
        prepare(LOOK, &mut [uuid, uuid, text, int4]),
        prepare(CLAIM, &mut [uuid, uuid, int2, int4, int4, int2, int2]),
    );
    PLANS.set(Some(plans));
    plans
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
        let (drop_id, user_id) = (args[0].value, args[1].value);

        // The buyer lock (_lock_buyers, _buyer_key), taken here directly: the key is the same hash.
        let drop_hash = direct_call2(uuid_hash_extended, drop_id, pg_sys::Datum::from(0i64));
        let key = direct_call2(uuid_hash_extended, user_id, drop_hash);
        pg_sys::DirectFunctionCall1Coll(Some(pg_advisory_xact_lock_int8), pg_sys::InvalidOid, key);

        let upper = pg_sys::CurrentMemoryContext;
        if pg_sys::SPI_connect() < 0 {
            error!("dropstock: SPI_connect failed");
        }
        let (look, claim) = plans();

        let mut values = [
            drop_id,
            user_id,
            args[2].value,
            pg_sys::Datum::from(quantity),
        ];
        let nulls = [b' ', b' ', if args[2].isnull { b'n' } else { b' ' }, b' '];
        let found =
            pg_sys::SPI_execute_plan(look, values.as_mut_ptr(), nulls.as_ptr().cast(), false, 1);
        if found != pg_sys::SPI_OK_SELECT as i32 || pg_sys::SPI_processed != 1 {
            pg_sys::SPI_finish();
            return null_answer(fcinfo);
        }
        let row = *(*pg_sys::SPI_tuptable).vals;
        let desc = (*pg_sys::SPI_tuptable).tupdesc;
        let mut isnull = false;
        let hold_seconds = pg_sys::SPI_getbinval(row, desc, 1, &mut isnull);
        let variant = pg_sys::SPI_getbinval(row, desc, 2, &mut isnull);
        let home = (pg_sys::MyProcPid % 64) as i16;
        let mut values = [
            drop_id,
            user_id,
            variant,
            pg_sys::Datum::from(quantity),
            hold_seconds,
            pg_sys::Datum::from(home),
            pg_sys::Datum::from(64i16),
        ];

        let made = claim_in_subtransaction(claim, &mut values, home);
        let answer = match made {
            Some((hold, hold_desc)) => {
                let mut result_desc: pg_sys::TupleDesc = std::ptr::null_mut();
                pg_sys::get_call_result_type(fcinfo, std::ptr::null_mut(), &mut result_desc);
                let previous = pg_sys::MemoryContextSwitchTo(upper);
                // The row as `reservations`; should the table ever carry dropped columns, its row type
                // and RETURNING's columns differ, and the row goes back as a record for PostgreSQL to
                // convert.
                let datum = if (*result_desc).natts == (*hold_desc).natts {
                    pg_sys::heap_copy_tuple_as_datum(hold, result_desc)
                } else {
                    pg_sys::Datum::from(pg_sys::SPI_returntuple(hold, hold_desc))
                };
                pg_sys::MemoryContextSwitchTo(previous);
                crate::wake::_wake_worker_at_commit();
                Some(datum)
            }
            None => None,
        };
        pg_sys::SPI_finish();
        match answer {
            Some(datum) => datum,
            None => null_answer(fcinfo),
        }
    }
}

/// Runs CLAIM in a subtransaction under a 20 ms lock_timeout, from the home slot up, then below it:
/// the new hold's row and its columns (in SPI's memory), or None with everything the statement did
/// undone.
unsafe fn claim_in_subtransaction(
    claim: pg_sys::SPIPlanPtr,
    values: &mut [pg_sys::Datum; 7],
    home: i16,
) -> Option<(pg_sys::HeapTuple, pg_sys::TupleDesc)> {
    // SAFETY: the subtransaction protocol of PL/pgSQL's exception blocks: begin, run in the caller's
    // memory context, then release or roll back, and put the caller's context and resource owner back.
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        let values_ptr = values.as_mut_ptr();
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
            let nulls = [b' '; 7];
            let mut done =
                pg_sys::SPI_execute_plan(claim, values_ptr, nulls.as_ptr().cast(), false, 1);
            if done == pg_sys::SPI_OK_INSERT_RETURNING as i32
                && pg_sys::SPI_processed == 0
                && home > 0
            {
                *values_ptr.add(5) = pg_sys::Datum::from(0i16);
                *values_ptr.add(6) = pg_sys::Datum::from(home);
                done = pg_sys::SPI_execute_plan(claim, values_ptr, nulls.as_ptr().cast(), false, 1);
            }
            pg_sys::AtEOXact_GUC(true, level);
            if done == pg_sys::SPI_OK_INSERT_RETURNING as i32 && pg_sys::SPI_processed == 1 {
                pg_sys::ReleaseCurrentSubTransaction();
                Some((
                    *(*pg_sys::SPI_tuptable).vals,
                    (*pg_sys::SPI_tuptable).tupdesc,
                ))
            } else {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
                None
            }
        })
        .catch_when(
            PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
            |_: CaughtError| {
                pg_sys::MemoryContextSwitchTo(context);
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
                None
            },
        )
        .execute();
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
        made
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
