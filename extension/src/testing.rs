//! Helpers for the `#[pg_test]`s: each test runs in one transaction of one backend, so these read
//! results as text and catch refusals in a subtransaction to check their SQLSTATE.

use pgrx::prelude::*;

/// Runs a statement, failing the test on any error.
pub fn run(sql: &str) {
    Spi::run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Locks `tables` (a comma-separated list) in ACCESS EXCLUSIVE mode for the rest of the test, without
/// ever waiting while holding one of them: LOCK TABLE takes them one by one, and the background worker
/// reads them in both orders (its sweep and its publication), so waiting for the second while holding
/// the first could deadlock with it. Each attempt takes all of them or none (NOWAIT, undone in a
/// subtransaction), until one succeeds, for at most 10 s.
pub fn lock_exclusively(tables: &str) {
    run(&format!(
        "DO $$ DECLARE started timestamptz := clock_timestamp(); BEGIN
             LOOP
                 BEGIN
                     LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE NOWAIT;
                     EXIT;
                 EXCEPTION WHEN lock_not_available THEN
                     IF clock_timestamp() > started + interval '10 seconds' THEN
                         RAISE EXCEPTION 'could not lock {tables} within 10 s';
                     END IF;
                     PERFORM pg_sleep(0.005);
                 END;
             END LOOP;
         END $$"
    ));
}

/// The first column of the first row, as text.
pub fn text(sql: &str) -> String {
    Spi::get_one::<String>(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .unwrap_or_else(|| panic!("{sql}: NULL"))
}

pub fn int(sql: &str) -> i64 {
    Spi::get_one::<i64>(&format!("SELECT ({sql})::bigint"))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .unwrap_or_else(|| panic!("{sql}: NULL"))
}

pub fn boolean(sql: &str) -> bool {
    Spi::get_one::<bool>(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .unwrap_or_else(|| panic!("{sql}: NULL"))
}

/// The SQLSTATE and message a statement fails with, e.g. `"DS020: drop \"x\" is sold out"`;
/// `"00000"` when it succeeds. The statement runs in a subtransaction and leaves nothing behind.
pub fn refusal(sql: &str) -> String {
    run("CREATE OR REPLACE FUNCTION pg_temp.refusal_of(stmt text) RETURNS text LANGUAGE plpgsql AS $$
         BEGIN EXECUTE stmt; RETURN '00000';
         EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$");
    Spi::get_one_with_args::<String>("SELECT pg_temp.refusal_of($1)", &[sql.into()])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .expect("refusal_of returns text")
}

/// Asserts that `sql` is refused with `sqlstate` and a message containing `words`.
pub fn assert_refused(sql: &str, sqlstate: &str, words: &str) {
    let got = refusal(sql);
    assert!(
        got.starts_with(&format!("{sqlstate}: ")),
        "{sql}: expected {sqlstate}, got {got}"
    );
    assert!(
        got.contains(words),
        "{sql}: expected a message with {words:?}, got {got}"
    );
}

/// A new buyer's id.
pub fn buyer(name: &str) -> String {
    text(&format!(
        "SELECT id::text FROM dropstock.create_user('{name}')"
    ))
}

/// An open drop's id (started a minute ago, 60-second holds, one per buyer).
pub fn drop_with_stock(stock: i32) -> String {
    text(&format!(
        "SELECT id::text FROM dropstock.create_drop('Test drop', 100, {stock}, now() - interval '1 minute')"
    ))
}

pub fn available(drop: &str) -> i64 {
    int(&format!(
        "SELECT available_stock FROM dropstock.drop_status('{drop}')"
    ))
}

/// A new hold's id.
pub fn reserve(drop: &str, user: &str) -> String {
    text(&format!(
        "SELECT id::text FROM dropstock.reserve_item('{drop}', '{user}')"
    ))
}

/// Moves a hold's expiry into the past, as if its time had run out.
pub fn let_hold_run_out(hold: &str) {
    run(&format!(
        "UPDATE dropstock.reservations SET expires_at = clock_timestamp() - interval '1 second' WHERE id = '{hold}'"
    ));
}

/// An open sized drop's id: `sizes` is the variants object, e.g. `{"US 8": 2, "US 9": 1}`.
pub fn sized_drop(sizes: &str, per_user_limit: i32) -> String {
    text(&format!(
        "SELECT id::text FROM dropstock.create_drop('Sized drop', 100, NULL, now() - interval '1 minute', 60,
                                                    {per_user_limit}, NULL, '{sizes}')"
    ))
}

/// Available units of one size of a drop.
pub fn available_of(drop: &str, label: &str) -> i64 {
    int(&format!(
        "SELECT available_stock FROM dropstock.variant_status('{drop}') WHERE label = '{label}'"
    ))
}

/// available + held + sold = total, each part non-negative, for the drop and for each of its variants,
/// and the held and sold counts match the units of live holds (and units kept for buyers in line) and
/// of sales.
pub fn assert_stock_invariant(drop: &str) {
    let ok = boolean(&format!(
        "SELECT s.available_stock + s.held_stock + s.sold_stock = s.total_stock
            AND s.available_stock >= 0 AND s.held_stock >= 0 AND s.sold_stock >= 0
            AND s.held_stock = (SELECT coalesce(sum(r.quantity), 0) FROM dropstock.reservations r
                                 WHERE r.drop_id = s.id AND r.status = 'reserved')
                             + (SELECT coalesce(sum(w.kept), 0) FROM dropstock.waitlist w WHERE w.drop_id = s.id)
            AND s.sold_stock = (SELECT coalesce(sum(p.quantity), 0) FROM dropstock.purchases p WHERE p.drop_id = s.id)
           FROM dropstock.drop_status('{drop}') s"
    ));
    assert!(ok, "stock invariant broken for drop {drop}");
    let per_variant = boolean(&format!(
        "SELECT bool_and(v.available_stock + v.held_stock + v.sold_stock = v.total_stock
            AND v.available_stock >= 0 AND v.held_stock >= 0 AND v.sold_stock >= 0
            AND v.held_stock = (SELECT coalesce(sum(r.quantity), 0) FROM dropstock.reservations r
                                 WHERE r.drop_id = '{drop}' AND r.variant = v.variant AND r.status = 'reserved')
                             + (SELECT coalesce(sum(w.kept), 0) FROM dropstock.waitlist w
                                 WHERE w.drop_id = '{drop}' AND w.kept_variant = v.variant)
            AND v.sold_stock = (SELECT coalesce(sum(p.quantity), 0) FROM dropstock.purchases p
                                 WHERE p.drop_id = '{drop}' AND p.variant = v.variant))
           FROM dropstock.variant_status('{drop}') v"
    ));
    assert!(
        per_variant,
        "stock invariant broken for a variant of drop {drop}"
    );
}
