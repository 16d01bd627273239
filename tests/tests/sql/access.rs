//! Access: an application role given `dropstock.grant_access(role)` (the README's way: EXECUTE on the
//! buyer-facing functions and nothing else) can reserve and buy, and cannot change a table, call an internal helper, or create
//! a drop. Holds are only ever acted on by their owner.

use dropstock_tests::db::*;
use uuid::Uuid;

/// A connection as a new LOGIN role given exactly what `dropstock.grant_access` grants (the cluster trusts
/// loopback connections, so no password is needed).
async fn connect_as_app(admin: &tokio_postgres::Client) -> (tokio_postgres::Client, String) {
    let role = format!("dropstock_app_{}", Uuid::new_v4().simple());
    admin
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("SELECT dropstock.grant_access('{role}')"))
        .await
        .unwrap();
    let url = database_url().replacen("postgres@", &format!("{role}@"), 1);
    let (client, _) = connect_to(&url).await.expect("connect as the app role");
    (client, role)
}

async fn drop_role(admin: &tokio_postgres::Client, role: &str) {
    admin
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_role_with_only_execute_works_through_the_api_and_nothing_else() {
    let admin = connect().await;
    let drop = new_drop(&admin, 5, 60).await;
    let (app, role) = connect_as_app(&admin).await;

    let buyer: Uuid = app
        .query_one(
            "SELECT id FROM dropstock.create_user($1)",
            &[&unique("app-buyer")],
        )
        .await
        .expect("create_user through the API")
        .get(0);
    let hold: Uuid = app
        .query_one(
            "SELECT id FROM dropstock.reserve_item($1, $2)",
            &[&drop, &buyer],
        )
        .await
        .expect("reserve_item through the API")
        .get(0);
    app.execute("SELECT dropstock.purchase($1, $2)", &[&hold, &buyer])
        .await
        .expect("purchase through the API");
    let listed: i64 = app
        .query_one(
            "SELECT count(*) FROM dropstock.active_drops() WHERE id = $1",
            &[&drop],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(listed, 1);
    // What the adapter's batches call: a turn, and its share of the drop's turns.
    app.batch_execute(&format!(
        "BEGIN; SELECT dropstock.take_batch_turn('{drop}', 0, 4); COMMIT"
    ))
    .await
    .expect("take_batch_turn through the API");
    let share: i32 = app
        .query_one(
            "SELECT dropstock.share_batch_turns($1, gen_random_uuid(), 4)",
            &[&drop],
        )
        .await
        .expect("share_batch_turns through the API")
        .get(0);
    assert_eq!(share, 4, "the only caller of the drop");

    let forbidden = [
        format!("UPDATE dropstock.stock_slots SET available = available + 100 WHERE drop_id = '{drop}'"),
        format!("INSERT INTO dropstock.purchases (reservation_id, drop_id, user_id, price) VALUES ('{hold}', '{drop}', '{buyer}', 0)"),
        format!("UPDATE dropstock.reservations SET status = 'reserved' WHERE id = '{hold}'"),
        "DELETE FROM dropstock.purchases".to_string(),
        "DELETE FROM dropstock.batch_callers".to_string(),
        "SELECT * FROM dropstock.users".to_string(),
        format!("SELECT dropstock._adjust_stock('{drop}', 0::smallint, 100, 0)"),
        "SELECT dropstock.create_drop('free stock', 0, 1000000)".to_string(),
        "SELECT dropstock.expire_reservations()".to_string(),
    ];
    for statement in &forbidden {
        let refused = app.batch_execute(statement).await.expect_err(statement);
        assert_eq!(sqlstate(&refused), "42501", "{statement}: {refused}");
    }
    std::mem::drop(app);
    assert_eq!(
        stock(&admin, drop).await,
        (4, 0, 1),
        "nothing changed but the one sale"
    );
    assert_invariant(&admin, drop).await;
    drop_role(&admin, &role).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_can_buy_or_cancel_another_buyers_hold() {
    let db = connect().await;
    let drop = new_drop(&db, 5, 60).await;
    let (ann, bob) = (new_buyer(&db).await, new_buyer(&db).await);
    let hold = reserve(&db, drop, ann).await;
    for call in [
        "SELECT dropstock.purchase($1, $2)",
        "SELECT dropstock.cancel_reservation($1, $2)",
    ] {
        let refused = db.execute(call, &[&hold, &bob]).await.expect_err(call);
        assert_eq!(sqlstate(&refused), "DS031", "{call}");
    }
    assert_eq!(stock(&db, drop).await, (4, 1, 0));
}
