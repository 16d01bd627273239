//! Holds (sql/reserve.sql): `reserve_item`, and `reserve_items` for many buyers in one transaction.

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
    fn reserve_item_replaces_the_buyers_own_past_due_hold() {
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
}
