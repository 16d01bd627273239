//! The stock feed (sql/feed.sql): `publish_changes`, which the background worker runs every tick, told
//! which drops changed (`_publish_changes`, `wake`).

pgrx::extension_sql_file!("../../sql/feed.sql", name = "feed", requires = ["schema"]);

// The tests run side by side, each in one transaction. One that has published holds the publication
// lock to its end, so the buyers it creates after that have names no other test uses: a test waiting
// for the lock may have inserted a common name that this one would wait for.
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
        let ann = buyer("rising seq ann");
        let hold = reserve(&drop, &ann);
        reserve(&drop, &buyer("rising seq bob"));
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

    #[pg_test]
    fn every_sale_is_announced_exactly_once_even_many_in_one_tick() {
        let drop = drop_with_stock(30);
        run("SELECT dropstock.publish_changes()");
        for i in 0..23 {
            let who = buyer(&format!("announced buyer {i}"));
            let hold = reserve(&drop, &who);
            run(&format!("SELECT dropstock.purchase('{hold}', '{who}')"));
        }
        // 23 sales, at most 10 per notification: three notifications, seq 2, 3 and 4.
        assert_eq!(int("SELECT dropstock.publish_changes()"), 3);
        assert_eq!(seq(&drop), 4);
        assert_eq!(
            text(&format!(
                "SELECT string_agg(n::text, ',' ORDER BY s) FROM (SELECT feed_seq s, count(*) n
                   FROM dropstock.purchases WHERE drop_id = '{drop}' GROUP BY feed_seq) x"
            )),
            "10,10,3"
        );
        assert_eq!(
            int("SELECT dropstock.publish_changes()"),
            0,
            "nothing twice"
        );
    }

    #[pg_test]
    fn a_quiet_drop_is_not_looked_at_again() {
        let drop = drop_with_stock(5);
        assert_eq!(int("SELECT dropstock.publish_changes()"), 1);
        assert!(!boolean(&format!(
            "SELECT held > 0 OR pending FROM dropstock.feed_state WHERE drop_id = '{drop}'"
        )));
        let hold = reserve(&drop, &buyer("quiet drop buyer"));
        assert_eq!(int("SELECT dropstock.publish_changes()"), 1);
        run(&format!(
            "SELECT dropstock.cancel_reservation('{hold}', user_id) FROM dropstock.reservations WHERE id = '{hold}'"
        ));
        assert_eq!(
            int("SELECT dropstock.publish_changes()"),
            1,
            "a hold that ended is seen through the held count of the last publication"
        );
        assert_eq!(int("SELECT dropstock.publish_changes()"), 0);
    }

    #[pg_test]
    fn told_which_drops_changed_a_publication_looks_at_those_and_no_others() {
        let drop = drop_with_stock(5);
        assert_eq!(int("SELECT dropstock.publish_changes()"), 1);
        let hold = reserve(&drop, &buyer("told drop buyer"));
        assert_eq!(
            int("SELECT dropstock._publish_changes('{}', '{}', '{}', false)"),
            0,
            "a quiet drop that gained a hold is found only through the list"
        );
        assert_eq!(
            int(&format!(
                "SELECT dropstock._publish_changes(ARRAY['{drop}']::uuid[], '{{}}', '{{}}', false)"
            )),
            1
        );
        assert_eq!(seq(&drop), 2);
        run(&format!(
            "SELECT dropstock.cancel_reservation('{hold}', user_id) FROM dropstock.reservations WHERE id = '{hold}'"
        ));
        assert_eq!(
            int("SELECT dropstock._publish_changes('{}', '{}', '{}', false)"),
            0,
            "a drop that held units at its last publication is not looked at unless listed: the cancel \
             lists it at commit"
        );
        assert_eq!(
            int("SELECT dropstock._publish_changes('{}', '{}', '{}', true)"),
            1,
            "the full look sees the hold that ended"
        );
        assert_eq!(int("SELECT dropstock.publish_changes()"), 0);
    }

    #[pg_test]
    fn a_sold_out_drop_that_gained_a_hold_is_published_though_its_figures_did_not_move() {
        let drop = drop_with_stock(1);
        let ann = buyer("sold-out gained ann");
        let hold = reserve(&drop, &ann);
        assert_eq!(int("SELECT dropstock.publish_changes()"), 1);
        // The unit comes back and goes to another buyer within one tick: available, held and sold are
        // what the last notice said, but the drop's buyers are not.
        run(&format!(
            "SELECT dropstock.cancel_reservation('{hold}', '{ann}')"
        ));
        reserve(&drop, &buyer("sold-out gained bob"));
        assert_eq!(
            int("SELECT dropstock._publish_changes('{}', '{}', '{}', true)"),
            0,
            "found by the walk but not listed: only its figures count, and they did not move"
        );
        assert_eq!(
            int(&format!(
                "SELECT dropstock._publish_changes(ARRAY['{drop}']::uuid[], '{{}}', '{{}}', false)"
            )),
            0,
            "listed, but no hold made in it (a sale, say, already published): its figures did not move"
        );
        assert_eq!(
            int(&format!(
                "SELECT dropstock._publish_changes(ARRAY['{drop}']::uuid[], ARRAY['{drop}']::uuid[], ARRAY[clock_timestamp()], false)"
            )),
            1,
            "a hold was made in it while sold out: its buyers changed"
        );
        assert_eq!(
            int(&format!(
                "SELECT dropstock._publish_changes(ARRAY['{drop}']::uuid[], ARRAY['{drop}']::uuid[],
                                                   ARRAY[now() - interval '1 second'], false)"
            )),
            0,
            "holds that committed before the last publication started: it showed them"
        );
        assert_eq!(seq(&drop), 2);
        assert_eq!(
            int("SELECT dropstock.publish_changes()"),
            1,
            "not told which drops gained holds, every sold-out drop with live holds may have"
        );
        let open = drop_with_stock(5);
        reserve(&open, &buyer("sold-out gained cy"));
        assert_eq!(int("SELECT dropstock.publish_changes()"), 2);
        run("SELECT dropstock.publish_changes()");
        assert_eq!(
            seq(&open),
            1,
            "a drop with units left is published again only when its figures move"
        );
    }
}
