//! The waiting list (sql/waitlist.sql): `join_waitlist`, `leave_waitlist`, `waitlist_position`,
//! `waitlist_length`, `buyer_holds`, `inbox_of`, and `_give_back`, through which every unit that comes
//! back reaches the line before stock.

pgrx::extension_sql_file!(
    "../../sql/waitlist.sql",
    name = "waitlist",
    requires = ["stock", "drops"]
);

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testing::*;
    use pgrx::prelude::*;

    fn join(drop: &str, user: &str) -> i64 {
        int(&format!(
            "SELECT position FROM dropstock.join_waitlist('{drop}', '{user}')"
        ))
    }

    fn position(drop: &str, user: &str) -> Option<i64> {
        Spi::get_one::<i32>(&format!(
            "SELECT dropstock.waitlist_position('{drop}', '{user}')"
        ))
        .expect("waitlist_position")
        .map(i64::from)
    }

    fn offer_of(drop: &str, user: &str) -> Option<String> {
        Spi::get_one::<String>(&format!(
            "SELECT (SELECT reservation_id::text FROM dropstock.buyer_holds('{user}') WHERE drop_id = '{drop}' AND offered)"
        ))
        .expect("buyer_holds")
    }

    /// A drop of `stock` units, all held by new buyers; returns the drop and the holds.
    fn sold_out(stock: i32) -> (String, Vec<String>) {
        let drop = drop_with_stock(stock);
        let holds = (0..stock)
            .map(|i| reserve(&drop, &buyer(&format!("holder {i}"))))
            .collect();
        (drop, holds)
    }

    fn cancel(hold: &str) {
        run(&format!(
            "SELECT dropstock.cancel_reservation(id, user_id) FROM dropstock.reservations WHERE id = '{hold}'"
        ));
    }

    #[pg_test]
    fn joining_while_units_are_free_is_refused_with_a_word_to_reserve() {
        let drop = drop_with_stock(2);
        let ann = buyer("ann");
        assert_refused(
            &format!("SELECT dropstock.join_waitlist('{drop}', '{ann}')"),
            "DS023",
            "2 of drop \"Test drop\" left: reserve instead of waiting",
        );
    }

    #[pg_test]
    fn buyers_join_a_sold_out_drop_in_order_and_joining_again_keeps_the_place() {
        let (drop, _) = sold_out(1);
        let (ann, bob) = (buyer("ann"), buyer("bob"));
        assert_eq!(join(&drop, &ann), 1);
        assert_eq!(join(&drop, &bob), 2);
        assert_eq!(join(&drop, &ann), 1);
        assert!(!boolean(&format!(
            "SELECT fresh FROM dropstock.join_waitlist('{drop}', '{ann}')"
        )));
        assert_eq!(
            int(&format!("SELECT dropstock.waitlist_length('{drop}')")),
            2
        );
        assert!(boolean(&format!(
            "SELECT dropstock.leave_waitlist('{drop}', '{ann}')"
        )));
        assert_eq!(position(&drop, &bob), Some(1));
        assert_eq!(position(&drop, &ann), None);
        assert!(!boolean(&format!(
            "SELECT dropstock.leave_waitlist('{drop}', '{ann}')"
        )));
    }

    #[pg_test]
    fn a_cancelled_unit_goes_to_the_first_in_line_as_an_offer_not_to_stock() {
        let (drop, holds) = sold_out(1);
        let (ann, bob) = (buyer("ann"), buyer("bob"));
        join(&drop, &ann);
        join(&drop, &bob);
        cancel(&holds[0]);
        assert_eq!(available(&drop), 0);
        assert!(offer_of(&drop, &ann).is_some(), "ann has her offer");
        assert_eq!(position(&drop, &ann), None);
        assert_eq!(position(&drop, &bob), Some(1));
        assert_eq!(
            int("SELECT count(*) FROM dropstock.offers_unsent"),
            1,
            "the offer waits for the publication"
        );
        assert_stock_invariant(&drop);
        // Her offer is a hold like any other: she buys it.
        let offer = offer_of(&drop, &ann).unwrap();
        run(&format!("SELECT dropstock.purchase('{offer}', '{ann}')"));
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn an_expired_hold_serves_the_line_and_a_lapsed_offer_moves_it_on() {
        let (drop, holds) = sold_out(1);
        let (ann, bob) = (buyer("ann"), buyer("bob"));
        join(&drop, &ann);
        join(&drop, &bob);
        let_hold_run_out(&holds[0]);
        run("SELECT dropstock.expire_reservations()");
        let offer = offer_of(&drop, &ann).expect("ann's offer");
        let_hold_run_out(&offer);
        run("SELECT dropstock.expire_reservations()");
        assert!(offer_of(&drop, &bob).is_some(), "bob's turn");
        assert_eq!(
            position(&drop, &ann),
            None,
            "a lapsed offer is not made again"
        );
        assert_eq!(available(&drop), 0);
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn nobody_outside_the_line_reserves_while_buyers_wait_and_those_in_it_wait_their_turn() {
        let (drop, holds) = sold_out(1);
        let (ann, carl) = (buyer("ann"), buyer("carl"));
        join(&drop, &ann);
        assert_refused(
            &format!("SELECT dropstock.reserve_item('{drop}', '{carl}')"),
            "DS020",
            "buyers are waiting for drop \"Test drop\"",
        );
        assert_refused(
            &format!("SELECT dropstock.reserve_item('{drop}', '{ann}')"),
            "DS025",
            "you are number 1 in line",
        );
        // A past-due hold is not reclaimed by a reserver while the line waits for it.
        let_hold_run_out(&holds[0]);
        assert_refused(
            &format!("SELECT dropstock.reserve_item('{drop}', '{carl}')"),
            "DS020",
            "waiting",
        );
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn a_buyer_whose_hold_ran_out_cannot_take_it_back_while_others_wait() {
        let drop = drop_with_stock(1);
        let (hoarder, ann) = (buyer("hoarder"), buyer("ann"));
        let hold = reserve(&drop, &hoarder);
        join_refused_then_sold_out(&drop, &ann);
        let_hold_run_out(&hold);
        assert_refused(
            &format!("SELECT dropstock.reserve_item('{drop}', '{hoarder}')"),
            "DS022",
            "may reserve it again from",
        );
        // The refusal changed nothing; the sweep gives the unit to the line, and the hoarder cools down.
        run("SELECT dropstock.expire_reservations()");
        assert!(
            offer_of(&drop, &ann).is_some(),
            "the hoarder's unit went to the line"
        );
        join(&drop, &buyer("bob"));
        assert_refused(
            &format!("SELECT dropstock.reserve_item('{drop}', '{hoarder}')"),
            "DS022",
            "ended while others were waiting",
        );
        assert_stock_invariant(&drop);
    }

    /// The drop is sold out, so `user` joins its line.
    fn join_refused_then_sold_out(drop: &str, user: &str) {
        assert_eq!(join(drop, user), 1);
    }

    #[pg_test]
    fn without_anybody_waiting_a_buyer_whose_hold_ran_out_competes_like_anyone() {
        let drop = drop_with_stock(1);
        let hoarder = buyer("hoarder");
        let hold = reserve(&drop, &hoarder);
        let_hold_run_out(&hold);
        let again = reserve(&drop, &hoarder);
        assert_ne!(again, hold);
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn a_buyer_waiting_for_two_units_gets_both_at_once_never_one() {
        let (drop, holds) = sold_out_with_limit(2, 2);
        let (ann, bob) = (buyer("ann"), buyer("bob"));
        int(&format!(
            "SELECT position FROM dropstock.join_waitlist('{drop}', '{ann}', NULL::text, 2)"
        ));
        join(&drop, &bob);
        cancel(&holds[0]);
        assert!(offer_of(&drop, &ann).is_none(), "one unit is not enough");
        assert!(
            offer_of(&drop, &bob).is_none(),
            "the unit is kept for ann, not given to bob"
        );
        assert_eq!(
            int(&format!(
                "SELECT held_stock FROM dropstock.drop_status('{drop}')"
            )),
            2
        );
        assert_stock_invariant(&drop);
        cancel(&holds[1]);
        let offer = offer_of(&drop, &ann).expect("ann's offer");
        assert_eq!(
            int(&format!(
                "SELECT quantity FROM dropstock.reservations WHERE id = '{offer}'"
            )),
            2
        );
        assert_stock_invariant(&drop);
    }

    /// A drop of `stock` units and limit `limit`, each unit held by a buyer of its own.
    fn sold_out_with_limit(stock: i32, limit: i32) -> (String, Vec<String>) {
        let drop = text(&format!(
            "SELECT id::text FROM dropstock.create_drop('Test drop', 100, {stock}, now() - interval '1 minute', 60, {limit})"
        ));
        let holds = (0..stock)
            .map(|i| reserve(&drop, &buyer(&format!("holder {i}"))))
            .collect();
        (drop, holds)
    }

    #[pg_test]
    fn leaving_with_units_kept_hands_them_on_down_the_line() {
        let (drop, holds) = sold_out_with_limit(2, 2);
        let (ann, bob) = (buyer("ann"), buyer("bob"));
        int(&format!(
            "SELECT position FROM dropstock.join_waitlist('{drop}', '{ann}', NULL::text, 2)"
        ));
        join(&drop, &bob);
        cancel(&holds[0]);
        run(&format!(
            "SELECT dropstock.leave_waitlist('{drop}', '{ann}')"
        ));
        assert!(offer_of(&drop, &bob).is_some());
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn a_buyer_the_limit_now_stops_is_passed_over_and_the_units_kept_for_them_go_on() {
        let (drop, holds) = sold_out_with_limit(3, 2);
        let (ann, bob) = (buyer("ann"), buyer("bob"));
        int(&format!(
            "SELECT position FROM dropstock.join_waitlist('{drop}', '{ann}', NULL::text, 2)"
        ));
        join(&drop, &bob);
        cancel(&holds[0]);
        assert!(offer_of(&drop, &bob).is_none(), "the unit is kept for ann");
        // The shop lowers the limit: ann's two units are now more than she may have.
        run(&format!(
            "UPDATE dropstock.drops SET per_user_limit = 1 WHERE id = '{drop}'"
        ));
        cancel(&holds[1]);
        assert!(offer_of(&drop, &ann).is_none());
        assert_eq!(position(&drop, &ann), None, "ann's place ended");
        assert!(offer_of(&drop, &bob).is_some(), "bob is next");
        assert_eq!(
            int(&format!(
                "SELECT available_stock FROM dropstock.drop_status('{drop}')"
            )),
            1,
            "the unit kept for ann and the one that came back: one to bob, one to stock"
        );
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn a_buyer_waiting_for_several_sizes_gets_the_first_that_comes_back() {
        let drop = sized_drop(r#"{"S": 1, "M": 1, "L": 1}"#, 1);
        let holds: Vec<String> = ["S", "M", "L"]
            .iter()
            .enumerate()
            .map(|(i, size)| {
                let holder = buyer(&format!("holder {i}"));
                text(&format!(
                    "SELECT id::text FROM dropstock.reserve_item('{drop}', '{holder}', '{size}')"
                ))
            })
            .collect();
        let ann = buyer("ann");
        run(&format!(
            "SELECT dropstock.join_waitlist('{drop}', '{ann}', ARRAY['M', 'L'])"
        ));
        cancel(&holds[0]); // S: not for ann
        assert!(offer_of(&drop, &ann).is_none());
        assert_eq!(available_of(&drop, "S"), 1);
        cancel(&holds[2]); // L
        assert_eq!(
            text(&format!(
                "SELECT (SELECT variant FROM dropstock.buyer_holds('{ann}') WHERE drop_id = '{drop}')"
            )),
            "L"
        );
        assert_stock_invariant(&drop);
    }

    #[pg_test]
    fn joining_is_refused_past_the_limit_and_while_holding() {
        let (drop, _) = sold_out(1);
        let ann = buyer("ann");
        assert_refused(
            &format!("SELECT dropstock.join_waitlist('{drop}', '{ann}', NULL::text, 2)"),
            "DS021",
            "limit of 1 per buyer",
        );
        let drop2 = drop_with_stock(2);
        reserve(&drop2, &ann);
        reserve(&drop2, &buyer("bob"));
        assert_refused(
            &format!("SELECT dropstock.join_waitlist('{drop2}', '{ann}')"),
            "DS024",
            "you already hold units",
        );
    }

    #[pg_test]
    fn the_feed_sees_the_line_move_even_when_its_length_stays() {
        let (drop, _) = sold_out(1);
        // Every buyer before the first publication (see feed.rs on the publication lock).
        let (first, second, third) = (
            buyer("line first"),
            buyer("line second"),
            buyer("line third"),
        );
        join(&drop, &first);
        join(&drop, &second);
        run("SELECT dropstock.publish_changes()");
        let line_seq = |drop: &str| {
            int(&format!(
                "SELECT line_seq FROM dropstock.feed_state WHERE drop_id = '{drop}'"
            ))
        };
        let before = line_seq(&drop);
        run(&format!(
            "SELECT dropstock.leave_waitlist('{drop}', '{first}')"
        ));
        join(&drop, &third);
        assert!(int("SELECT dropstock.publish_changes()") >= 1);
        assert_eq!(line_seq(&drop), before + 1);
        assert_eq!(position(&drop, &second), Some(1));
    }

    #[pg_test]
    fn an_offer_is_published_to_the_buyers_inbox_only_once() {
        let (drop, holds) = sold_out(1);
        let ann = buyer("ann");
        join(&drop, &ann);
        cancel(&holds[0]);
        let inbox = text(&format!("SELECT dropstock.inbox_of('{ann}')"));
        assert_eq!(inbox.len(), 64);
        assert_eq!(
            inbox,
            text(&format!(
                "SELECT encode(sha256(convert_to(inbox_key, 'UTF8')), 'hex') FROM dropstock.users WHERE id = '{ann}'"
            ))
        );
        assert!(int("SELECT dropstock.publish_changes()") >= 2);
        assert_eq!(int("SELECT count(*) FROM dropstock.offers_unsent"), 0);
    }
}
