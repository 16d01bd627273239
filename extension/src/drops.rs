//! Drops (sql/drops.sql): `create_drop`, and what screens show: `active_drops`, `drop_status`.

pgrx::extension_sql_file!("../../sql/drops.sql", name = "drops", requires = ["schema"]);

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn create_drop_applies_the_defaults() {
        let drop = drop_with_stock(10);
        let row = text(&format!(
            "SELECT format('%s|%s|%s|%s', price, hold_seconds, per_user_limit, ends_at IS NULL)
               FROM dropstock.drops WHERE id = '{drop}'"
        ));
        assert_eq!(row, "100.00|60|1|t");
        assert_eq!(available(&drop), 10);
    }

    #[pg_test]
    fn create_drop_refuses_bad_arguments() {
        let cases = [
            ("'', 1, 1", "name must not be empty"),
            ("NULL, 1, 1", "name must not be empty"),
            ("'x', -1, 1", "price must be"),
            ("'x', 'NaN', 1", "price must be"),
            ("'x', NULL, 1", "price must be"),
            ("'x', 1, 0", "total stock must be at least 1"),
            ("'x', 1, -5", "total stock must be at least 1"),
            ("'x', 1, NULL", "total stock must be at least 1"),
            ("'x', 1, 1, NULL", "start time must be"),
            ("'x', 1, 1, 'infinity'", "start time must be"),
            ("'x', 1, 1, now(), 0", "hold seconds must be from 1"),
            (
                "'x', 1, 1, now(), 60, 0",
                "per-user limit must be at least 1",
            ),
            (
                "'x', 1, 1, now(), 60, 1, now() - interval '1 day'",
                "must be after start time",
            ),
        ];
        for (args, words) in cases {
            assert_refused(
                &format!("SELECT dropstock.create_drop({args})"),
                "22023",
                words,
            );
        }
        assert_eq!(int("SELECT count(*) FROM dropstock.drops"), 0);
    }

    #[pg_test]
    fn active_drops_lists_open_and_upcoming_drops_but_not_ended_ones() {
        let open = drop_with_stock(3);
        run("SELECT dropstock.create_drop('Upcoming', 1, 1, now() + interval '1 day')");
        run("SELECT dropstock.create_drop('Ended', 1, 1, now() - interval '2 days', 60, 1, now() - interval '1 day')");
        let names =
            text("SELECT string_agg(name, ',' ORDER BY starts_at) FROM dropstock.active_drops()");
        assert_eq!(names, "Test drop,Upcoming");
        assert_eq!(
            int(&format!(
                "SELECT available_stock FROM dropstock.active_drops() WHERE id = '{open}'"
            )),
            3
        );
    }

    #[pg_test]
    fn drop_status_shows_the_three_most_recent_buyers_newest_first() {
        run("SELECT dropstock.create_drop('Feed', 5, 10, now() - interval '1 minute', 60, 1)");
        let drop = text("SELECT id::text FROM dropstock.drops WHERE name = 'Feed'");
        for (i, name) in ["ann", "bob", "cyd", "dee"].iter().enumerate() {
            let user = buyer(name);
            let hold = reserve(&drop, &user);
            run(&format!("SELECT dropstock.purchase('{hold}', '{user}')"));
            // Give each sale its own timestamp: a test is one transaction, where now() stands still.
            run(&format!(
                "UPDATE dropstock.purchases SET created_at = now() + interval '{i} seconds' WHERE reservation_id = '{hold}'"
            ));
        }
        let feed = text(&format!(
            "SELECT string_agg(p.username, ',' ORDER BY o)
               FROM dropstock.drop_status('{drop}') s, unnest(s.recent_purchases) WITH ORDINALITY AS p(id, user_id, username, created_at, o)"
        ));
        assert_eq!(feed, "dee,cyd,bob");
        assert_eq!(
            int(&format!(
                "SELECT sold_stock FROM dropstock.drop_status('{drop}')"
            )),
            4
        );
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn drop_status_refuses_an_unknown_drop() {
        assert_refused(
            "SELECT dropstock.drop_status('00000000-0000-0000-0000-000000000000')",
            "DS001",
            "does not exist",
        );
        assert_refused("SELECT dropstock.drop_status(NULL)", "22023", "required");
    }
}
