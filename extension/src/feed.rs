//! The stock feed (sql/feed.sql): `publish_changes`, which the background worker runs every tick.

pgrx::extension_sql_file!("../../sql/feed.sql", name = "feed", requires = ["schema"]);

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::*;
    use pgrx::prelude::*;

    fn seq(drop: &str) -> i64 {
        int(&format!(
            "SELECT seq FROM dropstock.feed_state WHERE drop_id = '{drop}'"
        ))
    }

    #[pg_test]
    fn publish_changes_publishes_each_changed_drop_once_with_a_rising_seq() {
        let drop = drop_with_stock(5);
        let quiet = drop_with_stock(5);
        assert_eq!(
            int("SELECT dropstock.publish_changes()"),
            2,
            "new drops are announced"
        );
        assert_eq!(
            int("SELECT dropstock.publish_changes()"),
            0,
            "nothing changed"
        );
        let ann = buyer("ann");
        let hold = reserve(&drop, &ann);
        reserve(&drop, &buyer("bob"));
        assert_eq!(
            int("SELECT dropstock.publish_changes()"),
            1,
            "two holds, one notification"
        );
        assert_eq!(seq(&drop), 2);
        run(&format!("SELECT dropstock.purchase('{hold}', '{ann}')"));
        assert_eq!(
            int("SELECT dropstock.publish_changes()"),
            1,
            "a sale is a change"
        );
        assert_eq!(seq(&drop), 3);
        assert_eq!(seq(&quiet), 1);
        assert_eq!(
            int(&format!(
                "SELECT available FROM dropstock.feed_state WHERE drop_id = '{drop}'"
            )),
            3
        );
    }

    #[pg_test]
    fn publish_changes_stops_looking_at_a_finished_drop() {
        let drop = drop_with_stock(1);
        let ann = buyer("ann");
        let hold = reserve(&drop, &ann);
        run(&format!("SELECT dropstock.purchase('{hold}', '{ann}')"));
        assert_eq!(int("SELECT dropstock.publish_changes()"), 1);
        assert_eq!(int("SELECT dropstock.publish_changes()"), 0);
        assert_eq!(seq(&drop), 1);
    }
}
