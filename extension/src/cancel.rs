//! Giving a hold back (sql/cancel.sql): `cancel_reservation`.

pgrx::extension_sql_file!(
    "../../sql/cancel.sql",
    name = "cancel",
    requires = ["stock"]
);

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn cancel_reservation_gives_the_unit_back_at_once_and_only_once() {
        let drop = drop_with_stock(2);
        let ann = buyer("ann");
        let hold = reserve(&drop, &ann);
        assert_eq!(available(&drop), 1);
        let status = text(&format!(
            "SELECT status::text FROM dropstock.cancel_reservation('{hold}', '{ann}')"
        ));
        assert_eq!(status, "cancelled");
        assert_eq!(available(&drop), 2);
        run(&format!(
            "SELECT dropstock.cancel_reservation('{hold}', '{ann}')"
        ));
        assert_eq!(available(&drop), 2, "a second cancel gives nothing back");
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn cancel_reservation_refuses_other_buyers_purchases_unknown_holds_and_nulls() {
        let drop = drop_with_stock(2);
        let ann = buyer("ann");
        let bob = buyer("bob");
        let hold = reserve(&drop, &ann);
        assert_refused(
            &format!("SELECT dropstock.cancel_reservation('{hold}', '{bob}')"),
            "DS031",
            "another buyer",
        );
        run(&format!("SELECT dropstock.purchase('{hold}', '{ann}')"));
        assert_refused(
            &format!("SELECT dropstock.cancel_reservation('{hold}', '{ann}')"),
            "DS033",
            "already purchased",
        );
        let nobody = "00000000-0000-0000-0000-000000000000";
        assert_refused(
            &format!("SELECT dropstock.cancel_reservation('{nobody}', '{ann}')"),
            "DS003",
            "does not exist",
        );
        assert_refused(
            &format!("SELECT dropstock.cancel_reservation('{hold}', NULL)"),
            "22023",
            "required",
        );
        assert_stock_invariant(&drop);
    }
}
