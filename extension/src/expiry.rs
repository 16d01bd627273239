//! The expiry sweep (sql/expiry.sql): `expire_reservations`.

pgrx::extension_sql_file!(
    "../../sql/expiry.sql",
    name = "expiry",
    requires = ["stock"]
);

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn expire_reservations_returns_due_units_in_bounded_batches_once_each() {
        let drop = drop_with_stock(10);
        let mut holds = Vec::new();
        for i in 0..5 {
            holds.push(reserve(&drop, &buyer(&format!("buyer{i}"))));
        }
        let live = reserve(&drop, &buyer("patient"));
        for hold in &holds {
            let_hold_run_out(hold);
        }
        assert_eq!(available(&drop), 4);
        assert_eq!(int("SELECT dropstock.expire_reservations(2)"), 2);
        assert_eq!(int("SELECT dropstock.expire_reservations(2)"), 2);
        assert_eq!(int("SELECT dropstock.expire_reservations(2)"), 1);
        assert_eq!(int("SELECT dropstock.expire_reservations(2)"), 0);
        assert_eq!(available(&drop), 9);
        assert_eq!(
            text(&format!(
                "SELECT status::text FROM dropstock.reservations WHERE id = '{live}'"
            )),
            "reserved"
        );
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn expire_reservations_refuses_a_batch_below_one() {
        assert_refused(
            "SELECT dropstock.expire_reservations(0)",
            "22023",
            "at least 1",
        );
        assert_refused(
            "SELECT dropstock.expire_reservations(NULL)",
            "22023",
            "at least 1",
        );
    }

    #[pg_test]
    fn archive_holds_moves_ended_holds_and_keeps_sales_stock_and_limits() {
        let drop = drop_with_stock(5);
        let (ann, bob, cat) = (buyer("ann"), buyer("bob"), buyer("cat"));
        let sold = reserve(&drop, &ann);
        run(&format!("SELECT dropstock.purchase('{sold}', '{ann}')"));
        let cancelled = reserve(&drop, &bob);
        run(&format!(
            "SELECT dropstock.cancel_reservation('{cancelled}', '{bob}')"
        ));
        let expired = reserve(&drop, &cat);
        let_hold_run_out(&expired);
        run("SELECT dropstock.expire_reservations()");
        let live = reserve(&drop, &buyer("dan"));

        let moved = int("SELECT dropstock.archive_holds(now() + interval '1 hour')");
        assert_eq!(moved, 2, "the cancelled and the expired hold");
        let archived = text(&format!(
            "SELECT string_agg(status::text, ',' ORDER BY status) FROM dropstock.archived_holds WHERE drop_id = '{drop}'"
        ));
        assert_eq!(archived, "expired,cancelled");
        for kept in [&sold, &live] {
            assert_eq!(
                int(&format!(
                    "SELECT count(*) FROM dropstock.reservations WHERE id = '{kept}'"
                )),
                1
            );
        }
        assert_eq!(
            int(&format!(
                "SELECT count(*) FROM dropstock.purchases WHERE drop_id = '{drop}'"
            )),
            1,
            "the sale stays"
        );
        assert_stock_invariant(&drop);
        assert_refused(
            &format!("SELECT dropstock.reserve_item('{drop}', '{ann}')"),
            "DS021",
            "limit of 1",
        );
        assert_eq!(
            text(&format!(
                "SELECT status::text FROM dropstock.cancel_reservation('{cancelled}', '{bob}')"
            )),
            "cancelled",
            "cancelling an archived hold returns it as it ended"
        );
    }

    #[pg_test]
    fn deleting_a_purchased_hold_is_refused_so_sales_cannot_vanish() {
        let drop = drop_with_stock(1);
        let ann = buyer("ann");
        let hold = reserve(&drop, &ann);
        run(&format!("SELECT dropstock.purchase('{hold}', '{ann}')"));
        assert_refused(
            &format!("DELETE FROM dropstock.reservations WHERE id = '{hold}'"),
            "23503",
            "purchases",
        );
    }
}
