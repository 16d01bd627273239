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

    #[pg_test]
    fn create_drop_with_variants_stripes_each_size_and_sums_the_total() {
        let drop = sized_drop(r#"{" US 9 ": 100, "US 8": 2}"#, 1);
        assert_eq!(
            int(&format!(
                "SELECT total_stock FROM dropstock.drops WHERE id = '{drop}'"
            )),
            102
        );
        let rows = text(&format!(
            "SELECT string_agg(format('%s=%s:%s', variant, label, total_stock), ' ' ORDER BY variant)
               FROM dropstock.variant_status('{drop}')"
        ));
        assert_eq!(rows, "1=US 8:2 2=US 9:100");
        let slots = text(&format!(
            "SELECT string_agg(n::text, ',' ORDER BY variant) FROM (SELECT variant, count(*) n
               FROM dropstock.stock_slots WHERE drop_id = '{drop}' GROUP BY variant) x"
        ));
        assert_eq!(slots, "2,64");
        assert_eq!(
            text(&format!(
                "SELECT string_agg(v.label || '=' || v.available_stock, ',')
                   FROM dropstock.drop_status('{drop}') s, unnest(s.variants) v"
            )),
            "US 8=2,US 9=100"
        );
        assert_eq!(
            int(&format!(
                "SELECT cardinality(variants) FROM dropstock.active_drops() WHERE id = '{drop}'"
            )),
            2
        );
        // A drop without sizes lists none, and has one implicit variant.
        let plain = drop_with_stock(3);
        assert_eq!(
            int(&format!(
                "SELECT cardinality(variants) FROM dropstock.drop_status('{plain}')"
            )),
            0
        );
        assert_eq!(
            text(&format!(
                "SELECT format('%s|%s|%s', variant, label IS NULL, total_stock) FROM dropstock.variant_status('{plain}')"
            )),
            "0|t|3"
        );
        // A total that agrees with the sizes is accepted.
        run("SELECT dropstock.create_drop('Agreed', 1, 3, now(), 60, 1, NULL, '{\"A\": 1, \"B\": 2}')");
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn create_drop_refuses_bad_variants_naming_the_label() {
        let many = format!(
            "{{{}}}",
            (0..101)
                .map(|i| format!("\"S{i}\": 1"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let cases = [
            (r#"{"US 9": 0}"#.to_owned(), r#"stock of variant "US 9""#),
            (r#"{"US 9": 1.5}"#.to_owned(), r#"stock of variant "US 9""#),
            (r#"{"US 9": "3"}"#.to_owned(), r#"stock of variant "US 9""#),
            (r#"{"US 9": null}"#.to_owned(), r#"stock of variant "US 9""#),
            (
                r#"{"  ": 1}"#.to_owned(),
                r#"variant label "  " must not be empty"#,
            ),
            (
                r#"{"US 9": 1, " US 9": 2}"#.to_owned(),
                r#"variant label "US 9" is given twice"#,
            ),
            (
                format!(r#"{{"{}": 1}}"#, "X".repeat(33)),
                "must be at most 32 characters",
            ),
            (r#"{"a\tb": 1}"#.to_owned(), "control characters"),
            ("{}".to_owned(), "1 to 100 variants, got 0"),
            (many, "1 to 100 variants, got 101"),
            ("[1, 2]".to_owned(), "must be a JSON object"),
        ];
        for (sizes, words) in cases {
            assert_refused(
                &format!(
                    "SELECT dropstock.create_drop('x', 1, NULL, now(), 60, 1, NULL, '{sizes}')"
                ),
                "22023",
                words,
            );
        }
        assert_refused(
            r#"SELECT dropstock.create_drop('x', 1, 5, now(), 60, 1, NULL, '{"A": 1}')"#,
            "22023",
            "is not the sum",
        );
        assert_refused(
            "SELECT dropstock.create_drop('x', 1, 1, now(), 60, 1, NULL, NULL, -1)",
            "22023",
            "max extensions",
        );
        assert_eq!(int("SELECT count(*) FROM dropstock.drops"), 0);
    }

    #[pg_test]
    fn variant_status_refuses_an_unknown_drop() {
        assert_refused(
            "SELECT * FROM dropstock.variant_status('00000000-0000-0000-0000-000000000000')",
            "DS001",
            "does not exist",
        );
    }
}
