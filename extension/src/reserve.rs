//! Holds (sql/reserve.sql): `reserve_item`, `reserve_items` for many buyers in one transaction, and
//! `extend_hold`. `reserve_item` makes the common hold on a fast path (`fast_path`), the rest by the
//! full rules in SQL.

mod fast_path;
mod rows;

pgrx::extension_sql_file!(
    "../../sql/reserve.sql",
    name = "reserve",
    requires = ["stock"]
);

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn reserve_item_holds_one_unit_for_the_drops_hold_seconds() {
        let drop = drop_with_stock(2);
        let user = buyer("ann");
        let hold = reserve(&drop, &user);
        let seconds = int(&format!(
            "SELECT round(extract(epoch FROM expires_at - clock_timestamp())) FROM dropstock.reservations WHERE id = '{hold}'"
        ));
        assert!((59..=60).contains(&seconds), "hold lasts {seconds}s");
        assert_eq!(
            text(&format!(
                "SELECT status::text FROM dropstock.reservations WHERE id = '{hold}'"
            )),
            "reserved"
        );
        assert_eq!(available(&drop), 1);
        assert_stock_invariant(&drop);
    }

    /// Whether `_reserve_fast` made a hold, checking that when it did not, it changed nothing.
    fn fast(drop: &str, user: &str, size: &str, units: i32) -> bool {
        let before = text(&format!(
            "SELECT (SELECT string_agg(s.available::text, ',' ORDER BY s.variant, s.slot) FROM dropstock.stock_slots s
                      WHERE s.drop_id = '{drop}')
                 || '/' || (SELECT count(*) FROM dropstock.reservations r WHERE r.drop_id = '{drop}')"
        ));
        let made = boolean(&format!(
            "SELECT h IS NOT NULL FROM dropstock._reserve_fast('{drop}', '{user}', {size}, {units}) h"
        ));
        if !made {
            let after = text(&format!(
                "SELECT (SELECT string_agg(s.available::text, ',' ORDER BY s.variant, s.slot) FROM dropstock.stock_slots s
                          WHERE s.drop_id = '{drop}')
                     || '/' || (SELECT count(*) FROM dropstock.reservations r WHERE r.drop_id = '{drop}')"
            ));
            assert_eq!(
                before, after,
                "the fast path changed something and then handed over"
            );
        }
        made
    }

    #[pg_test]
    fn the_fast_path_makes_only_plain_new_holds_and_hands_the_rest_over_untouched() {
        let drop = drop_with_stock(3);
        let ann = buyer("fast ann");
        // A new buyer, free units in one slot: made here, the same row reserve_item returns.
        assert!(fast(&drop, &ann, "NULL", 1));
        assert_eq!(available(&drop), 2);
        assert_stock_invariant(&drop);
        // Everything else is decided by the full rules: a retry (the live hold), an unknown buyer,
        // missing arguments, a quantity out of range, more units than any one slot has (stock 3 is
        // striped one unit a slot), a size on a drop without sizes.
        assert!(!fast(&drop, &ann, "NULL", 1));
        assert!(!fast(
            &drop,
            "00000000-0000-0000-0000-000000000000",
            "NULL",
            1
        ));
        let bob = buyer("fast bob");
        assert!(!fast(&drop, &bob, "NULL", 0));
        assert!(!fast(&drop, &bob, "NULL", 2));
        assert!(!fast(&drop, &bob, "'US 9'", 1));
        assert!(!boolean(&format!(
            "SELECT dropstock._reserve_fast(NULL, '{bob}', NULL, 1) IS NOT NULL"
        )));
        // The last units, then sold out: nothing to take, so the full rules answer.
        assert!(fast(&drop, &bob, "NULL", 1));
        assert!(fast(&drop, &buyer("fast cy"), "NULL", 1));
        assert!(!fast(&drop, &buyer("fast di"), "NULL", 1));
        assert_stock_invariant(&drop);

        // A drop with a line: the line's rules decide, even for a size nobody waits for.
        let sized = sized_drop(r#"{"US 8": 1, "US 9": 5}"#, 1);
        let (eve, fay) = (buyer("fast eve"), buyer("fast fay"));
        assert!(fast(&sized, &eve, "'US 8'", 1));
        run(&format!(
            "SELECT dropstock.join_waitlist('{sized}', '{fay}', ARRAY['US 8'])"
        ));
        assert!(!fast(&sized, &buyer("fast gus"), "'US 9'", 1));
        // A size the drop does not have, and none named on a sized drop.
        let other = sized_drop(r#"{"US 8": 1, "US 9": 5}"#, 1);
        assert!(!fast(&other, &buyer("fast hal"), "'US 12'", 1));
        assert!(!fast(&other, &buyer("fast ida"), "NULL", 1));
        assert!(fast(&other, &buyer("fast jo"), "' US 9 '", 1));
        assert_stock_invariant(&sized);
        assert_stock_invariant(&other);

        // A buyer at their limit, and a drop that has not started.
        let more = drop_with_stock(5);
        let kim = buyer("fast kim");
        let hold = reserve(&more, &kim);
        run(&format!("SELECT dropstock.purchase('{hold}', '{kim}')"));
        assert!(!fast(&more, &kim, "NULL", 1));
        let later = text(
            "SELECT id::text FROM dropstock.create_drop('Later drop', 100, 5, now() + interval '1 hour')",
        );
        assert!(!fast(&later, &buyer("fast lu"), "NULL", 1));
    }

    #[pg_test]
    fn the_fast_path_keeps_every_index_trigger_and_constraint_of_the_tables_it_writes() {
        // It writes through PostgreSQL's single-row helpers, not around them: an index, a trigger and
        // a constraint added to the tables after it was written apply to its rows too. The tables are
        // locked first, before anything else: the worker reads them too, and the DDL below taking
        // their locks one by one could deadlock with it.
        lock_exclusively("dropstock.reservations, dropstock.stock_slots");
        run("CREATE INDEX fast_path_test_by_buyer ON dropstock.reservations (user_id, quantity)");
        run("CREATE TABLE dropstock.fast_path_test_seen (hold uuid, slot_left integer)");
        run(
            "CREATE FUNCTION dropstock.fast_path_test_note() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF TG_TABLE_NAME = 'reservations' THEN
                     INSERT INTO dropstock.fast_path_test_seen (hold) VALUES (NEW.id);
                 ELSE
                     INSERT INTO dropstock.fast_path_test_seen (slot_left) VALUES (NEW.available);
                 END IF;
                 RETURN NEW;
             END $$",
        );
        run(
            "CREATE TRIGGER fast_path_test AFTER INSERT ON dropstock.reservations
             FOR EACH ROW EXECUTE FUNCTION dropstock.fast_path_test_note()",
        );
        run(
            "CREATE TRIGGER fast_path_test BEFORE UPDATE ON dropstock.stock_slots
             FOR EACH ROW EXECUTE FUNCTION dropstock.fast_path_test_note()",
        );
        let drop = drop_with_stock(5);
        let ann = buyer("fast index ann");
        assert!(fast(&drop, &ann, "NULL", 1));
        run("SET LOCAL enable_seqscan = off");
        run("SET LOCAL enable_bitmapscan = off");
        assert_eq!(
            int(&format!(
                "SELECT count(*) FROM dropstock.reservations WHERE user_id = '{ann}' AND quantity = 1"
            )),
            1,
            "the new index has the hold"
        );
        assert_eq!(
            int(&format!(
                "SELECT count(*) FROM dropstock.fast_path_test_seen s JOIN dropstock.reservations r ON r.id = s.hold
                  WHERE r.user_id = '{ann}'"
            )),
            1,
            "the insert trigger saw the hold"
        );
        assert_eq!(
            int("SELECT count(*) FROM dropstock.fast_path_test_seen WHERE slot_left = 0"),
            1,
            "the update trigger saw the slot's new row"
        );
        // A constraint it breaks is an error, as in a statement, not a hold.
        run("ALTER TABLE dropstock.reservations ADD CONSTRAINT fast_path_test_one CHECK (quantity < 1) NOT VALID");
        assert!(refusal(&format!(
            "SELECT dropstock._reserve_fast('{drop}', '{}', NULL, 1)",
            buyer("fast index bob")
        ))
        .starts_with("23514"));
    }

    #[pg_test]
    fn the_fast_path_hands_over_when_the_tables_are_not_the_ones_it_knows() {
        // Locked first, as in the test above.
        lock_exclusively("dropstock.reservations, dropstock.purchases");
        // A column it would not fill.
        run("ALTER TABLE dropstock.reservations ADD COLUMN fast_path_test_note text");
        let drop = drop_with_stock(5);
        assert!(!fast(&drop, &buyer("fast schema ann"), "NULL", 1));
        // An index it probes, no longer on the columns it expects.
        run("ALTER TABLE dropstock.reservations DROP COLUMN fast_path_test_note");
        assert!(fast(&drop, &buyer("fast schema bob"), "NULL", 1));
        run("DROP INDEX dropstock.purchases_by_buyer");
        run("CREATE INDEX purchases_by_buyer ON dropstock.purchases (drop_id, user_id)");
        assert!(!fast(&drop, &buyer("fast schema cy"), "NULL", 1));
        assert_stock_invariant(&drop);
    }

    /// How many answers `_reserve_many_fast` gave, checking that when it gave none, it changed nothing.
    fn fast_many(drop: &str, users: &[&str], sizes: &str, units: &str) -> i64 {
        let state = || {
            text(&format!(
                "SELECT (SELECT string_agg(s.available::text, ',' ORDER BY s.variant, s.slot) FROM dropstock.stock_slots s
                          WHERE s.drop_id = '{drop}')
                     || '/' || (SELECT count(*) FROM dropstock.reservations r WHERE r.drop_id = '{drop}')"
            ))
        };
        let before = state();
        let ids = users
            .iter()
            .map(|u| format!("'{u}'::uuid"))
            .collect::<Vec<_>>()
            .join(", ");
        let answers = int(&format!(
            "SELECT count(*) FROM dropstock._reserve_many_fast('{drop}', ARRAY[{ids}], {sizes}, {units})"
        ));
        if answers == 0 {
            assert_eq!(
                before,
                state(),
                "the batch fast path changed something and then handed over"
            );
        }
        answers
    }

    #[pg_test]
    fn the_batch_fast_path_makes_only_batches_of_plain_new_holds() {
        let drop = drop_with_stock(5);
        let (ann, bob, cy) = (buyer("many ann"), buyer("many bob"), buyer("many cy"));
        assert_eq!(fast_many(&drop, &[&ann, &bob], "NULL", "NULL"), 2);
        assert_eq!(available(&drop), 3);
        // A buyer with a live hold, a buyer named twice, an unknown buyer, more units than are left:
        // the whole batch goes to the full rules.
        assert_eq!(fast_many(&drop, &[&cy, &ann], "NULL", "NULL"), 0);
        assert_eq!(fast_many(&drop, &[&cy, &cy], "NULL", "NULL"), 0);
        assert_eq!(
            fast_many(
                &drop,
                &[&cy, "00000000-0000-0000-0000-000000000000"],
                "NULL",
                "NULL"
            ),
            0
        );
        let (di, eve, fay, gus) = (
            buyer("many di"),
            buyer("many eve"),
            buyer("many fay"),
            buyer("many gus"),
        );
        assert_eq!(fast_many(&drop, &[&cy, &di, &eve, &fay], "NULL", "NULL"), 0);
        // Sizes: each buyer's own, all free; a size the drop lacks sends the batch on.
        let sized = sized_drop(r#"{"US 8": 2, "US 9": 2}"#, 2);
        assert_eq!(
            fast_many(
                &sized,
                &[&gus, &fay],
                "ARRAY['US 9', 'US 8']",
                "ARRAY[2, 1]"
            ),
            2
        );
        assert_eq!(available_of(&sized, "US 9"), 0);
        assert_eq!(available_of(&sized, "US 8"), 1);
        assert_eq!(fast_many(&sized, &[&di], "ARRAY['US 12']", "NULL"), 0);
        assert_eq!(fast_many(&sized, &[&di], "ARRAY[NULL]::text[]", "NULL"), 0);
        assert_stock_invariant(&drop);
        assert_stock_invariant(&sized);
        // Its answers are reserve_items' answers: the new holds, in array order, with their sizes.
        run(&format!(
            "CREATE TEMP TABLE many_answers AS
             SELECT a.*, row_number() OVER () AS n
               FROM dropstock.reserve_items('{drop}', ARRAY['{di}', '{eve}']::uuid[]) a"
        ));
        assert_eq!(
            text(&format!(
                "SELECT string_agg(a.user_id::text || ' ' || a.fresh || ' ' || coalesce(a.variant, '-') || ' '
                                   || a.quantity || ' ' || (a.reservation_id = r.id), '; ' ORDER BY a.n)
                   FROM many_answers a
                   JOIN dropstock.reservations r
                     ON r.user_id = a.user_id AND r.drop_id = '{drop}' AND r.status = 'reserved'"
            )),
            format!("{di} true - 1 true; {eve} true - 1 true")
        );
    }

    #[pg_test]
    fn reserve_item_again_returns_the_same_hold() {
        let drop = drop_with_stock(5);
        let user = buyer("ann");
        let first = reserve(&drop, &user);
        let again = reserve(&drop, &user);
        assert_eq!(first, again);
        assert_eq!(available(&drop), 4);
    }

    #[pg_test]
    fn reserve_item_refuses_when_sold_out() {
        let drop = drop_with_stock(1);
        reserve(&drop, &buyer("ann"));
        let bob = buyer("bob");
        assert_refused(
            &format!("SELECT dropstock.reserve_item('{drop}', '{bob}')"),
            "DS020",
            "sold out",
        );
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn reserve_item_reclaims_a_past_due_hold_instead_of_answering_sold_out() {
        let drop = drop_with_stock(1);
        let ann = buyer("ann");
        let stale = reserve(&drop, &ann);
        let_hold_run_out(&stale);
        let bob = buyer("bob");
        let fresh = reserve(&drop, &bob);
        assert_ne!(stale, fresh);
        assert_eq!(
            text(&format!(
                "SELECT status::text FROM dropstock.reservations WHERE id = '{stale}'"
            )),
            "expired"
        );
        assert_eq!(available(&drop), 0);
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn reserve_item_replaces_the_buyers_own_past_due_hold_when_nobody_waits() {
        let drop = drop_with_stock(1);
        let ann = buyer("ann");
        let stale = reserve(&drop, &ann);
        let_hold_run_out(&stale);
        let fresh = reserve(&drop, &ann);
        assert_ne!(stale, fresh);
        assert_eq!(
            text(&format!(
                "SELECT status::text FROM dropstock.reservations WHERE id = '{stale}'"
            )),
            "expired"
        );
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn reserve_item_enforces_the_per_user_limit_over_holds_and_purchases() {
        let drop = text("SELECT id::text FROM dropstock.create_drop('Pair', 10, 10, now() - interval '1 minute', 60, 2)");
        let ann = buyer("ann");
        for _ in 0..2 {
            let hold = reserve(&drop, &ann);
            run(&format!("SELECT dropstock.purchase('{hold}', '{ann}')"));
        }
        assert_refused(
            &format!("SELECT dropstock.reserve_item('{drop}', '{ann}')"),
            "DS021",
            "limit of 2",
        );
        assert_eq!(available(&drop), 8);
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn reserve_item_refuses_before_the_start_and_after_the_end() {
        let ann = buyer("ann");
        let later = text(
            "SELECT id::text FROM dropstock.create_drop('Later', 1, 1, now() + interval '1 hour')",
        );
        assert_refused(
            &format!("SELECT dropstock.reserve_item('{later}', '{ann}')"),
            "DS010",
            "has not started",
        );
        let over = text(
            "SELECT id::text FROM dropstock.create_drop('Over', 1, 1, now() - interval '2 hours', 60, 1, now() - interval '1 hour')",
        );
        assert_refused(
            &format!("SELECT dropstock.reserve_item('{over}', '{ann}')"),
            "DS011",
            "has ended",
        );
    }

    #[pg_test]
    fn reserve_item_refuses_unknown_drops_users_and_nulls() {
        let drop = drop_with_stock(1);
        let ann = buyer("ann");
        let nobody = "00000000-0000-0000-0000-000000000000";
        assert_refused(
            &format!("SELECT dropstock.reserve_item('{nobody}', '{ann}')"),
            "DS001",
            "does not exist",
        );
        assert_refused(
            &format!("SELECT dropstock.reserve_item('{drop}', '{nobody}')"),
            "DS002",
            "does not exist",
        );
        assert_refused(
            &format!("SELECT dropstock.reserve_item(NULL, '{ann}')"),
            "22023",
            "required",
        );
        assert_refused(
            &format!("SELECT dropstock.reserve_item('{drop}', NULL)"),
            "22023",
            "required",
        );
        assert_eq!(available(&drop), 1);
    }

    /// `reserve_items` answers as `{outcome}` per buyer name: `new`, `same`, or the SQLSTATE.
    fn batch_outcomes(drop: &str, users: &[&str]) -> String {
        let list = users
            .iter()
            .map(|u| format!("'{u}'"))
            .collect::<Vec<_>>()
            .join(",");
        text(&format!(
            "SELECT string_agg(coalesce(u.username, b.user_id::text) || '=' ||
                               coalesce(b.sqlstate, CASE WHEN b.fresh THEN 'new' ELSE 'same' END), ' '
                               ORDER BY coalesce(u.username, b.user_id::text))
               FROM dropstock.reserve_items('{drop}', ARRAY[{list}]::uuid[]) b
               LEFT JOIN dropstock.users u ON u.id = b.user_id"
        ))
    }

    #[pg_test]
    fn reserve_items_answers_each_buyer_as_reserve_item_would() {
        let drop = drop_with_stock(3);
        let (ann, bob, cyd, dee, eve) = (
            buyer("ann"),
            buyer("bob"),
            buyer("cyd"),
            buyer("dee"),
            buyer("eve"),
        );
        reserve(&drop, &ann);
        let nobody = "00000000-0000-0000-0000-000000000000";
        let answers = batch_outcomes(&drop, &[&ann, &bob, &bob, &cyd, nobody, &dee, &eve]);
        // ann keeps her hold; bob (named twice) and cyd take the last two units; dee and eve are too late.
        assert_eq!(
            answers,
            format!("{nobody}=DS002 ann=same bob=new cyd=new dee=DS020 eve=DS020")
        );
        assert_eq!(available(&drop), 0);
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn reserve_items_reuses_past_due_holds_and_respects_the_limit() {
        let drop = drop_with_stock(2);
        let (ann, bob, cyd) = (buyer("ann"), buyer("bob"), buyer("cyd"));
        let sale = reserve(&drop, &ann);
        run(&format!("SELECT dropstock.purchase('{sale}', '{ann}')"));
        let stale = reserve(&drop, &bob);
        let_hold_run_out(&stale);
        // bob's own past-due hold is replaced, ann has bought her one, cyd gets nothing: stock is gone.
        assert_eq!(
            batch_outcomes(&drop, &[&ann, &bob, &cyd]),
            "ann=DS021 bob=new cyd=DS020"
        );
        assert_eq!(
            text(&format!(
                "SELECT status::text FROM dropstock.reservations WHERE id = '{stale}'"
            )),
            "expired"
        );
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn reserve_items_refuses_what_concerns_the_whole_drop() {
        let ann = buyer("ann");
        let later = text(
            "SELECT id::text FROM dropstock.create_drop('Later', 1, 1, now() + interval '1 hour')",
        );
        assert_refused(
            &format!("SELECT * FROM dropstock.reserve_items('{later}', ARRAY['{ann}']::uuid[])"),
            "DS010",
            "has not started",
        );
        let nobody = "00000000-0000-0000-0000-000000000000";
        assert_refused(
            &format!("SELECT * FROM dropstock.reserve_items('{nobody}', ARRAY['{ann}']::uuid[])"),
            "DS001",
            "does not exist",
        );
        let drop = drop_with_stock(1);
        assert_refused(
            &format!("SELECT * FROM dropstock.reserve_items('{drop}', ARRAY[NULL]::uuid[])"),
            "22023",
            "may be NULL",
        );
        assert_refused(
            &format!("SELECT * FROM dropstock.reserve_items('{drop}', NULL)"),
            "22023",
            "required",
        );
    }

    #[pg_test]
    fn reserve_items_answers_in_the_order_buyers_are_named_and_serves_them_in_that_order() {
        let drop = drop_with_stock(2);
        let (ann, bob, cat) = (buyer("ann"), buyer("bob"), buyer("cat"));
        let nobody = "00000000-0000-0000-0000-000000000000";
        let answers = text(&format!(
            "SELECT string_agg(coalesce(sqlstate, CASE WHEN fresh THEN 'new' ELSE 'kept' END), ',')
               FROM dropstock.reserve_items('{drop}', ARRAY['{cat}', '{nobody}', '{ann}', '{cat}', '{bob}']::uuid[])"
        ));
        assert_eq!(answers, "new,DS002,new,DS020");
        let order = text(&format!(
            "SELECT string_agg(user_id::text, ',') FROM dropstock.reserve_items('{drop}', ARRAY['{bob}', '{ann}']::uuid[])"
        ));
        assert_eq!(order, format!("{bob},{ann}"));
        assert_stock_invariant(&drop);
    }

    /// The variant number, units and status of a hold, as `number|units|status`.
    fn hold_row(hold: &str) -> String {
        text(&format!(
            "SELECT format('%s|%s|%s', variant, quantity, status) FROM dropstock.reservations WHERE id = '{hold}'"
        ))
    }

    fn reserve_sized(drop: &str, user: &str, size: &str, units: i32) -> String {
        text(&format!(
            "SELECT id::text FROM dropstock.reserve_item('{drop}', '{user}', '{size}', {units})"
        ))
    }

    #[pg_test]
    fn reserve_item_holds_units_of_the_size_asked_for() {
        let drop = sized_drop(r#"{"US 8": 2, "US 9": 3}"#, 3);
        let ann = buyer("ann");
        let hold = reserve_sized(&drop, &ann, "US 9", 2);
        let us9 = int(&format!(
            "SELECT variant FROM dropstock.variant_status('{drop}') WHERE label = 'US 9'"
        ));
        assert_eq!(hold_row(&hold), format!("{us9}|2|reserved"));
        assert_eq!(available_of(&drop, "US 9"), 1);
        assert_eq!(available_of(&drop, "US 8"), 2);
        assert_eq!(available(&drop), 3);
        // A retry, even for another size, finds the hold the buyer has.
        assert_eq!(reserve_sized(&drop, &ann, "US 8", 1), hold);
        assert_eq!(available_of(&drop, "US 8"), 2);
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn reserve_item_on_a_sized_drop_wants_a_known_size() {
        let drop = sized_drop(r#"{"US 8": 2, "US 9": 3}"#, 1);
        let plain = drop_with_stock(2);
        let ann = buyer("ann");
        assert_refused(
            &format!("SELECT dropstock.reserve_item('{drop}', '{ann}')"),
            "DS012",
            "choose a size",
        );
        assert_refused(
            &format!("SELECT dropstock.reserve_item('{drop}', '{ann}', 'US 99')"),
            "DS013",
            r#"no size "US 99""#,
        );
        assert_refused(
            &format!("SELECT dropstock.reserve_item('{plain}', '{ann}', 'US 9')"),
            "DS013",
            r#"no size "US 9""#,
        );
        // A label is found trimmed, as create_drop stored it.
        reserve_sized(&drop, &ann, " US 8 ", 1);
        assert_eq!(available_of(&drop, "US 8"), 1);
        assert_stock_invariant(&drop);
        assert_stock_invariant(&plain);
    }

    #[pg_test]
    fn reserve_item_refuses_a_sold_out_size_by_name_and_holds_all_units_or_none() {
        let drop = sized_drop(r#"{"US 9": 1, "US 10": 3}"#, 5);
        let (ann, bob) = (buyer("ann"), buyer("bob"));
        reserve_sized(&drop, &ann, "US 9", 1);
        assert_refused(
            &format!("SELECT dropstock.reserve_item('{drop}', '{bob}', 'US 9')"),
            "DS020",
            r#"size "US 9" of drop "Sized drop" is sold out"#,
        );
        assert_refused(
            &format!("SELECT dropstock.reserve_item('{drop}', '{bob}', 'US 10', 4)"),
            "DS020",
            r#"only 3 left of size "US 10""#,
        );
        assert_eq!(available_of(&drop, "US 10"), 3, "nothing taken");
        reserve_sized(&drop, &bob, "US 10", 3);
        assert_eq!(available(&drop), 0);
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn the_per_buyer_limit_counts_units_across_sizes_holds_and_purchases() {
        let drop = sized_drop(r#"{"US 8": 5, "US 9": 5}"#, 3);
        let ann = buyer("ann");
        let hold = reserve_sized(&drop, &ann, "US 8", 2);
        run(&format!("SELECT dropstock.purchase('{hold}', '{ann}')"));
        assert_refused(
            &format!("SELECT dropstock.reserve_item('{drop}', '{ann}', 'US 9', 2)"),
            "DS021",
            "1 more at most, not 2",
        );
        let second = reserve_sized(&drop, &ann, "US 9", 1);
        run(&format!("SELECT dropstock.purchase('{second}', '{ann}')"));
        assert_refused(
            &format!("SELECT dropstock.reserve_item('{drop}', '{ann}', 'US 9', 1)"),
            "DS021",
            "limit of 3 per buyer reached",
        );
        assert_eq!(
            int(&format!(
                "SELECT sum(quantity) FROM dropstock.purchases WHERE user_id = '{ann}'"
            )),
            3
        );
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn reserve_item_refuses_a_quantity_outside_1_to_10000() {
        let drop = drop_with_stock(2);
        let ann = buyer("ann");
        for units in ["0", "-1", "NULL", "10001"] {
            assert_refused(
                &format!("SELECT dropstock.reserve_item('{drop}', '{ann}', NULL, {units})"),
                "22023",
                "quantity must be from 1 to 10000",
            );
        }
        assert_eq!(available(&drop), 2);
    }

    #[pg_test]
    fn every_unit_of_a_hold_is_bought_or_given_back_to_its_size() {
        let drop = sized_drop(r#"{"S": 4, "M": 4, "L": 4}"#, 2);
        let (ann, bob, cat) = (buyer("ann"), buyer("bob"), buyer("cat"));
        let bought = reserve_sized(&drop, &ann, "M", 2);
        let cancelled = reserve_sized(&drop, &bob, "M", 2);
        let expired = reserve_sized(&drop, &cat, "L", 2);
        assert_eq!(available_of(&drop, "M"), 0);
        run(&format!("SELECT dropstock.purchase('{bought}', '{ann}')"));
        run(&format!(
            "SELECT dropstock.cancel_reservation('{cancelled}', '{bob}')"
        ));
        let_hold_run_out(&expired);
        assert_eq!(int("SELECT dropstock.expire_reservations()"), 1);
        let rows = text(&format!(
            "SELECT string_agg(format('%s:%s/%s/%s', label, available_stock, held_stock, sold_stock), ' ' ORDER BY variant)
               FROM dropstock.variant_status('{drop}')"
        ));
        // jsonb keeps shorter keys first, then byte order: L, M, S.
        assert_eq!(rows, "L:4/0/0 M:2/0/2 S:4/0/0");
        assert_eq!(
            int(&format!(
                "SELECT quantity FROM dropstock.purchases WHERE reservation_id = '{bought}'"
            )),
            2
        );
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn a_past_due_hold_of_several_units_is_reclaimed_and_the_surplus_given_back() {
        let drop = sized_drop(r#"{"US 9": 3, "US 10": 1}"#, 3);
        let (ann, bob) = (buyer("ann"), buyer("bob"));
        let old = reserve_sized(&drop, &ann, "US 9", 3);
        let_hold_run_out(&old);
        reserve_sized(&drop, &bob, "US 9", 1);
        assert_eq!(
            hold_row(&old),
            "1|3|expired",
            "US 9 is variant 1: jsonb keeps shorter keys first"
        );
        assert_eq!(available_of(&drop, "US 9"), 2);
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn a_buyers_own_past_due_hold_goes_back_to_its_size_when_they_take_another() {
        let drop = sized_drop(r#"{"US 9": 2, "US 10": 2}"#, 2);
        let ann = buyer("ann");
        let old = reserve_sized(&drop, &ann, "US 9", 2);
        let_hold_run_out(&old);
        let new = reserve_sized(&drop, &ann, "US 10", 1);
        assert_ne!(old, new);
        assert_eq!(available_of(&drop, "US 9"), 2);
        assert_eq!(available_of(&drop, "US 10"), 1);
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn reserve_items_takes_a_size_and_quantity_per_buyer() {
        let drop = sized_drop(r#"{"US 8": 2, "US 9": 3}"#, 3);
        let (ann, bob, cat, dan) = (buyer("ann"), buyer("bob"), buyer("cat"), buyer("dan"));
        let answers = text(&format!(
            "SELECT string_agg(format('%s %s %s', coalesce(sqlstate, CASE WHEN fresh THEN 'new' ELSE 'kept' END),
                                      coalesce(variant, '-'), quantity), ',')
               FROM dropstock.reserve_items('{drop}', ARRAY['{ann}', '{bob}', '{cat}', '{dan}']::uuid[],
                                            ARRAY['US 9', 'US 9', NULL, 'US 8'], ARRAY[2, 2, 1, 2])"
        ));
        assert_eq!(answers, "new US 9 2,DS020 US 9 2,DS012 - 1,new US 8 2");
        assert_eq!(available_of(&drop, "US 9"), 1);
        assert_eq!(available_of(&drop, "US 8"), 0);
        assert_refused(
            &format!(
                "SELECT * FROM dropstock.reserve_items('{drop}', ARRAY['{ann}']::uuid[], ARRAY['US 9', 'US 8'])"
            ),
            "22023",
            "one element per user id",
        );
        assert_refused(
            &format!(
                "SELECT * FROM dropstock.reserve_items('{drop}', ARRAY['{ann}']::uuid[], NULL, ARRAY[0])"
            ),
            "22023",
            "every quantity",
        );
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn extend_hold_adds_hold_seconds_as_often_as_the_drop_allows() {
        let drop = text(
            "SELECT id::text FROM dropstock.create_drop('Cart', 10, 5, now() - interval '1 minute', 60, 1, NULL, NULL, 1)",
        );
        let (ann, bob) = (buyer("ann"), buyer("bob"));
        let hold = reserve(&drop, &ann);
        let before = text(&format!(
            "SELECT expires_at::text FROM dropstock.reservations WHERE id = '{hold}'"
        ));
        assert_refused(
            &format!("SELECT dropstock.extend_hold('{hold}', '{bob}')"),
            "DS031",
            "another buyer",
        );
        run(&format!("SELECT dropstock.extend_hold('{hold}', '{ann}')"));
        assert_eq!(
            int(&format!(
                "SELECT extract(epoch FROM expires_at - '{before}'::timestamptz) FROM dropstock.reservations WHERE id = '{hold}'"
            )),
            60
        );
        assert_refused(
            &format!("SELECT dropstock.extend_hold('{hold}', '{ann}')"),
            "DS034",
            "already extended 1 times",
        );
        assert_eq!(
            text(&format!(
                "SELECT format('%s|%s', id, extensions) FROM dropstock.reserve_item('{drop}', '{ann}')"
            )),
            format!("{hold}|1"),
            "a retry finds the hold as extended"
        );
        let_hold_run_out(&hold);
        assert_refused(
            &format!("SELECT dropstock.extend_hold('{hold}', '{ann}')"),
            "DS030",
            "expired",
        );
        assert_refused(
            &format!("SELECT dropstock.extend_hold(NULL, '{ann}')"),
            "22023",
            "required",
        );
    }

    #[pg_test]
    fn extend_hold_is_refused_on_a_drop_that_does_not_allow_it() {
        let drop = drop_with_stock(2);
        let ann = buyer("ann");
        let hold = reserve(&drop, &ann);
        assert_refused(
            &format!("SELECT dropstock.extend_hold('{hold}', '{ann}')"),
            "DS034",
            "cannot be extended",
        );
        run(&format!("SELECT dropstock.purchase('{hold}', '{ann}')"));
        assert_refused(
            &format!("SELECT dropstock.extend_hold('{hold}', '{ann}')"),
            "DS033",
            "already purchased",
        );
    }

    #[pg_test]
    fn take_batch_turn_takes_a_free_turn_and_refuses_bad_arguments() {
        let drop = drop_with_stock(1);
        let turn = |named: i32| {
            Spi::get_one::<i32>(&format!(
                "SELECT dropstock.take_batch_turn('{drop}', {named}, 4)"
            ))
            .unwrap()
            .unwrap()
        };
        // Taken by this transaction until it ends: the same turn again is granted (advisory locks
        // are re-entrant), so a caller in one transaction never waits for itself.
        assert_eq!(turn(2), 2);
        assert_eq!(turn(2), 2);
        // Not waiting: a free turn all the same (whether it answers NULL when every turn is taken by
        // others is in the isolation spec batch-turns, which has other sessions).
        assert_eq!(
            Spi::get_one::<i32>(&format!(
                "SELECT dropstock.take_batch_turn('{drop}', 2, 4, wait => false)"
            )),
            Ok(Some(2))
        );
        for bad in [
            "take_batch_turn(NULL, 0, 4)".to_string(),
            format!("take_batch_turn('{drop}', NULL, 4)"),
            format!("take_batch_turn('{drop}', 4, 4)"),
            format!("take_batch_turn('{drop}', -1, 4)"),
            format!("take_batch_turn('{drop}', 0, 0)"),
            format!("take_batch_turn('{drop}', 0, 65)"),
            format!("take_batch_turn('{drop}', 0, 4, NULL)"),
        ] {
            assert_refused(
                &format!("SELECT dropstock.{bad}"),
                "22023",
                "turns from 1 to 64",
            );
        }
    }

    #[pg_test]
    fn share_batch_turns_divides_a_drops_turns_among_its_callers() {
        let drop = drop_with_stock(1);
        let other_drop = drop_with_stock(1);
        let callers: Vec<String> = (1..=5)
            .map(|k| format!("00000000-0000-0000-0000-00000000000{k}"))
            .collect();
        let share = |drop: &str, caller: &str| {
            Spi::get_one::<i32>(&format!(
                "SELECT dropstock.share_batch_turns('{drop}', '{caller}', 4)"
            ))
            .unwrap()
            .unwrap()
        };
        // Rounded up, so every caller keeps at least one turn; a caller that says so again is still
        // one caller.
        assert_eq!(share(&drop, &callers[0]), 4);
        assert_eq!(share(&drop, &callers[1]), 2);
        assert_eq!(share(&drop, &callers[0]), 2);
        assert_eq!(share(&drop, &callers[2]), 2);
        assert_eq!(share(&drop, &callers[3]), 1);
        assert_eq!(share(&drop, &callers[4]), 1);
        // Another drop's callers are its own.
        assert_eq!(share(&other_drop, &callers[0]), 4);
        // A caller silent for the window (3 s) no longer counts; one silent for a minute is cleared.
        run(&format!(
            "UPDATE dropstock.batch_callers SET seen_at = now() - interval '4 seconds'
              WHERE drop_id = '{drop}' AND caller <> '{}'",
            callers[4]
        ));
        run(&format!(
            "UPDATE dropstock.batch_callers SET seen_at = now() - interval '2 minutes'
              WHERE drop_id = '{drop}' AND caller = '{}'",
            callers[0]
        ));
        assert_eq!(share(&drop, &callers[4]), 4);
        assert_eq!(
            Spi::get_one::<i64>(&format!(
                "SELECT count(*) FROM dropstock.batch_callers WHERE drop_id = '{drop}'"
            )),
            Ok(Some(4))
        );
        assert_refused(
            "SELECT dropstock.share_batch_turns(gen_random_uuid(), gen_random_uuid(), 4)",
            "DS001",
            "does not exist",
        );
        let caller = &callers[0];
        for bad in [
            format!("share_batch_turns(NULL, '{caller}', 4)"),
            format!("share_batch_turns('{drop}', NULL, 4)"),
            format!("share_batch_turns('{drop}', '{caller}', NULL)"),
            format!("share_batch_turns('{drop}', '{caller}', 0)"),
            format!("share_batch_turns('{drop}', '{caller}', 65)"),
        ] {
            assert_refused(
                &format!("SELECT dropstock.{bad}"),
                "22023",
                "turns from 1 to 64",
            );
        }
    }
}
