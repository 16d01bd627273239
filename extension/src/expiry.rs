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
}
