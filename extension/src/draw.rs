//! Draws (sql/draw.sql): `enter_draw`, `run_draw`, `run_due_draws` (the worker's), `draw_status` and
//! `draw_result`.

pgrx::extension_sql_file!("../../sql/draw.sql", name = "draw", requires = ["waitlist"]);

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::*;
    use pgrx::prelude::*;

    /// A draw of `stock` units whose entries are open for an hour.
    fn draw_drop(stock: i32) -> String {
        text(&format!(
            "SELECT id::text FROM dropstock.create_drop('Draw', 100, {stock}, now() - interval '1 minute',
                                                        60, 1, now() + interval '1 hour', mode => 'draw')"
        ))
    }

    fn close_entries(drop: &str) {
        run(&format!(
            "UPDATE dropstock.drops SET ends_at = clock_timestamp() - interval '1 second' WHERE id = '{drop}'"
        ));
    }

    fn enter(drop: &str, user: &str) {
        run(&format!("SELECT dropstock.enter_draw('{drop}', '{user}')"));
    }

    #[pg_test]
    fn a_draw_takes_entries_not_reservations() {
        let drop = draw_drop(2);
        let ann = buyer("ann");
        assert_refused(
            &format!("SELECT dropstock.reserve_item('{drop}', '{ann}')"),
            "DS014",
            "is a draw",
        );
        assert_refused(
            &format!("SELECT dropstock.join_waitlist('{drop}', '{ann}')"),
            "DS014",
            "has not been drawn",
        );
        let first = text(&format!(
            "SELECT entry_id::text FROM dropstock.enter_draw('{drop}', '{ann}')"
        ));
        let again = text(&format!(
            "SELECT entry_id::text FROM dropstock.enter_draw('{drop}', '{ann}')"
        ));
        assert_eq!(first, again);
        assert_eq!(available(&drop), 2, "entries take no stock");
        assert_refused(
            &format!("SELECT dropstock.run_draw('{drop}')"),
            "DS017",
            "still open",
        );
        let race = drop_with_stock(1);
        assert_refused(
            &format!("SELECT dropstock.enter_draw('{race}', '{ann}')"),
            "DS015",
            "is not a draw",
        );
        assert_refused(
            "SELECT dropstock.create_drop('No end', 1, 1, mode => 'draw')",
            "22023",
            "needs an end time",
        );
    }

    #[pg_test]
    fn the_draw_order_is_the_published_hash_order_and_winners_get_offers() {
        let drop = draw_drop(2);
        let buyers: Vec<String> = (0..6).map(|i| buyer(&format!("entrant {i}"))).collect();
        for b in &buyers {
            enter(&drop, b);
        }
        close_entries(&drop);
        run(&format!(
            "SELECT dropstock.run_draw('{drop}', 'a public seed')"
        ));
        assert_refused(
            &format!("SELECT dropstock.enter_draw('{drop}', '{}')", buyers[0]),
            "DS011",
            "closed",
        );
        assert_refused(
            &format!("SELECT dropstock.run_draw('{drop}')"),
            "DS016",
            "already drawn",
        );
        // Anyone's recomputation from the published seed and entry ids gives the same order.
        assert!(boolean(&format!(
            "SELECT bool_and(mine.place = theirs.place) AND count(*) = 6
               FROM (SELECT row_number() OVER (ORDER BY sha256(convert_to(s.seed, 'UTF8') || uuid_send(r.entry_id)),
                                                r.entry_id) AS place, r.username
                       FROM dropstock.draw_result('{drop}') r, dropstock.draw_status('{drop}') s) theirs
               JOIN dropstock.draw_result('{drop}') mine USING (username)"
        )));
        // The first two have offers; the rest wait in draw order.
        assert!(boolean(&format!(
            "SELECT array_agg(r.username ORDER BY r.place) FILTER (WHERE h.reservation_id IS NOT NULL)
                    = (SELECT array_agg(x.username ORDER BY x.place) FROM dropstock.draw_result('{drop}') x WHERE x.place <= 2)
               FROM dropstock.draw_result('{drop}') r
               JOIN dropstock.users u ON u.username = r.username
               LEFT JOIN LATERAL dropstock.buyer_holds(u.id) h ON h.drop_id = '{drop}'"
        )));
        assert_eq!(
            int(&format!(
                "SELECT winners FROM dropstock.draw_status('{drop}')"
            )),
            2
        );
        assert_eq!(
            int(&format!("SELECT dropstock.waitlist_length('{drop}')")),
            4
        );
        // A winner's lapsed hold goes to the third entry.
        let first_hold = text(&format!(
            "SELECT h.reservation_id::text FROM dropstock.draw_result('{drop}') r
               JOIN dropstock.users u ON u.username = r.username
               CROSS JOIN LATERAL dropstock.buyer_holds(u.id) h WHERE r.place = 1"
        ));
        let_hold_run_out(&first_hold);
        run("SELECT dropstock.expire_reservations()");
        assert!(boolean(&format!(
            "SELECT EXISTS (SELECT FROM dropstock.draw_result('{drop}') r
                              JOIN dropstock.users u ON u.username = r.username
                             CROSS JOIN LATERAL dropstock.buyer_holds(u.id) h WHERE r.place = 3)"
        )));
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn another_seed_gives_another_order() {
        let (one, two) = (draw_drop(1), draw_drop(1));
        for i in 0..8 {
            let b = buyer(&format!("entrant {i}"));
            enter(&one, &b);
            enter(&two, &b);
        }
        close_entries(&one);
        close_entries(&two);
        run(&format!("SELECT dropstock.run_draw('{one}', 'seed one')"));
        run(&format!("SELECT dropstock.run_draw('{two}', 'seed two')"));
        let order = |drop: &str| {
            text(&format!(
                "SELECT string_agg(username, ',' ORDER BY place) FROM dropstock.draw_result('{drop}')"
            ))
        };
        // Entry ids differ between the drops as well as the seeds; 8! orders make a tie unlikely
        // enough (1 in 40,320) to count as a failure.
        assert_ne!(order(&one), order(&two));
    }

    #[pg_test]
    fn due_draws_are_run_with_a_fresh_seed() {
        let drop = draw_drop(1);
        enter(&drop, &buyer("ann"));
        close_entries(&drop);
        assert_eq!(int("SELECT dropstock.run_due_draws()"), 1);
        assert_eq!(
            int(&format!(
                "SELECT length(seed) FROM dropstock.draw_status('{drop}')"
            )),
            64
        );
        assert_eq!(int("SELECT dropstock.run_due_draws()"), 0);
    }
}
