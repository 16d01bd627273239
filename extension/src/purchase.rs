//! Sales (sql/purchase.sql): `purchase`.

pgrx::extension_sql_file!(
    "../../sql/purchase.sql",
    name = "purchase",
    requires = ["stock"]
);

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn purchase_turns_a_live_hold_into_one_sale_at_the_drops_price() {
        let drop = drop_with_stock(3);
        let ann = buyer("ann");
        let hold = reserve(&drop, &ann);
        let sale = text(&format!(
            "SELECT id::text FROM dropstock.purchase('{hold}', '{ann}')"
        ));
        let again = text(&format!(
            "SELECT id::text FROM dropstock.purchase('{hold}', '{ann}')"
        ));
        assert_eq!(sale, again, "a retry returns the same sale");
        assert_eq!(
            int(&format!(
                "SELECT count(*) FROM dropstock.purchases WHERE drop_id = '{drop}'"
            )),
            1
        );
        assert_eq!(
            text(&format!(
                "SELECT price::text FROM dropstock.purchases WHERE id = '{sale}'"
            )),
            "100.00"
        );
        assert_eq!(
            text(&format!(
                "SELECT status::text FROM dropstock.reservations WHERE id = '{hold}'"
            )),
            "purchased"
        );
        assert_eq!(available(&drop), 2);
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn purchase_refuses_another_buyers_hold() {
        let drop = drop_with_stock(3);
        let hold = reserve(&drop, &buyer("ann"));
        let bob = buyer("bob");
        assert_refused(
            &format!("SELECT dropstock.purchase('{hold}', '{bob}')"),
            "DS031",
            "another buyer",
        );
        assert_eq!(int("SELECT count(*) FROM dropstock.purchases"), 0);
    }

    #[pg_test]
    fn purchase_refuses_a_past_due_hold_even_before_any_sweep() {
        let drop = drop_with_stock(3);
        let ann = buyer("ann");
        let hold = reserve(&drop, &ann);
        let_hold_run_out(&hold);
        assert_refused(
            &format!("SELECT dropstock.purchase('{hold}', '{ann}')"),
            "DS030",
            "expired",
        );
        run("SELECT dropstock.expire_reservations()");
        assert_refused(
            &format!("SELECT dropstock.purchase('{hold}', '{ann}')"),
            "DS030",
            "expired",
        );
        assert_eq!(available(&drop), 3);
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn purchase_refuses_a_cancelled_hold_unknown_holds_and_nulls() {
        let drop = drop_with_stock(3);
        let ann = buyer("ann");
        let hold = reserve(&drop, &ann);
        run(&format!(
            "SELECT dropstock.cancel_reservation('{hold}', '{ann}')"
        ));
        assert_refused(
            &format!("SELECT dropstock.purchase('{hold}', '{ann}')"),
            "DS032",
            "cancelled",
        );
        let nobody = "00000000-0000-0000-0000-000000000000";
        assert_refused(
            &format!("SELECT dropstock.purchase('{nobody}', '{ann}')"),
            "DS003",
            "does not exist",
        );
        assert_refused(
            &format!("SELECT dropstock.purchase(NULL, '{ann}')"),
            "22023",
            "required",
        );
    }

    #[pg_test]
    fn purchase_refuses_a_sale_past_the_per_buyer_limit_whatever_made_the_hold() {
        // reserve_item never grants such a hold; one made behind the API's back is still not sold.
        let drop = drop_with_stock(3);
        let ann = buyer("ann");
        let first = reserve(&drop, &ann);
        run(&format!("SELECT dropstock.purchase('{first}', '{ann}')"));
        assert_eq!(
            int(&format!(
                "SELECT dropstock._claim_units('{drop}', 0::smallint, 1)"
            )),
            1
        );
        let forged = text(&format!(
            "INSERT INTO dropstock.reservations (drop_id, user_id, expires_at)
             VALUES ('{drop}', '{ann}', now() + interval '1 minute') RETURNING id::text"
        ));
        assert_refused(
            &format!("SELECT dropstock.purchase('{forged}', '{ann}')"),
            "DS021",
            "limit of 1",
        );
        assert_eq!(
            int(&format!(
                "SELECT count(*) FROM dropstock.purchases WHERE user_id = '{ann}'"
            )),
            1
        );
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn purchase_refuses_an_archived_hold_as_it_ended() {
        let drop = drop_with_stock(2);
        let ann = buyer("ann");
        let hold = reserve(&drop, &ann);
        let_hold_run_out(&hold);
        run("SELECT dropstock.expire_reservations()");
        assert_eq!(
            int("SELECT dropstock.archive_holds(now() + interval '1 minute')"),
            1
        );
        assert_refused(
            &format!("SELECT dropstock.purchase('{hold}', '{ann}')"),
            "DS030",
            "expired",
        );
        assert_refused(
            &format!("SELECT dropstock.purchase('{hold}', '{}')", buyer("bob")),
            "DS031",
            "another buyer",
        );
    }
}
