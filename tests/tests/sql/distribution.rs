//! The precondition for spreading the database over several machines by drop (Citus, distributed by
//! `drop_id`), checked mechanically against the installed extension rather than promised: every table
//! is keyed by `drop_id` or is the buyers table, and every buyer-facing call writes rows of one drop only.

use dropstock_tests::db::*;
use tokio_postgres::Client;

/// The extension's tables, each with whether it has a `drop_id` column.
async fn tables(db: &Client) -> Vec<(String, bool)> {
    db.query(
        "SELECT c.relname::text,
                EXISTS (SELECT FROM pg_attribute a
                         WHERE a.attrelid = c.oid AND a.attname = 'drop_id' AND NOT a.attisdropped)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'dropstock' AND c.relkind IN ('r', 'p')
          ORDER BY 1",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

#[tokio::test]
async fn every_table_is_keyed_by_drop_or_is_the_buyers_table() {
    let db = connect().await;
    let tables = tables(&db).await;
    assert!(tables.len() >= 5, "the extension's tables: {tables:?}");
    for (table, has_drop_id) in &tables {
        assert!(
            *has_drop_id || table == "drops" || table == "users",
            "{table} has no drop_id: it could not live on the machine that owns its drop"
        );
    }
}

/// The drops whose rows the current transaction wrote, over every table keyed by drop: the rows it can
/// see whose writer is still in progress, which can only be itself or one of its subtransactions (a
/// row of another transaction in progress is not visible to it).
async fn drops_written(db: &Client) -> Vec<String> {
    let mut written = Vec::new();
    for (table, has_drop_id) in tables(db).await {
        let key = match (table.as_str(), has_drop_id) {
            ("drops", _) => "id",
            (_, true) => "drop_id",
            _ => continue,
        };
        let rows = db
            .query(
                &format!(
                    "SELECT DISTINCT {key}::text FROM dropstock.{table}
                      WHERE pg_xact_status(((pg_current_xact_id()::text::bigint >> 32 << 32)
                                            + xmin::text::bigint)::text::xid8) = 'in progress'"
                ),
                &[],
            )
            .await
            .unwrap();
        for row in rows {
            let drop: String = row.get(0);
            if !written.contains(&drop) {
                written.push(drop);
            }
        }
    }
    written
}

/// Runs `sql` (with the drop, the buyer and a hold of theirs as $1, $2, $3 where it uses them) in a
/// transaction of its own and returns the drops it wrote rows of.
async fn writes_of(
    db: &Client,
    sql: &str,
    drop: uuid::Uuid,
    buyer: uuid::Uuid,
    hold: uuid::Uuid,
) -> Vec<String> {
    db.batch_execute("BEGIN").await.unwrap();
    let statement = db.prepare(sql).await.unwrap();
    let arguments: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        [&drop as _, &buyer as _, &hold as _][..statement.params().len()].to_vec();
    db.query(&statement, &arguments).await.unwrap();
    let written = drops_written(db).await;
    db.batch_execute("ROLLBACK").await.unwrap();
    written
}

#[tokio::test]
async fn every_buyer_facing_call_writes_rows_of_one_drop_only() {
    let db = connect().await;
    // Two drops with holds, so a call that strayed into the other drop's rows would show.
    let (drop, other) = (new_drop(&db, 5, 60).await, new_drop(&db, 5, 60).await);
    let ids = new_buyers(&db, 4).await;
    // The holder of `hold`; two buyers new to the drop; one holding in both drops.
    let (buyer, first_new, second_new, third) = (ids[0], ids[1], ids[2], ids[3]);
    for target in [drop, other] {
        db.execute("SELECT dropstock.reserve_item($1, $2)", &[&target, &third])
            .await
            .unwrap();
    }
    let hold: uuid::Uuid = db
        .query_one(
            "SELECT id FROM dropstock.reserve_item($1, $2)",
            &[&drop, &buyer],
        )
        .await
        .unwrap()
        .get(0);

    let calls = [
        ("reserve_item", "SELECT dropstock.reserve_item($1, $2)"),
        (
            "reserve_items",
            "SELECT * FROM dropstock.reserve_items($1, ARRAY[$2::uuid])",
        ),
        (
            "purchase",
            "SELECT dropstock.purchase($3, $2) FROM (SELECT $1::uuid) d",
        ),
        (
            "cancel_reservation",
            "SELECT dropstock.cancel_reservation($3, $2) FROM (SELECT $1::uuid) d",
        ),
    ];
    for (name, sql) in calls {
        let buyer = match name {
            "reserve_item" => first_new,
            "reserve_items" => second_new,
            _ => buyer,
        };
        let written = writes_of(&db, sql, drop, buyer, hold).await;
        assert_eq!(
            written,
            vec![drop.to_string()],
            "{name} wrote rows of {written:?}, not only of its drop"
        );
    }
    // Creating a drop writes that drop's rows only.
    db.batch_execute("BEGIN").await.unwrap();
    let created: uuid::Uuid = db
        .query_one(
            "SELECT id FROM dropstock.create_drop('distribution check', 10, 3)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let written = drops_written(&db).await;
    db.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(written, vec![created.to_string()]);
}
