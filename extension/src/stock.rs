//! Striped stock (sql/stock.sql): the slot helpers that holds, purchases, cancels and the sweep share.

pgrx::extension_sql_file!("../../sql/stock.sql", name = "stock", requires = ["schema"]);

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn stock_is_striped_over_at_most_64_slots_and_sums_exactly() {
        let small = drop_with_stock(5);
        assert_eq!(
            int(&format!(
                "SELECT count(*) FROM dropstock.stock_slots WHERE drop_id = '{small}'"
            )),
            5
        );
        let big = drop_with_stock(1000);
        assert_eq!(
            int(&format!(
                "SELECT count(*) FROM dropstock.stock_slots WHERE drop_id = '{big}'"
            )),
            64
        );
        assert_eq!(available(&big), 1000);
        assert_eq!(
            int(&format!(
                "SELECT max(available) - min(available) FROM dropstock.stock_slots WHERE drop_id = '{big}'"
            )),
            1
        );
    }

    #[pg_test]
    fn a_unit_claimed_and_given_back_keeps_the_sum() {
        let drop = drop_with_stock(3);
        assert_eq!(
            int(&format!(
                "SELECT dropstock._claim_units('{drop}', 0::smallint, 1)"
            )),
            1
        );
        assert_eq!(available(&drop), 2);
        run(&format!(
            "SELECT dropstock._adjust_stock('{drop}', 0::smallint, 1, 0)"
        ));
        assert_eq!(available(&drop), 3);
    }
}
